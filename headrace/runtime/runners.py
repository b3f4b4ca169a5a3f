"""The three kinds of runtime component: onramp, stage chain, offramp.

Each runner reads one inbox (onramps read their source), does its work, routes
batches onward, and on its end closes the inboxes of its targets, so that an end of
input drains the graph in topological order.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from headrace.config.graph import ComponentSpec
from headrace.contract.acks import AckRef, MergedAck, done_each
from headrace.contract.backoff import Backoff
from headrace.contract.codec import Codec
from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.source import Onramp
from headrace.contract.stage import Emit, Ev, Operator
from headrace.errors import describe_exception, safe_repr, safe_str
from headrace.metrics.defs import Metrics
from headrace.runtime.batch import Batch, join, joinable, take
from headrace.runtime.events import decode_failures, from_events, to_events
from headrace.runtime.inbox import Inbox
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.router import ComponentStats, Router
from headrace.runtime.starting import StartFailed, describe, start_one

log = logging.getLogger("headrace.runtime")


class OnrampRunner:
    """Frames, batches and routes what an onramp reads; implements ``OnrampSink``."""

    def __init__(self, spec: ComponentSpec, plugin: Onramp, pre: list[Preprocessor], router: Router, batch_size: int,
                 start_timeout: float = 60.0) -> None:  # fmt: skip
        self.spec = spec
        self.plugin = plugin
        self.pre = pre
        self.router = router
        self.batch_size = batch_size
        self.stats = router.stats
        self.codec = spec.codec
        self.group = spec.id
        self.task: asyncio.Future[None] | None = None
        self.started = False  # the plugin's start() returned (``run`` starts it unless the engine did)
        self.started_future: asyncio.Future[None] | None = None  # resolved once started (or failed to)
        self.stopped = False
        self.start_timeout = start_timeout
        self.closes: list[Inbox] = []

    def _frame(self, data: bytes) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        rejected: list[tuple[bytes, str]] = []
        return self._through(0, [data], rejected), rejected

    def _through(self, first: int, chunks: list[bytes], rejected: list[tuple[bytes, str]]) -> list[bytes]:
        for k in range(first, len(self.pre)):
            out: list[bytes] = []
            for c in chunks:
                try:
                    self.pre[k].feed(c, out, rejected)
                except Exception as exc:
                    self._failed(k, exc, c, rejected)
            chunks = out
        return chunks

    def _failed(self, k: int, exc: Exception, chunk: bytes, rejected: list[tuple[bytes, str]]) -> None:
        """A preprocessor raised: what it was given goes to err (a sample), and it starts afresh so
        that the rest of the stream is framed again (whatever it held back is named in the reason)."""
        p = self.pre[k]
        rejected.append((chunk[:SAMPLE_BYTES], f"preprocessor {p.name or type(p).__name__} failed: {type(exc).__name__}: "
                                               f"{safe_str(exc)} (it was reset; input it held back is lost)"))  # fmt: skip
        log.error("onramp %s: preprocessor %s failed on a chunk (to err, reset): %s", self.spec.id, p.name, describe(exc))
        self.pre[k] = type(p)(p.config)

    def _pending(self) -> int:
        """The last preprocessor that kept input back (its output comes before that of earlier ones), or -1."""
        for i in range(len(self.pre) - 1, -1, -1):
            if self.pre[i].has_pending():
                return i
        return -1

    def _resume(self, i: int) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        rejected: list[tuple[bytes, str]] = []
        out: list[bytes] = []
        try:
            self.pre[i].resume(out, rejected)
        except Exception as exc:
            self._failed(i, exc, b"", rejected)
        return self._through(i + 1, out, rejected), rejected

    def _steps(self, data: bytes) -> Iterator[tuple[list[bytes], list[tuple[bytes, str]]]]:
        """(records, rejected) of ``data``: first what framing it gives, then each further step of
        a decompressor that kept input back (taken by the caller before the next is made)."""
        yield self._frame(data)
        while (i := self._pending()) >= 0:
            yield self._resume(i)

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        self.stats.received_bytes.inc(len(data))
        for records, rejected in self._steps(data):  # the next step once the graph took the last one
            await self._emit(records, rejected, meta)

    async def end_of_stream(self, meta: dict[str, Any] | None = None) -> None:
        records, rejected = self._finish()
        await self._emit(records, rejected, meta)

    def _finish(self) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        records: list[bytes] = []
        rejected: list[tuple[bytes, str]] = []
        for i in range(len(self.pre)):
            tail: list[bytes] = []
            try:
                self.pre[i].finish(tail, rejected)
            except Exception as exc:
                self._failed(i, exc, b"", rejected)
            records.extend(self._through(i + 1, tail, rejected))
        return records, rejected

    def stream(self) -> OnrampRunner:
        """A sink for one of several concurrent streams (a connection): its own framing state, the same routing."""
        view = copy.copy(self)
        view.pre = [type(p)(p.config) for p in self.pre]
        return view

    def frame(self, data: bytes) -> Iterator[tuple[list[bytes], list[tuple[bytes, str]]]]:
        """Frame one whole message (a request body, a datagram) with fresh framing state: (records, rejected)
        a step at a time. The caller hands each step on before it takes the next, so a message that
        decompresses to a lot costs about one step of memory, not all of its records at once.

        The message is in memory whole, so each preprocessor is told (``whole_message``): a
        decompressor then bounds its expansion by its ``max_message_bytes``."""
        view = self.stream()
        for p in view.pre:
            p.whole_message()
        yield from view._steps(data)
        yield view._finish()

    async def _emit(self, records: list[bytes], rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None) -> None:
        if rejected:
            await self.reject(rejected, meta)
        bs = self.batch_size
        for start in range(0, len(records), bs):
            part = records[start : start + bs]
            await self._send(part, [dict(meta) for _ in part] if meta else None, None, None)

    async def reject(self, rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None = None) -> None:
        now = time.time_ns()
        metas = []
        for _, reason in rejected:
            m = dict(meta or {})
            m["error"] = {"stage": self.spec.id, "type": "FramingError", "message": reason}
            metas.append(m)
        self.stats.error("framing", len(rejected))
        await self.router.send("err", Batch(
            payloads=[r for r, _ in rejected], values=[r.decode("utf-8", "backslashreplace") for r, _ in rejected],
            metas=metas, ingest=[now] * len(rejected), codec="binary", origin=self.spec.id, group=self.group,
        ))  # fmt: skip

    async def records(self, payloads: list[bytes], metas: list[dict[str, Any]] | None = None, ack: Any = None, group: Any = None,
                      refused: dict[int, str] | None = None, wire: tuple[bytes, tuple[bytes, ...]] | None = None) -> None:  # fmt: skip
        """Whole records from the source (their bytes count as received; streams count in ``chunk``).

        ``refused``: records the source will not pass on (index -> reason, e.g. over a size
        limit); they go to the onramp's ``err`` port with a sample of their bytes and count
        toward the same ack as the rest.
        """
        nbytes = sum(map(len, wire[1])) if wire is not None else sum(map(len, payloads))
        self.stats.received_bytes.inc(nbytes)
        if not refused:
            await self._send(payloads, metas, ack, group, nbytes, wire)
            return
        n = len(payloads)
        ref = AckRef(n, ack, self.plugin.ack, self.plugin.fail) if ack is not None else None
        keep = [i for i in range(n) if i not in refused]
        bad = sorted(refused)
        err_metas = []
        for i in bad:
            m = dict(metas[i]) if metas is not None else {}
            m["error"] = {"stage": self.spec.id, "type": "RecordTooLarge", "message": refused[i]}
            err_metas.append(m)
        self.stats.received.inc(n)
        self.stats.error("framing", len(bad))
        now = time.time_ns()
        samples: list[bytes | None] = [payloads[i][:SAMPLE_BYTES] for i in bad]
        await self.router.send("err", Batch(
            payloads=samples, values=[payloads[i][:SAMPLE_BYTES].decode("utf-8", "backslashreplace") for i in bad], metas=err_metas, ingest=[now] * len(bad),
            acks=[ref] * len(bad) if ref is not None else None, codec="binary", origin=self.spec.id, group=self.group,
        ))  # fmt: skip
        if keep:
            await self.router.send("out", Batch(
                payloads=[payloads[i] for i in keep], metas=[metas[i] for i in keep] if metas is not None else None,
                ingest=[now] * len(keep), acks=[ref] * len(keep) if ref is not None else None, codec=self.codec, origin=self.spec.id,
                group=(self.group, group) if group is not None else self.group, unchecked=True,
            ))  # fmt: skip

    async def _send(self, payloads: list[bytes], metas: list[dict[str, Any]] | None, ack: Any, group: Any, nbytes: int | None = None,
                    wire: tuple[bytes, tuple[bytes, ...]] | None = None) -> None:  # fmt: skip
        n = len(payloads)
        if not n:
            return
        acks = None
        if ack is not None:
            ref = AckRef(n, ack, self.plugin.ack, self.plugin.fail)
            acks = [ref] * n
        now = time.time_ns()
        batch = Batch(payloads=payloads, metas=metas, ingest=[now] * n, ingest_wire=_I64.pack(now) * n, acks=acks, codec=self.codec,  # type: ignore[arg-type]
                      nbytes=nbytes,
                      origin=self.spec.id, group=(self.group, group) if group is not None else self.group, unchecked=True,
                      wire=wire)  # fmt: skip
        self.stats.received.inc(n)
        await self.router.send("out", batch)

    async def _source(self) -> None:
        """Run the source; a source that fails at run time is restarted with backoff for up to
        ``start_timeout`` (a finite one, such as a file read once, is not: it fails the daemon)."""
        backoff = Backoff(0.5, 30.0)
        while True:
            try:
                await self.plugin.run(self)
                return
            except Exception as exc:
                if self.plugin.finite or self.stopped:
                    raise
                failed_at = time.monotonic()
                self.stats.error("restart")
                await self.end_of_stream()  # a record cut short by the failure is not glued to what comes after
                try:
                    await self.plugin.stop()
                except Exception:
                    log.exception("onramp %s: stop after a failure failed", self.spec.id)
                while True:
                    delay = backoff.next()
                    log.error("onramp %s failed: %s; restarting it in %.1fs", self.spec.id, describe(exc), delay)
                    await asyncio.sleep(delay)
                    try:
                        await start_one(f"onramp {self.spec.id}", self.plugin.start, self.start_timeout)
                        break
                    except StartFailed as again:
                        if time.monotonic() - failed_at > self.start_timeout:
                            raise
                        exc = again

    async def _start(self) -> bool:
        """Start the plugin (within ``start_timeout``) unless it was; resolves ``started_future``.
        False: it could not start, or a stop came first."""
        failure: BaseException | None = None
        if not self.started:
            self.task = asyncio.ensure_future(start_one(f"onramp {self.spec.id}", self.plugin.start, self.start_timeout))
            try:
                await asyncio.shield(self.task)
                self.started = True
            except asyncio.CancelledError:
                if not self.task.cancelled():  # this runner was cancelled, not just its start
                    self.task.cancel()
                    raise
                failure = StartFailed(f"onramp {self.spec.id}", "stopped while starting")
            except StartFailed as exc:
                failure = exc
        fut = self.started_future
        if fut is not None and not fut.done():
            if failure is None:
                fut.set_result(None)
            else:
                fut.set_exception(failure)
                fut.exception()  # retrieved: nobody may be waiting any more (a stop during start-up)
        return failure is None and not self.stopped

    async def run(self) -> None:
        try:
            if self.stopped or not await self._start():
                return
            # the source runs in a task of its own: a stop cancels it, and framing is still flushed
            self.task = asyncio.ensure_future(self._source())
            try:
                await asyncio.shield(self.task)
            except asyncio.CancelledError:
                if not self.task.cancelled():
                    self.task.cancel()
                    raise
            await self.end_of_stream()
        finally:
            for inbox in self.closes:
                inbox.close()

    def stop(self) -> None:
        """Stop intake: the source's task is cancelled, framing is flushed, targets close."""
        self.stopped = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


