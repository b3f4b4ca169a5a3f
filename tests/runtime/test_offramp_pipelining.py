"""Pipelined offramp writes (``Offramp.max_in_flight``): up to that many writes await their
confirmation at once, each starts (hands its records over) in inbox order, every ack is done once
its write is confirmed, and a write that fails is retried without holding the others."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from headrace.config.load import load_text
from headrace.contract.acks import AckRef
from headrace.contract.context import PluginContext
from headrace.contract.sink import Offramp, Rejections
from headrace.metrics.defs import Metrics
from headrace.registry import make_codec
from headrace.runtime.batch import Batch
from headrace.runtime.inbox import Inbox
from headrace.runtime.offramp import OfframpRunner
from headrace.runtime.router import Router
from headrace.runtime.stats import ComponentStats


class GatedSink(Offramp):
    """Records what each write was handed, in the order handed; a write returns when its gate opens."""

    def __init__(self, depth: int, fail_first: bool = False) -> None:
        super().__init__(None, PluginContext("out", Path(".")))
        self.max_in_flight = depth
        self.handed: list[bytes] = []
        self.pending: list[asyncio.Future[None]] = []
        self.most = 0
        self.fail_first = fail_first

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        self.handed += chunks
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(gate)
        self.most = max(self.most, sum(not g.done() for g in self.pending))
        await gate
        if self.fail_first:
            self.fail_first = False
            raise ConnectionError("the peer went away")
        return None


async def pipeline(tmp_path: Path, sink: GatedSink, batches: int, close: bool = True) -> tuple[list[str], OfframpRunner, asyncio.Task[None]]:
    graph = load_text("""
version: 1
onramps: {src: {type: stdin, codec: json}}
offramps: {out: {type: stdout, codec: json}}
links: {src: [out]}
""", tmp_path / "c.yaml")  # fmt: skip
    metrics = Metrics()
    inbox = Inbox("out", 2**62, 2**62)
    router = Router(ComponentStats(metrics, "out", "offramp"), {})
    runner = OfframpRunner(graph.components["out"], sink, make_codec("json"), [], inbox, router.stats, {}, {"out": router}, metrics, False)
    runner.router = router
    runner.started = True
    acked: list[str] = []
    for b in range(batches):
        ref = AckRef(1, f"b{b}", acked.append, lambda t: pytest.fail(f"{t} failed"))
        await inbox.put(Batch.source([b'{"b": %d, "i": %d}' % (b, i) for i in range(3)], codec="json", origin="src", group=None, ack=ref))
    if close:
        inbox.close()
    return acked, runner, asyncio.ensure_future(runner.run())


async def until(cond: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("depth", [1, 3])
def test_writes_overlap_up_to_max_in_flight_and_start_in_order(tmp_path: Path, depth: int) -> None:
    async def main() -> None:
        sink = GatedSink(depth)
        acked, _runner, task = await pipeline(tmp_path, sink, 6)
        await until(lambda: len(sink.pending) == depth, f"{depth} writes in flight")
        await asyncio.sleep(0.05)
        assert len(sink.pending) == depth, "no more than max_in_flight writes at once"
        for k in range(6):  # confirm from the last one in flight back (out of order), then the rest
            await until(lambda k=k: len(sink.pending) > k, "the next write starts once one is confirmed")
            live = [g for g in sink.pending if not g.done()]
            live[-1].set_result(None)
        await asyncio.wait_for(task, 10)
        assert sink.most == depth
        assert [r.split(b",")[0] for r in sink.handed] == [b'{"b": %d' % b for b in range(6) for _ in range(3)], "handed over in inbox order"
        assert sorted(acked) == [f"b{b}" for b in range(6)]

    asyncio.run(main())


def test_a_failed_write_is_retried_while_the_others_complete(tmp_path: Path) -> None:
    async def main() -> None:
        sink = GatedSink(3, fail_first=True)
        acked, _runner, task = await pipeline(tmp_path, sink, 3)
        await until(lambda: len(sink.pending) == 3, "3 writes in flight")
        for g in sink.pending[:3]:
            g.set_result(None)  # the first fails, the others are confirmed
        await until(lambda: len(sink.pending) == 4, "the failed write is tried again")
        assert sorted(acked) == ["b1", "b2"], "what was confirmed is acked; the failed batch is not"
        sink.pending[3].set_result(None)
        await asyncio.wait_for(task, 10)
        assert sorted(acked) == ["b0", "b1", "b2"]

    asyncio.run(main())


class CountingSink(GatedSink):
    """Also records how many events each write got."""

    coalesce_events = 100

    def __init__(self, depth: int, linger: float) -> None:
        super().__init__(depth)
        self.linger = linger
        self.sizes: list[int] = []

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        self.sizes.append(events)
        return await super().write(chunks, events, ingest_ns, metas)


def test_while_a_write_is_in_flight_the_next_one_lingers_to_gather_more(tmp_path: Path) -> None:
    """Batches that arrive while a write awaits its confirmation join the next write (one write of
    many small batches instead of one each); the first write, with nothing in flight, waits for nothing."""

    async def main() -> None:
        sink = CountingSink(depth=2, linger=0.2)
        acked: list[str] = []
        _, runner, task = await pipeline(tmp_path, sink, 0, close=False)
        inbox = runner.inbox

        def make_batch(b: int) -> Batch:
            ref = AckRef(1, f"b{b}", acked.append, lambda t: pytest.fail(f"{t} failed"))
            return Batch.source([b'{"b": %d, "i": %d}' % (b, i) for i in range(3)], codec="json", origin="src", group=None, ack=ref)

        t0 = asyncio.get_running_loop().time()
        await inbox.put(make_batch(0))
        await until(lambda: len(sink.pending) == 1, "the first write starts")
        assert asyncio.get_running_loop().time() - t0 < 0.15  # idle: no linger
        for b in range(1, 6):  # arrive while the first write is in flight, within the linger
            await inbox.put(make_batch(b))
            await asyncio.sleep(0.01)
        await until(lambda: len(sink.pending) == 2, "the second write starts")
        inbox.close()
        for g in sink.pending:
            g.set_result(None)
        await until(lambda: all(g.done() for g in sink.pending) and task.done(), "all written")
        assert sink.sizes == [3, 15]  # the five batches as one write
        assert sorted(acked) == [f"b{b}" for b in range(6)]

    asyncio.run(main())
