"""``op: throttle``: at most ``rate`` per ``interval``; the excess to overflow."""

from __future__ import annotations

from tests.operators.support import Clock, Ports, evs, make, values


def test_admits_rate_per_interval_and_sends_the_rest_to_overflow() -> None:
    clock = Clock()
    op = make("throttle", clock, rate=3, interval="1s")
    ports = Ports()
    out = op.process(evs(*range(5)), ports)
    assert values(out) == [0, 1, 2]
    assert ports.values("overflow") == [3, 4]
    clock.advance(0.5)
    assert op.process(evs(5), Ports()) == []  # still within the interval
    clock.advance(0.6)
    assert values(op.process(evs(6, 7, 8, 9), Ports())) == [6, 7, 8]


def test_the_window_slides() -> None:
    clock = Clock(0)
    op = make("throttle", clock, rate=2, interval="1s", slots=10)
    assert len(op.process(evs(1), Ports())) == 1
    clock.advance(0.5)
    assert len(op.process(evs(2, 3), Ports())) == 1  # one slot left in the last second
    clock.advance(0.55)  # the first event left the window; the second did not
    assert len(op.process(evs(4, 5), Ports())) == 1


def test_meta_only_fast_path_agrees() -> None:
    clock = Clock()
    op = make("throttle", clock, rate=2)
    assert op.route_metas([{}, {}, {}]) == {"out": [0, 1], "overflow": [2]}
    assert op.ports_for(op.config) == ("overflow",)
    assert not op.needs_values