Outputs = dict[tuple[str, str], list[Ev]]
Produce = Callable[[Operator, Emit], list[Ev]]

_I64 = struct.Struct("q")  # one ingest time as a worker job carries it (native, like array('q'))
SAMPLE_BYTES = 4096  # what the err port keeps of a record refused for its size
COALESCE_BYTES = 4 << 20  # a joined offramp write holds at most about this much
TICK_INTERVAL = 0.1  # seconds between ticks of stages that keep time (windows, batch timeouts)


def _ignore(token: Any) -> None:
    pass


NO_ACK = AckRef(1, None, _ignore, _ignore)  # stands in for events of a source without acks next to ones that have them


class _Refs:
    """The ack refs of one pass through the chain, one share per index: the input batch's,
    then those of events that stages made without an input (a tick, a flush, a batch or
    window result), so that ``from_events`` and the final release treat them alike."""

    __slots__ = ("n", "own", "refs")

    def __init__(self, refs: list[AckRef] | None, n: int) -> None:
        self.refs = refs
        self.n = n
        self.own = False

    def adopt(self, evs: list[Ev], every: bool) -> None:
        """Index new events: those with a fresh ``MergedAck`` (its first share is the index's),
        and with ``every`` (what a tick or flush made) all others too, taking a share for each."""
        for ev in evs:
            ack = ev.ack
            if isinstance(ack, MergedAck) and ack.fresh:
                ack.fresh = False
            elif not every:
                continue
            elif ack is None:
                ack = ev.ack = NO_ACK
            else:
                ack.pending += 1
            if not self.own:
                self.refs = list(self.refs) if self.refs is not None else [NO_ACK] * self.n
                self.own = True
            assert self.refs is not None
            ev.src = len(self.refs)
            self.refs.append(ack)


