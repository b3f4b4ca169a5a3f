"""``op: backpressure``: out while the downstream has room; overflow for a growing, then shrinking backoff."""

from __future__ import annotations

from headrace.contract.stage import Operator
from headrace.plugins.operators.backpressure import BackpressureOperator
from tests.operators.support import Clock, Ports, evs, make


class Downstream:
    def __init__(self) -> None:
        self.full = False

    def __call__(self) -> bool:
        return self.full


def setup() -> tuple[Clock, Downstream, BackpressureOperator]:
    clock = Clock()
    down = Downstream()
    op = make("backpressure", clock, steps=["100ms", "200ms", "400ms"])
    assert isinstance(op, BackpressureOperator)
    op.context.downstream_full = down
    return clock, down, op


def port_of(op: Operator) -> str:
    ports = Ports()
    out = op.process(evs(1, 2), ports)
    if out:
        assert len(out) == 2 and not ports.got
        return "out"
    assert set(ports.got) == {"overflow"} and len(ports.got["overflow"]) == 2
    return "overflow"


def test_passes_while_the_downstream_has_room() -> None:
    _, _, op = setup()
    assert [port_of(op) for _ in range(3)] == ["out"] * 3


def test_backoff_grows_through_the_steps_and_shrinks_back() -> None:
    clock, down, op = setup()
    down.full = True
    assert port_of(op) == "overflow"  # step 1: 100 ms
    down.full = False
    clock.advance(0.05)
    assert port_of(op) == "overflow"  # within the backoff, whatever the downstream says
    clock.advance(0.06)
    down.full = True
    assert port_of(op) == "overflow"  # still full after 100 ms: step 2, 200 ms
    clock.advance(0.19)
    assert port_of(op) == "overflow"
    clock.advance(0.02)
    assert port_of(op) == "overflow"  # step 3: 400 ms
    clock.advance(0.41)
    assert port_of(op) == "overflow"  # the last step repeats
    assert op.level == 3
    clock.advance(0.41)
    down.full = False
    assert [port_of(op) for _ in range(3)] == ["out"] * 3
    assert op.level == 0
    down.full = True
    assert port_of(op) == "overflow"
    assert op.level == 1


def test_meta_only_fast_path() -> None:
    _, down, op = setup()
    assert op.route_metas([{}, {}]) == {"out": [0, 1]}
    down.full = True
    assert op.route_metas([{}, {}]) == {"overflow": [0, 1]}
    assert op.route_metas([]) == {"out": []}


def test_without_a_runner_it_never_diverts() -> None:
    op = make("backpressure", Clock())
    assert port_of(op) == "out"
