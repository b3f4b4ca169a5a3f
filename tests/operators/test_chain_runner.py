"""The ChainRunner parts that stateful operators rely on: ticks, flush at end of input,
acks of held events, the downstream-full signal, and counting (held is not discarded)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from headrace import registry
from headrace.contract.acks import AckRef, done_each
from headrace.contract.context import PluginContext
from headrace.contract.stage import Emit, Ev, Operator
from headrace.metrics.defs import Metrics
from headrace.runtime import loopchain
from headrace.runtime.batch import Batch
from headrace.runtime.inbox import Inbox
from headrace.runtime.loopchain import ChainRunner
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.router import Router
from headrace.runtime.stats import ComponentStats
from tests.operators.support import AckLog


def op(name: str, nid: str, **options: Any) -> Operator:
    cls = registry.load("operators", name)
    result: Operator = cls(nid, cls.Config.model_validate(options), PluginContext(nid, Path(".")))
    return result


class Harness:
    """One ChainRunner whose out (and other ports) feed plain inboxes, as offramps would read them."""

    def __init__(self, stages: list[Operator], ports: tuple[str, ...] = ("out", "err"), max_events: int = 10**6) -> None:
        self.metrics = Metrics()
        self.inbox = Inbox("in", 10**6, 10**9, producers=1)
        self.outs = {p: Inbox(p, max_events, 10**9, producers=1) for p in ports}
        routers = {s.id: Router(ComponentStats(self.metrics, s.id, "node"), {}) for s in stages}
        routers[stages[-1].id] = Router(
            ComponentStats(self.metrics, stages[-1].id, "node"), {p: [(i, False)] for p, i in self.outs.items()}
        )
        routers["src"] = Router(ComponentStats(self.metrics, "src", "onramp"), {})
        self.runner = ChainRunner(stages[0].id, stages, self.inbox, routers, {}, LoopGuard(1.0), self.metrics)
        self.runner.closes = list(self.outs.values())

    def drain(self, port: str = "out") -> list[Batch]:
        inbox = self.outs[port]
        got = list(inbox.items)
        inbox.items.clear()
        inbox.events = 0
        inbox.bytes = 0
        return got

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


def batch(values: list[Any], ack: AckRef | None = None) -> Batch:
    return Batch(values=values, metas=[{} for _ in values], ingest=[1] * len(values), acks=[ack] * len(values) if ack else None,
                 codec="json", origin="src", group="src")  # fmt: skip


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body on a fresh event loop (no asyncio pytest plugin here)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


def deliver(batches: list[Batch]) -> None:
    """What an offramp does once it accepted the batch."""
    for b in batches:
        done_each(b.acks)


@sync
async def test_flush_at_end_of_input_and_acks_of_held_events() -> None:
    log = AckLog()
    h = Harness([op("batch", "p.batch", count=4)])
    task = asyncio.create_task(h.runner.run())
    for i in range(3):
        await h.inbox.put(batch([2 * i, 2 * i + 1], log.ref(2, f"b{i}")))
    await asyncio.sleep(0.01)
    first = h.drain()
    assert [b.values for b in first] == [[[0, 1, 2, 3]]]
    assert log.acked == []  # nothing delivered yet
    deliver(first)
    assert sorted(log.acked) == ["b0", "b1"]
    h.inbox.close()
    await task
    assert sorted(log.acked) == ["b0", "b1"]  # 4 and 5 of b2 are in the flushed batch, not delivered yet
    rest = h.drain()
    assert [b.values for b in rest] == [[[4, 5]]]
    deliver(rest)
    assert sorted(log.acked) == ["b0", "b1", "b2"] and log.failed == []
    assert h.outs["out"].producers == 0  # closed after the flush
    assert h.metric("headrace_component_discarded_events_total", component_id="p.batch", reason="filtered") == 0


@sync
async def test_held_events_dropped_downstream_in_the_chain_still_ack() -> None:
    log = AckLog()
    h = Harness([op("batch", "p.batch", count=2), op("filter", "p.filter", where="len(event) > 5")])
    task = asyncio.create_task(h.runner.run())
    await h.inbox.put(batch([1, 2, 3, 4], log.ref(4, "t")))
    h.inbox.close()
    await task
    assert h.drain() == []
    assert log.acked == ["t"]
    assert h.metric("headrace_component_discarded_events_total", component_id="p.filter", reason="filtered") == 2


@sync
async def test_a_failed_delivery_fails_every_source_of_the_batch() -> None:
    log = AckLog()
    h = Harness([op("batch", "p.batch", count=4)])
    task = asyncio.create_task(h.runner.run())
    await h.inbox.put(batch([1, 2], log.ref(2, "x")))
    await h.inbox.put(batch([3, 4], log.ref(2, "y")))
    h.inbox.close()
    await task
    (b,) = h.drain()
    assert b.acks is not None
    b.acks[0].failed = True
    b.acks[0].done()
    assert sorted(log.failed) == ["x", "y"] and log.acked == []


@sync
async def test_python_made_events_before_a_holder_keep_their_source_ack(tmp_path: Path) -> None:
    (tmp_path / "explode_stage.py").write_text("def explode(event, meta):\n    return [event, event]\n")
    py = registry.load("operators", "python")
    stage = py("p.py", py.Config.model_validate({"fn": "explode_stage:explode"}), PluginContext("p.py", tmp_path))
    log = AckLog()
    h = Harness([stage, op("batch", "p.batch", count=100)])
    task = asyncio.create_task(h.runner.run())
    await h.inbox.put(batch([1, 2], log.ref(2, "t")))
    await asyncio.sleep(0.01)
    assert log.acked == []  # the four events wait in the batch
    h.inbox.close()
    await task
    out = h.drain()
    assert [b.values for b in out] == [[[1, 1, 2, 2]]]
    deliver(out)
    assert log.acked == ["t"]


@sync
async def test_ticks_emit_timed_out_batches_without_new_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopchain, "TICK_INTERVAL", 0.01)
    h = Harness([op("batch", "p.batch", count=100, timeout="30ms"), op("set", "p.set", set={"meta.seen": "True"})])
    task = asyncio.create_task(h.runner.run())
    await h.inbox.put(batch(["a", "b"]))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if h.outs["out"].items:
            break
    (b,) = h.drain()
    assert b.values == [["a", "b"]]
    assert b.metas == [{"batch_size": 2, "seen": True}]  # what a tick makes runs through the rest of the chain
    assert b.acks is not None and len(b.acks) == 1  # an aggregated event always carries a ref
    assert b.origin == "p.batch"
    h.inbox.close()
    await task
    assert h.drain() == []
    assert h.runner.ticking == [0] and h.runner.holding == {0}


@sync
async def test_no_tick_task_for_chains_without_time() -> None:
    h = Harness([op("filter", "p.f", where="True")])
    task = asyncio.create_task(h.runner.run())
    await asyncio.sleep(0.01)
    assert not [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("headrace:tick")]
    h.inbox.close()
    await task


@sync
async def test_downstream_full_is_what_backpressure_sees() -> None:
    bp = op("backpressure", "p.bp", steps=["10s"])
    h = Harness([bp], ports=("out", "overflow", "err"), max_events=3)
    task = asyncio.create_task(h.runner.run())
    await h.inbox.put(batch([1, 2, 3]))
    await asyncio.sleep(0.01)
    assert h.runner.downstream_full()
    await h.inbox.put(batch([4, 5]))  # the out inbox is full: these go to overflow, nothing waits
    h.inbox.close()
    await asyncio.wait_for(task, 2)
    assert [b.values or [] for b in h.drain("out")] == [[1, 2, 3]]
    assert [len(b) for b in h.drain("overflow")] == [2]


class _Heartbeat(Operator):
    """Passes events through; every tick emits a new event of its own (no source, no ack)."""

    name = "heartbeat"

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        return evs

    def tick(self, now_ns: int, emit: Emit) -> list[Ev]:
        return [Ev({"beat": True}, {}, 0, None, now_ns)]


@sync
async def test_what_a_tick_makes_from_nothing_never_touches_source_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopchain, "TICK_INTERVAL", 0.005)
    log = AckLog()
    beat = _Heartbeat("p.beat", None, PluginContext("p.beat", Path(".")))
    h = Harness([beat, op("set", "p.set", set={"x": "1"})])
    task = asyncio.create_task(h.runner.run())
    await h.inbox.put(batch([{"id": 1}], log.ref(1, "t")))
    await asyncio.sleep(0.05)
    h.inbox.close()
    await task
    got = h.drain()
    beats = [b for b in got if b.values == [{"beat": True, "x": 1}]]
    data = [b for b in got if b not in beats]
    assert beats and [b.values for b in data] == [[{"id": 1, "x": 1}]]
    deliver(beats)
    assert log.acked == []
    deliver(data)
    assert log.acked == ["t"]