class ChainRunner:
    """A chain of stages run in the parent: on the loop, timed by the loop guard.

    Stages that keep time get ``tick`` about every ``TICK_INTERVAL`` and, at the end of
    input, ``flush``; what they produce runs through the rest of the chain like a batch.
    A tick never interleaves with a batch (the lock), so stage state and output order
    stay as if single-threaded. ``context.downstream_full`` tells a stage
    whether the inbox after the chain is full (``backpressure``).
    """

    def __init__(self, cid: str, stages: list[Operator], inbox: Inbox, routers: dict[str, Router],
                 codecs: dict[str, Codec], guard: LoopGuard, metrics: Metrics, stats_from: dict[str, Router] | None = None) -> None:  # fmt: skip
        self.cid = cid
        self.stages = stages
        self.inbox = inbox
        self.routers = routers  # stage id (and onramp ids for decode errors) -> router
        self.codecs = codecs
        self.guard = guard
        # ``stats_from``: the routers of a graph being built (``routers`` holds them only once it is in effect)
        self.stats = {s.id: (stats_from or routers)[s.id].stats for s in stages}
        for s in stages:
            s.guard = guard
            s.context.downstream_full = self.downstream_full
        self.closes: list[Inbox] = []  # inboxes this runner may send to; closed at its end
        self.needs_values = any(s.needs_values for s in stages)
        self.ticking = [k for k, s in enumerate(stages) if type(s).tick is not Operator.tick]
        self.holding = {k for k, s in enumerate(stages) if type(s).flush is not Operator.flush}
        self.lock = asyncio.Lock()
        self.set_up = False
        self.template = Batch(ingest=[], origin=cid, group=cid)  # parent of what ticks and flushes produce

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
            evs, failures = to_events(batch, codec)
            if failures:
                self.routers[batch.origin].stats.error("decode", len(failures))
                await self.routers[batch.origin].send("err", decode_failures(batch, failures, batch.origin))
            outputs: Outputs = {}
            refs = _Refs(batch.acks, len(batch))
            await self.run_stages(0, evs, outputs, refs)
            await self.emit_outputs(batch, outputs, codec is not None or batch.values is not None, refs.refs)

    async def run_stages(self, start: int, cur: list[Ev], outputs: Outputs, refs: _Refs, produce: Produce | None = None) -> None:
        """Stages ``start..`` on ``cur``; with ``produce`` (a tick or flush), stage ``start`` makes its input itself."""
        last = len(self.stages) - 1
        for k in range(start, last + 1):
            st = self.stages[k]

            def emit(port: str, ev: Ev, _id: str = st.id) -> None:
                outputs.setdefault((_id, port), []).append(ev)

            making = produce is not None and k == start
            holding = k in self.holding
            if holding and refs.refs is not None:  # events a python stage made carry no ack yet: the one of their source
                for ev in cur:
                    if ev.ack is None:
                        ev.ack = refs.refs[ev.src]
            n_in = len(cur)
            if k and not making:
                self.stats[st.id].received.inc(n_in)
            try:
                if making:
                    assert produce is not None
                    t0 = time.perf_counter()
                    cur = produce(st, emit)
                    self.guard.report(st.id, time.perf_counter() - t0)
                elif st.is_async:
                    cur = await st.process_async(cur, emit)
                else:
                    t0 = time.perf_counter()
                    cur = st.process(cur, emit)
                    self.guard.report(st.id, time.perf_counter() - t0)
            except Exception as exc:
                log.exception("stage %s failed on a whole batch", st.id)
                for ev in [] if making else cur:
                    emit("err", ev.fail(st.id, exc))
                cur = []
            errs = len(outputs.get((st.id, "err"), ()))
            if errs:
                self.stats[st.id].error("stage_exception", errs)
            if holding or making:
                refs.adopt(cur, making)
                for (sid, _), evs in outputs.items():
                    if sid == st.id:
                        refs.adopt(evs, making)
            if not holding and not making:  # a holding stage's input is not lost when less comes out: it waits in the stage
                produced = len(cur) + sum(len(v) for (sid, _), v in outputs.items() if sid == st.id)
                gone = st.dropped if st.dropped is not None else n_in - produced
                if gone > 0:
                    self.stats[st.id].discard("dropped" if st.name == "python" else "filtered", gone)
            if k < last:
                self.stats[st.id].sent("out").inc(len(cur))
            else:
                outputs.setdefault((st.id, "out"), []).extend(cur)

    async def produce(self, k: int, fn: Produce) -> None:
        """Run what stage ``k`` produces on its own (tick, flush) through the rest of the chain."""
        outputs: Outputs = {}
        refs = _Refs(None, 0)
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
        n = len(batch)
        refs = batch.acks
        sends = []
        for port, idx in routed.items():
            if not idx:
                continue
            if len(idx) == n:
                part = batch
                if refs is not None:
                    for r in refs:
                        r.pending += 1
            else:
                part = Batch(
                    payloads=take(batch.payloads, idx) if batch.payloads is not None else None,
                    values=take(batch.values, idx) if batch.values is not None else None,
                    metas=take(batch.metas, idx) if batch.metas is not None else None,
                    ingest=take(batch.ingest, idx), acks=take(refs, idx) if refs is not None else None,
                    codec=batch.codec, origin=batch.origin, group=batch.group,
                )  # fmt: skip
                if part.acks is not None:
                    for r in part.acks:
                        r.pending += 1
            sends.append((port, part))
        done_each(refs)
        for port, part in sends:
            await self.routers[sid].send(port, part)

    async def emit_outputs(self, batch: Batch, outputs: Outputs, decoded: bool, refs: list[AckRef] | None) -> None:
        out_batches = [(sid, port, from_events(evs, batch, refs, decoded)) for (sid, port), evs in outputs.items() if evs]
        done_each(refs)  # every output added its own pending count above
        for sid, port, b in out_batches:
            await self.routers[sid].send(port, b)

    async def start(self) -> None:
        """Set up the stages (once, before the first batch); what ``setup`` raises fails the start."""
        for st in self.stages:
            st.setup()
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


