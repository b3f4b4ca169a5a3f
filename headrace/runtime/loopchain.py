"""The loop chain runner: a chain of stages run in the parent, on the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from headrace.contract.acks import AckRef, done_each
from headrace.contract.codec import Codec
from headrace.contract.stage import Emit, Ev, Operator
from headrace.metrics.defs import Metrics
from headrace.runtime.batch import Batch
from headrace.runtime.chain import ChainExecutor, Counts, Outputs, PassRefs, Produce, apply_counts
from headrace.runtime.inbox import Inbox
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.records import to_events
from headrace.runtime.router import Router
from headrace.runtime.runner import Runner
from headrace.runtime.tap import offer_sampled, sampling

log = logging.getLogger("headrace.runtime")

TICK_INTERVAL = 0.1  # seconds between ticks of stages that keep time (windows, batch timeouts)


class ChainRunner(Runner):
    """A chain of stages run in the parent: on the loop, timed by the loop guard.

    Stages that keep time get ``tick`` about every ``TICK_INTERVAL`` and, at the end of
    input, ``flush``; what they produce runs through the rest of the chain like a batch.
    A tick never interleaves with a batch (the lock), so stage state and output order
    stay as if single-threaded. ``context.downstream_full`` tells a stage
    whether the inbox after the chain is full (``backpressure``).
    """

    def __init__(self, cid: str, stages: list[Operator], inbox: Inbox, routers: dict[str, Router],
                 codecs: dict[str, Codec], guard: LoopGuard, metrics: Metrics, stats_from: dict[str, Router] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.name = self.cid = cid
        self.nodes = tuple(st.id for st in stages)
        self.stages = stages
        self.inbox: Inbox = inbox
        self.routers = routers  # stage id (and onramp ids for decode errors) -> router
        self.codecs = codecs
        self.guard = guard
        # ``stats_from``: the routers of a graph being built (``routers`` holds them only once it is in effect)
        self.stats = {s.id: (stats_from or routers)[s.id].stats for s in stages}
        for s in stages:
            s.guard = guard
            s.context.downstream_full = self.downstream_full
        self.needs_values = any(s.needs_values for s in stages)
        self.unread: list[Any] = []  # python stages that never look at their event (known once set up)
        self.tap_codec: str | None = None  # the codec of the batch being run (taps decode copies a chain did not)
        self.ticking = [k for k, s in enumerate(stages) if type(s).tick is not Operator.tick]
        self.executor = ChainExecutor(stages, guard.report)
        self.holding = self.executor.holding
        self.lock = asyncio.Lock()
        self.set_up = False
        self.template = Batch.empty(cid, cid)  # parent of what ticks and flushes produce

    def downstream_full(self) -> bool:
        """Whether an inbox that the chain's ``out`` feeds is full (its next send would wait)."""
        return any(inbox.full() for inbox, _ in self.routers[self.stages[-1].id].targets.get("out", ()))

    async def process(self, batch: Batch) -> None:
        async with self.lock:
            first = self.stages[0].id
            self.stats[first].received.inc(len(batch))
            self.stats[first].received_bytes.inc(batch.nbytes)
            if len(self.stages) == 1 and batch.metas is not None:
                t0 = time.perf_counter()
                try:
                    routed = self.stages[0].route_metas(batch.metas)
                except Exception:  # the fast path failed: the general path below routes each event (or to err)
                    log.exception("stage %s: route_metas failed; using process", first)
                    routed = None
                if routed is not None:
                    self.guard.report(first, time.perf_counter() - t0)
                    await self.emit_routed(batch, routed)
                    return
            codec = self.codecs.get(batch.codec or "") if batch.values is None and self.needs_values else None
            decoded = codec is not None or batch.values is not None
            self.tap_codec = batch.codec
            for st in self.unread:  # stages that never look at their event: given a stand-in for records not decoded
                st.undecoded = not decoded
            evs, failures = to_events(batch, codec)
            if failures:
                self.routers[batch.origin].stats.error("decode", len(failures))
                await self.routers[batch.origin].send("err", batch.failed(failures, batch.origin, "DecodeError", as_text=True))
            outputs: Outputs = {}
            refs = PassRefs(batch.acks, len(batch))
            await self.run_stages(0, evs, outputs, refs)
            await self.emit_outputs(batch, outputs, decoded, refs.refs)

    async def run_stages(self, start: int, cur: list[Ev], outputs: Outputs, refs: PassRefs, produce: Produce | None = None) -> None:
        """Stages ``start..`` on ``cur``; with ``produce`` (a tick or flush), stage ``start`` makes its input itself."""
        counts: Counts = {}
        if self.interior or self.executor.tap_every:  # taps on nodes inside the chain: the executor copies every n-th event of their out
            self.executor.tap_every = sampling(self.interior)
        await self.executor.run_async(cur, outputs, counts, start, produce, refs)
        apply_counts(self.stats, self.stages, counts)
        if self.executor.tapped:
            tapped, self.executor.tapped = self.executor.tapped, {}
            for node, copies in tapped.items():
                taps = self.interior.get(node)
                if taps:
                    codec = self.codecs.get(self.tap_codec or "")
                    if codec is not None:  # copies a chain did not decode, decoded for the tap (one its codec refuses shows as null)
                        self.decode_missing(copies, codec, self.tap_codec)
                    batch = Batch.decoded([ev.value for ev in copies], [ev.meta for ev in copies], codec="json", origin=node, group=node)
                    offer_sampled(taps, batch, counts[node].out if node in counts else len(copies))

    async def produce(self, k: int, fn: Produce) -> None:
        """Run what stage ``k`` produces on its own (tick, flush) through the rest of the chain."""
        outputs: Outputs = {}
        refs = PassRefs(None, 0)
        for st in self.unread:  # what a stage makes holds values
            st.undecoded = False
        await self.run_stages(k, [], outputs, refs, fn)
        await self.emit_outputs(self.template, outputs, True, refs.refs)

    async def tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            async with self.lock:
                now = time.time_ns()  # wall clock, like ingest times

                def tick(st: Operator, emit: Emit, now: int = now) -> list[Ev]:
                    return st.tick(now, emit)

                for k in self.ticking:
                    try:
                        await self.produce(k, tick)
                    except Exception:
                        log.exception("tick of %s failed", self.stages[k].id)

    async def flush(self) -> None:
        """End of input: each holding stage, in chain order, gives up what it holds."""
        async with self.lock:
            for k in sorted(self.holding):
                await self.produce(k, lambda st, emit: st.flush(emit))

    async def emit_routed(self, batch: Batch, routed: dict[str, list[int]]) -> None:
        """Column slices per port: no per-event objects (the meta-only fast path)."""
        sid = self.stages[0].id
        sends = [(port, batch.select(idx, share=True)) for port, idx in routed.items() if idx]
        done_each(batch.acks)  # each part took its own shares
        for port, part in sends:
            await self.routers[sid].send(port, part)

    async def emit_outputs(self, batch: Batch, outputs: Outputs, decoded: bool, refs: list[AckRef] | None) -> None:
        if not decoded:  # records not decoded; an output holding a value a stage made (returned, emitted) carries values
            self.decode_beside_made(batch, outputs)
        out_batches = [(sid, port, Batch.of_events(evs, batch, refs, decoded or any(ev.raw is None for ev in evs)))
                       for (sid, port), evs in outputs.items() if evs]  # fmt: skip
        done_each(refs)  # every output added its own pending count above
        for sid, port, b in out_batches:
            await self.routers[sid].send(port, b)

    @staticmethod
    def decode_missing(evs: list[Ev], codec: Codec | None, name: str | None) -> dict[int, Exception]:
        """Decode the records among ``evs`` a chain did not decode (no value, their bytes kept: the bytes
        still say what they hold); the position and the error of each the codec (``name``) refuses."""
        failed: dict[int, Exception] = {}
        for k, ev in enumerate(evs):
            if ev.value is None and ev.raw is not None:
                try:
                    if codec is None:
                        raise ValueError(f"no codec {name!r} to decode the record with")
                    ev._value = codec.decode(ev.raw)
                except Exception as exc:  # whatever a codec raises for one record concerns that record only
                    failed[k] = exc
        return failed

    def decode_beside_made(self, batch: Batch, outputs: Outputs) -> None:
        """In an output of a chain that decoded nothing, where a stage made a value (a record without
        bytes), the records beside it are decoded: a batch holds values for all of its events or none.
        One that fails (its codec refuses it now) goes to the stage's err port instead."""
        codec = self.codecs.get(batch.codec or "")
        for (sid, port), evs in list(outputs.items()):
            if all(ev.raw is not None for ev in evs):
                continue
            failed = self.decode_missing(evs, codec, batch.codec)
            if failed:
                outputs.setdefault((sid, "err"), []).extend(evs[k].fail(sid, exc) for k, exc in failed.items())
                outputs[(sid, port)] = [ev for k, ev in enumerate(evs) if k not in failed]

    def retire(self, routers: dict[str, Router]) -> None:
        super().retire(routers)
        self.routers = routers

    async def start(self) -> None:
        """Set up the stages (once, before the first batch); what ``setup`` raises fails the start."""
        for st in self.stages:
            st.setup()
        # what setup found (a python stage proven never to look at its event needs no decoded value)
        self.needs_values = any(s.needs_values for s in self.stages)
        self.unread = [s for s in self.stages if getattr(s, "untouched", False)]
        self.set_up = True

    async def run(self) -> None:
        ticker: asyncio.Task[None] | None = None
        try:
            if not self.set_up:  # run without start (the engine starts first; tests may not)
                await self.start()
            if self.ticking:
                ticker = asyncio.create_task(self.tick_forever(), name=f"headrace:tick:{self.cid}")
            while (batch := await self.inbox.get()) is not None:
                await self.process(batch)
            if ticker is not None:
                async with self.lock:  # not in the middle of a tick: cancelling loses nothing
                    ticker.cancel()
            await self.flush()
        finally:
            if ticker is not None:
                ticker.cancel()
            for st in self.stages:
                try:
                    st.teardown()
                except Exception:
                    log.exception("teardown of %s failed", st.id)
            for inbox in self.closes:
                inbox.close()