class SelfFraming:
    """The postprocessors, as given to an offramp that frames groups of records itself (a file
    per path). A record they raise on is left out of what the offramp writes and remembered,
    so that the runner sends it to err after the write instead of retrying it forever."""

    def __init__(self, post: list[Postprocessor]) -> None:
        self.post = post
        self.refused: dict[int, str] = {}  # id() of a record object -> why

    def run(self, records: list[bytes]) -> list[bytes]:
        for p in self.post:
            records = p.process(records)
        return records

    def __call__(self, records: list[bytes]) -> list[bytes]:
        try:
            return self.run(records)
        except Exception as exc:
            failure = exc
        ok = []
        for r in records:
            try:
                self.run([r])
                ok.append(r)
            except Exception as exc:
                self.refused[id(r)] = f"postprocessor failed: {type(exc).__name__}: {safe_str(exc)}"
        if len(ok) == len(records):  # only the group as a whole fails: no record to blame
            raise failure
        return self.run(ok) if ok else []

    def take_refused(self, chunks: list[bytes]) -> list[tuple[int, str]]:
        """(index in ``chunks``, reason) of the records left out of the last write."""
        if not self.refused:
            return []
        out = [(i, self.refused[id(c)]) for i, c in enumerate(chunks) if id(c) in self.refused]
        self.refused.clear()
        return out


class OfframpRunner:
    def __init__(self, spec: ComponentSpec, plugin: Offramp, codec: Codec, post: list[Postprocessor], inbox: Inbox,
                 stats: ComponentStats, codecs: dict[str, Codec], routers: dict[str, Router], metrics: Metrics,
                 with_meta: bool) -> None:  # fmt: skip
        self.spec = spec
        self.plugin = plugin
        self.codec = codec
        self.post = post
        self.inbox = inbox
        self.stats = stats
        self.codecs = codecs
        self.routers = routers
        self.with_meta = with_meta
        self.router: Router | None = None
        self.closes: list[Inbox] = []
        self.started = False  # the plugin's start() returned (the engine starts it before ``run``)
        self.latency = metrics["headrace_event_latency_seconds"].labels(spec.id)
        self.framing: SelfFraming | None = None
        if plugin.frames_itself:  # it gets one record per event and frames groups of them itself
            self.framing = plugin.postprocess = SelfFraming(post)

    def encode(self, batch: Batch) -> tuple[list[bytes], list[tuple[int, str]]]:
        """Encoded records (b"" where encoding failed), and the failures with their reasons."""
        name = self.spec.codec
        encode = self.codec.encode
        encode_with_meta = self.codec.encode_with_meta
        payloads, values = batch.payloads, batch.values
        if not self.with_meta and payloads is not None and batch.codec == name and None not in payloads:
            return payloads, []  # type: ignore[return-value]
        out: list[bytes] = []
        bad: list[tuple[int, str]] = []
        src_codec = self.codecs.get(batch.codec or "")
        for i in range(len(batch)):
            raw = payloads[i] if payloads is not None else None
            try:
                if raw is not None and batch.codec == name and not self.with_meta:
                    out.append(raw)
                    continue
                value = values[i] if values is not None else src_codec.decode(raw)  # type: ignore[union-attr,arg-type]
                out.append(encode_with_meta(value, batch.meta(i)) if self.with_meta else encode(value))
            except Exception as exc:
                kept = self._as_text(values[i] if values is not None else raw, batch.meta(i))
                if kept is not None:  # a dead letter is kept readable rather than sent on down another err chain
                    out.append(kept)
                    continue
                out.append(b"")
                bad.append((i, f"cannot encode with {name}: {describe_exception(exc)}"))
        return out, bad

    def _as_text(self, value: Any, meta: dict[str, Any]) -> bytes | None:
        """For an event that is already an error (``meta.error``) and that this codec cannot write:
        its text (``repr``), written with its meta; None for other events (they go to ``err`` as they came)."""
        if "error" not in meta:
            return None
        try:
            text = safe_repr(value)
            return self.codec.encode_with_meta(text, meta) if self.with_meta else self.codec.encode(text)
        except Exception:
            return None

    def postprocess(self, records: list[bytes]) -> tuple[list[bytes], list[tuple[int, str]]]:
        """The chunks to write, and the records a postprocessor raised on (index, reason): when the
        batch fails, each record is tried alone to find them (the others are then written)."""
        chunks = records
        try:
            for p in self.post:
                chunks = p.process(chunks)
            return chunks, []
        except Exception as exc:
            failure = exc
        bad = []
        for i, r in enumerate(records):
            one = [r]
            try:
                for p in self.post:
                    one = p.process(one)
            except Exception as exc:
                bad.append((i, f"postprocessor {p.name or type(p).__name__} failed: {type(exc).__name__}: {safe_str(exc)}"))
        if not bad:  # only the batch as a whole fails: no record to blame, so the offramp fails (loudly)
            raise failure
        return [], bad

    async def validate(self, batch: Batch) -> Batch:
        """Records that reach an offramp straight from an onramp were never decoded: check them
        with the source codec now, so malformed input goes to the onramp's err port here too."""
        codec = self.codecs.get(batch.codec or "")
        if codec is None or not codec.validates:
            return batch
        bad = []
        check = codec.validator()
        for i, raw in enumerate(batch.payloads or []):
            try:
                check(raw)
            except Exception as exc:  # whatever a codec raises for one record concerns that record only
                bad.append((i, codec.reason(exc)))
        if not bad:
            return batch
        self.routers[batch.origin].stats.error("decode", len(bad))
        await self.routers[batch.origin].send("err", decode_failures(batch, bad, batch.origin))
        if batch.acks is not None:
            for i, _ in bad:
                batch.acks[i].done()
        keep = sorted(set(range(len(batch))) - {i for i, _ in bad})
        payloads = batch.payloads or []
        return Batch(
            payloads=[payloads[i] for i in keep], metas=[batch.meta(i) for i in keep] if batch.metas else None,
            ingest=[batch.ingest[i] for i in keep], acks=[batch.acks[i] for i in keep] if batch.acks is not None else None,
            codec=batch.codec, origin=batch.origin, group=batch.group,
        )  # fmt: skip

    def _take(self, batch: Batch, records: list[bytes], idx: list[int]) -> tuple[Batch, list[bytes]]:
        """The events ``idx`` of ``batch`` (as encoded by this offramp) and their records."""
        part = [records[i] for i in idx]
        return Batch(payloads=part, metas=[batch.meta(i) for i in idx], ingest=[batch.ingest[i] for i in idx],  # type: ignore[arg-type]
                     acks=[batch.acks[i] for i in idx] if batch.acks is not None else None, codec=self.spec.codec,
                     origin=batch.origin, group=batch.group), part  # fmt: skip

    async def reject(self, batch: Batch, records: list[bytes], rejected: list[tuple[int, str]], unencoded: bool = False) -> tuple[Batch, list[bytes]]:
        """Send records the offramp refused for good to its err port; returns the others.

        ``unencoded``: the events could not be encoded: they leave as they came (their value,
        or their bytes in the codec they came in), so that a dead letter gets the event itself.
        """
        bad = dict(rejected)
        self.stats.error("rejected", len(bad))
        idx = sorted(bad)  # payloads, metas and acks all in this one order
        metas = []
        for i in idx:
            m = dict(batch.meta(i))
            m["error"] = {"stage": self.spec.id, "type": "Rejected", "message": bad[i]}
            metas.append(m)
        acks = [batch.acks[i] for i in idx] if batch.acks is not None else None
        if unencoded:
            err = Batch(payloads=[batch.payloads[i] for i in idx] if batch.payloads is not None else None,
                        values=[batch.values[i] for i in idx] if batch.values is not None else None, metas=metas,
                        ingest=[batch.ingest[i] for i in idx], acks=acks, codec=batch.codec, origin=batch.origin, group=batch.group)  # fmt: skip
        else:  # refused by the peer: valid records in this offramp's codec
            err = Batch(payloads=[records[i] for i in idx], metas=metas, ingest=[batch.ingest[i] for i in idx], acks=acks,
                        codec=self.spec.codec, origin=batch.origin, group=batch.group)  # fmt: skip
        if err.acks is not None:
            for r in err.acks:
                r.pending += 1
        if batch.acks is not None:
            for i in idx:
                batch.acks[i].done()
        rest = self._take(batch, records, [i for i in range(len(batch)) if i not in bad])
        assert self.router is not None
        await self.router.send("err", err)
        return rest

    def accepted(self, batch: Batch, records: list[bytes]) -> None:
        """The peer confirmed these events: latency, counts, acks."""
        n = len(batch)
        if not n:
            return
        now = time.time_ns()
        ing = batch.ingest
        step = max(n // 4, 1)
        for i in range(0, n, step):
            self.latency.observe((now - ing[i]) / 1e9)
        self.stats.sent("out").inc(n)
        self.stats.sent_bytes.inc(batch.nbytes if records is batch.payloads else sum(map(len, records)))
        done_each(batch.acks)

    async def run(self) -> None:
        try:
            limit = self.plugin.coalesce_events
            while (batch := await self.inbox.get()) is not None:
                if limit:
                    batch = self.coalesce(batch, limit)
                await self.deliver(batch)
            if self.started:
                await self.plugin.flush()
        finally:
            for inbox in self.closes:
                inbox.close()

    def coalesce(self, batch: Batch, limit: int) -> Batch:
        """Join the batches queued behind ``batch`` (same codec and origin) into one write."""
        parts = [batch]
        total, nbytes = len(batch), batch.nbytes
        while total < limit and nbytes < COALESCE_BYTES:
            nxt = self.inbox.peek()
            if nxt is None or len(nxt) + total > limit or not joinable(batch, nxt):
                break
            parts.append(self.inbox.take())
            total += len(nxt)
            nbytes += nxt.nbytes
        return parts[0] if len(parts) == 1 else join(parts)

    async def deliver(self, batch: Batch) -> None:
        self.stats.received.inc(len(batch))
        self.stats.received_bytes.inc(batch.nbytes)
        if batch.unchecked and batch.payloads is not None and batch.values is None:
            batch = await self.validate(batch)
            if not len(batch):
                return
        records, bad = self.encode(batch)
        if bad:  # an event this codec cannot carry goes to the offramp's err port with the reason
            log.error("offramp %s: %d event(s) could not be encoded: %s", self.spec.id, len(bad), bad[0][1])
            batch, records = await self.reject(batch, records, bad, unencoded=True)
            if not len(batch):
                return
        backoff = Backoff()
        while True:
            try:
                rejected = await self.write(batch, records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cause: BaseException = exc
                if isinstance(exc, PartialWrite):  # what the peer confirmed is done; only the rest is tried again
                    cause = exc.cause
                    batch, records = await self.partly_done(batch, records, exc)
                n = len(batch)
                if not n:
                    return
                self.stats.error(type(cause).__name__, n)
                if not self.plugin.retryable(cause):
                    log.error("offramp %s: write of %d event(s) failed for good: %s", self.spec.id, n, cause)
                    rejected = [(i, f"{type(cause).__name__}: {cause}") for i in range(n)]
                    break
                delay = backoff.next()
                log.error("offramp %s: write of %d event(s) failed, retrying in %.1fs: %s", self.spec.id, n, delay, cause)
                await asyncio.sleep(delay)
                continue
            break
        if rejected:
            batch, records = await self.reject(batch, records, rejected)
        self.accepted(batch, records)

    async def write(self, batch: Batch, records: list[bytes]) -> Rejections:
        """One attempt at writing ``batch`` (``records``: its events in this offramp's codec)."""
        chunks = records
        if not self.plugin.frames_itself and self.post:
            chunks, bad = self.postprocess(records)
            if bad:  # a record a postprocessor cannot take goes to err; the rest is written
                raise PartialWrite(ValueError("a postprocessor refused records"), delivered=[], rejected=bad)
        if self.plugin.takes_nbytes:
            known = batch.nbytes if chunks is batch.payloads else None
            rejected = await self.plugin.write(chunks, len(batch), batch.ingest, batch.metas, nbytes=known)  # type: ignore[call-arg]
        else:
            rejected = await self.plugin.write(chunks, len(batch), batch.ingest, batch.metas)
        if self.framing is not None and (refused := self.framing.take_refused(records)):  # left out of the write
            rejected = sorted({**dict(refused), **dict(rejected or [])}.items())
        return rejected

    async def partly_done(self, batch: Batch, records: list[bytes], partial: PartialWrite) -> tuple[Batch, list[bytes]]:
        """Settle what a ``PartialWrite`` says: delivered ones accepted, rejected ones to err; returns the rest."""
        done = set(partial.delivered)
        refused = self.framing.take_refused(records) if self.framing is not None else []
        self.accepted(*self._take(batch, records, sorted(done)))
        rest = [i for i in range(len(batch)) if i not in done]
        bad = {i: reason for i, reason in [*refused, *partial.rejected] if i not in done}
        batch, records = self._take(batch, records, rest)
        if bad:
            at = {i: k for k, i in enumerate(rest)}
            batch, records = await self.reject(batch, records, [(at[i], reason) for i, reason in bad.items()])
        return batch, records
