"""A chain of CPU stages run as a worker segment: chunking, ordering, acks and counts.

Input batches are cut into chunks sized to a target CPU time per job (learned from the
workers' reports), dispatched to the pool, and released per order group (onramp, or
Kafka partition) in the order they were read; a slow chunk holds back only its own
group. A chunk whose worker died is split in halves until the record that kills
workers is alone; after ``POISON_ATTEMPTS`` deaths it goes to ``err`` with the cause. A
chunk whose job fails whatever worker runs it (``JobFailed``) is split the same way, and
its culprit goes to ``err`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle
from array import array
from collections import deque
from collections.abc import Hashable
from itertools import accumulate, pairwise
from typing import Any

from headrace.config.graph import Graph
from headrace.contract.acks import done_each
from headrace.contract.codec import Codec
from headrace.contract.metas import Metas, take, take_metas
from headrace.contract.stage import Operator
from headrace.metrics.defs import Metrics
from headrace.metrics.stagemetrics import TOTALS as STAGE_TOTALS
from headrace.runtime.batch import Batch, join, joinable
from headrace.runtime.chain import apply_counts
from headrace.runtime.inbox import Inbox
from headrace.runtime.placement import Chain
from headrace.runtime.router import Router
from headrace.runtime.runner import Runner
from headrace.runtime.tap import offer_sampled, sampling
from headrace.runtime.workers.pool import JobFailed, WorkerCrashed, WorkerPool
from headrace.runtime.workers.program import NodeDef, SegmentSpec
from headrace.runtime.workers.wire import PICKLED, TAP, UNCHANGED, Request, Response

log = logging.getLogger("headrace.runtime")
POISON_ATTEMPTS = 3
# a worker's time per job the chunk size aims for (per-job parent cost ~150 us): its wall time, or
# its CPU time when more (a job's CPU time alone sized jobs of a stage that sleeps or blocks in
# seconds: 4096 events of 200 us, each job in flight holding a drain or a reload for 0.8 s)
TARGET_JOB_NS = 5_000_000
# costly events (a 200 us stage: 25 per 5 ms job) make the parent's cost per job (its worker round trip,
# its release, its small offramp write) a share of every event: such jobs get up to MIN_JOB_EVENTS
# events, as long as they stay within LONG_JOB_NS of CPU
MIN_JOB_EVENTS = 100
LONG_JOB_NS = 20_000_000
MAX_JOB_EVENTS = 4096  # a job never holds more events than this (bounded memory per job)
# while every worker has a job running and one queued, a job is not cut from a short queue: the
# queue gets up to FILL_SECONDS to grow to a whole job first. Cut at once, the jobs of a busy
# pipeline shrink to the source's batches (the queue holds one each time a job is released): the
# parent's cost per job is paid many times over, and a worker's queue of small jobs runs dry while
# the parent delivers a large one
FILL_SECONDS = 0.02


class Poisoned:
    """A record isolated by bisection: it kills workers (``WorkerCrashed``), or its job fails
    whenever it runs (``JobFailed``: a meta that cannot cross back, a segment error)."""

    def __init__(self, cause: str, kind: str = "WorkerCrashed") -> None:
        self.cause = cause
        self.kind = kind


Result = list[tuple[Batch, "Response | Poisoned"]]


def exit_codecs(chain: Chain, stages: list[Operator], graph: Graph) -> dict[tuple[str, str], str | None]:
    """Per exit port: the codec to encode with in the worker when every target is an offramp using it."""
    exits: dict[tuple[str, str], str | None] = {}
    for k, st in enumerate(stages):
        for port in graph.components[st.id].ports:
            if port == "out" and k < len(stages) - 1:
                continue
            targets = [graph.components[t] for t in graph.edges.get((st.id, port), [])]
            codecs = {t.codec for t in targets if t.kind == "offramp" and not t.with_meta}
            all_off = targets and all(t.kind == "offramp" for t in targets)
            exits[(st.id, port)] = codecs.pop() if all_off and len(codecs) == 1 else None
    return exits


class PooledChainRunner(Runner):
    def __init__(self, chain: Chain, stages: list[Operator], inbox: Inbox, routers: dict[str, Router], codecs: dict[str, Codec],
                 metrics: Metrics, pool: WorkerPool, graph: Graph, segment_id: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.name = chain.id
        self.nodes = tuple(chain.nodes)
        self.chain = chain
        self.stages = stages
        self.inbox: Inbox = inbox
        self.routers = routers
        self.codecs = codecs
        self.pool = pool
        self.graph = graph
        base = graph.base_dir
        self.segment = self.spec = SegmentSpec(segment_id or chain.id, [NodeDef(s.id, s.name, s.config, base) for s in stages], exit_codecs(chain, stages, graph),
                                dict(graph.codecs))  # fmt: skip
        self.exit_codecs = sorted({k for k in self.spec.exits.values() if k is not None})
        self.ns_per_event: float | None = None
        self.slots = asyncio.Semaphore(pool.size * pool.max_inflight * 2)
        self.pending: dict[Hashable, deque[asyncio.Task[Result]]] = {}
        self.wake = asyncio.Event()
        self.running = 0  # jobs dispatched and not answered yet
        self.progress = asyncio.Event()  # a job answered, or the inbox grew
        self.unordered = {c.id for c in graph.of_kind("onramp") if not c.ordered}
        self._seq = 0

    def chunk_size(self, n: int) -> int:
        if self.ns_per_event is None:
            return max(math.ceil(n / self.pool.size), 1)
        ns = max(self.ns_per_event, 1.0)
        size = int(TARGET_JOB_NS / ns)
        if size < MIN_JOB_EVENTS:
            size = min(MIN_JOB_EVENTS, int(LONG_JOB_NS / ns))
        return max(min(size, n), 1)

    def retire(self, routers: dict[str, Router]) -> None:
        super().retire(routers)
        self.routers = routers

    async def run(self) -> None:
        releaser = asyncio.create_task(self.release_results())
        intake = asyncio.create_task(self.intake())
        try:
            # a failure to release results (a bug) must fail the component, not hold its records silently
            await asyncio.wait({releaser, intake}, return_when=asyncio.FIRST_COMPLETED)
            if releaser.done():
                raise releaser.exception() or RuntimeError("the releaser of worker results ended")
            intake.result()
        finally:
            releaser.cancel()
            intake.cancel()
            for inbox in self.closes:
                inbox.close()

    async def intake(self) -> None:
        """Cut queued batches into jobs and dispatch them; ends when the inbox is closed and every job released."""
        while True:
            await self.fill()
            batch = await self.inbox.get()
            if batch is None:
                break
            batch = self.merge(batch)
            n = len(batch)
            size = self.chunk_size(n)
            for start in range(0, n, size):
                chunk = batch if size >= n else batch.slice(start, start + size)
                await self.slots.acquire()
                group = batch.group
                if batch.origin in self.unordered:
                    self._seq += 1
                    group = ("unordered", self._seq)
                task = asyncio.create_task(self.run_job(chunk, 0))
                self.running += 1
                task.add_done_callback(self._job_done)
                self.pending.setdefault(group, deque()).append(task)
        self.wake.set()
        while self.pending:
            await asyncio.sleep(0.005)
            self.wake.set()

    def _job_done(self, _task: asyncio.Task[Result]) -> None:
        self.running -= 1
        self.wake.set()
        self.progress.set()

    async def fill(self) -> None:
        """While every worker has a job running and one queued, wait (``FILL_SECONDS`` at most) for
        the inbox to hold a whole job; at once when a worker is about to run dry."""
        inbox = self.inbox
        target = self.chunk_size(MAX_JOB_EVENTS)

        def worth_waiting() -> bool:  # every worker has two jobs, and the queue is short, open and can still grow
            return self.running >= 2 * self.pool.size and inbox.events < target and not inbox.full() and inbox.producers > 0

        if not worth_waiting():
            return
        progress = self.progress
        inbox.listener = progress
        expired: list[bool] = []  # the timer's own mark: uvloop's clock (whole ms) can read just short of a float deadline when it fires

        def expire() -> None:
            expired.append(True)
            progress.set()

        timer = asyncio.get_running_loop().call_later(FILL_SECONDS, expire)
        try:
            while worth_waiting() and not expired:
                progress.clear()
                await progress.wait()
        finally:
            timer.cancel()
            inbox.listener = None

    def merge(self, batch: Batch) -> Batch:
        """Cheap events: join queued batches of the same kind into one job, up to the target size."""
        target = self.chunk_size(MAX_JOB_EVENTS)
        parts = [batch]
        total = len(batch)
        while total < target:
            nxt = self.inbox.peek()
            if nxt is None or not _joinable(batch, nxt) or total + len(nxt) > target:
                break
            parts.append(self.inbox.take())
            total += len(nxt)
        return parts[0] if len(parts) == 1 else join(parts)

    def request(self, chunk: Batch) -> list[Any]:
        if chunk.values is not None:  # decoded (a stage on the loop ran): the job is their encodings when the codec takes every value
            encoded = self._encoded(chunk)
            if encoded is not None:  # from here the chunk is these records (what comes back is read against them)
                chunk.payloads, chunk.values, chunk.wire = encoded, None, None  # type: ignore[assignment]
        msg = self._request(chunk)
        msg[0].keeps_records = chunk.payloads is not None and chunk.values is None
        shipments = self.shipments(chunk)
        if shipments:
            msg[0].shipments = shipments
        if self.interior:  # nodes inside the segment are tapped: the worker sends sampled copies of their out
            msg[0].taps = sampling(self.interior)
        return msg

    def shipments(self, chunk: Batch) -> dict[str, Any] | None:
        """What the codecs of this job (its records', its exits') need in the worker besides their config."""
        out: dict[str, Any] = {}
        source = chunk.codec or "json"
        for key in (source, *self.exit_codecs):
            codec = self.codecs.get(key)
            if key in out or codec is None or not codec.needs_parent():
                continue
            shipment = codec.shipment(chunk.payloads if key == source and chunk.values is None else None)
            if shipment is not None:
                out[key] = shipment
        return out or None

    def _request(self, chunk: Batch) -> list[Any]:
        ingest = chunk.ingest_wire if chunk.ingest_wire is not None else array("q", chunk.ingest).tobytes()
        if chunk.values is not None:
            req = Request(0, self.spec.id, chunk.codec or "json", b"", b"", chunk.metas, ingest, chunk.values)
            return [req, b""]
        if chunk.wire is not None:  # the source had them joined already
            lens, blobs = chunk.wire
            return [Request(0, self.spec.id, chunk.codec or "json", lens, b"", chunk.metas, ingest), *blobs]
        payloads: list[bytes] = chunk.payloads  # type: ignore[assignment]
        lens = array("I", map(len, payloads)).tobytes()
        return [Request(0, self.spec.id, chunk.codec or "json", lens, b"", chunk.metas, ingest), b"".join(payloads)]

    def _encoded(self, chunk: Batch) -> list[bytes] | None:
        """Decoded events as their codec writes them, to cross to a worker as bytes: the original
        bytes of those no stage changed, the others encoded (C-fast, a third of pickling them, and the
        worker's view of them costs less than unpickling). Across the process boundary an event is
        what its codec makes of it, in this direction as in the other (a worker's changed events come
        back encoded). None, and the values are pickled as they are, when the codec cannot carry
        every value (a schema codec) or refuses one (bytes, integers beyond 64 bits, non-text keys)."""
        codec = self.codecs.get(chunk.codec or "json")
        fast = codec.fast_encoder() if codec is not None and codec.carries_any else None
        if fast is None:
            return None
        encode, refused = fast
        raws, values = chunk.payloads, chunk.values
        assert values is not None
        try:
            if raws is None or raws.count(None) == len(raws):
                return list(map(encode, values))
            return [raw if raw is not None else encode(v) for raw, v in zip(raws, values, strict=True)]
        except refused:
            return None

    async def run_job(self, chunk: Batch, attempts: int) -> Result:
        try:
            resp = await self.pool.execute(self.spec.id, self.request(chunk))
        except (WorkerCrashed, JobFailed) as exc:
            n = len(chunk)
            if n > 1:
                mid = n // 2
                a, b = await asyncio.gather(self.run_job(chunk.slice(0, mid), 0), self.run_job(chunk.slice(mid, n), 0))
                return a + b
            if isinstance(exc, JobFailed):  # the same every time: no retry
                log.error("a record fails its worker segment; sending it to err: %s", exc)
                return [(chunk, Poisoned(str(exc), "JobFailed"))]
            if attempts + 1 < POISON_ATTEMPTS:
                return await self.run_job(chunk, attempts + 1)
            log.error("a record killed a worker %d times; sending it to err: %s", POISON_ATTEMPTS, exc)
            return [(chunk, Poisoned(f"record killed the worker {POISON_ATTEMPTS} times: {exc}"))]
        n = len(chunk)
        spent = max(resp.cpu_ns, resp.wall_ns)
        if n and spent:
            per = spent / n
            self.ns_per_event = per if self.ns_per_event is None else 0.8 * self.ns_per_event + 0.2 * per
        return [(chunk, resp)]

    async def release_results(self) -> None:
        """Hand on the answers of finished jobs, per order group in the order their chunks were read."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            for group in list(self.pending):
                dq = self.pending[group]
                while dq and dq[0].done():
                    task = dq.popleft()
                    self.slots.release()
                    for chunk, res in task.result():
                        await self.emit(chunk, res)
                if not dq:
                    del self.pending[group]

    async def emit(self, chunk: Batch, res: Response | Poisoned) -> None:
        first = self.stages[0].id
        r0 = self.routers[first].stats
        r0.received.inc(len(chunk))
        r0.received_bytes.inc(chunk.nbytes)
        refs = chunk.acks
        sends: list[tuple[str, str, Batch]] = []
        if isinstance(res, Poisoned):
            r0.error("worker_crash" if res.kind == "WorkerCrashed" else "stage_exception", len(chunk))
            sends.append((first, "err", chunk.failed([(i, res.cause) for i in range(len(chunk))], self.chain.id, res.kind)))
        else:
            if res.stage_metrics:
                STAGE_TOTALS.merge(res.stage_metrics)
            if res.failures:
                self.routers[chunk.origin].stats.error("decode", len(res.failures))
                sends.append((chunk.origin, "err", chunk.failed(res.failures, chunk.origin, "DecodeError", as_text=True)))
            blob = res.blob
            for out in res.outputs:
                if out.port == TAP:  # sampled copies for the taps of a node inside the segment: shown, never routed
                    self._feed_interior(chunk, out, blob, res.counts)
                    continue
                sends.append((out.node, out.port, self.rebuild(chunk, out, blob)))
            apply_counts({st.id: self.routers[st.id].stats for st in self.stages}, self.stages, res.counts)
        done_each(refs)
        for node, port, b in sends:
            await self.routers[node].send(port, b)

    def _feed_interior(self, chunk: Batch, out: Any, blob: bytes, counts: Any) -> None:
        taps = self.interior.get(out.node)
        if not taps:
            return
        copies = self.rebuild(chunk, out, blob, share=False)  # no ack shares: these events go nowhere
        offer_sampled(taps, copies, counts[out.node].out if out.node in counts else len(copies))

    @staticmethod
    def rebuild(chunk: Batch, out: Any, blob: bytes, share: bool = True) -> Batch:
        """The events of one output of a worker's answer, as a batch (the original bytes where unchanged);
        ``blob``: the answer's message (``Response.attach``), re-encoded records sliced from it."""
        if out.identity and out.codec == chunk.codec and chunk.payloads is not None:
            # every input, in order, untouched: the original bytes as they are
            return chunk.remade(None, chunk.payloads, _metas(chunk, out, None), out.codec, nbytes=chunk.nbytes, share=share)
        src = array("I")
        src.frombytes(out.src)
        orig = chunk.payloads
        n = len(src)
        in_order = n == len(chunk) and src == array("I", range(n))  # each input once, in order (compared in C)
        if out.cuts:  # spliced: each input's own bytes cut, then the one tail (no Python step per record)
            assert orig is not None, "a spliced answer to a job whose records the parent does not hold"
            cuts = array("i")
            cuts.frombytes(out.cuts)
            base = orig if in_order else take(orig, src.tolist())
            payloads = _spliced(base, cuts, out.tail)  # type: ignore[arg-type]
            nbytes = sum(cuts) + n * len(out.tail)
            if in_order:
                return chunk.remade(None, payloads, _metas(chunk, out, None), out.codec, nbytes=nbytes, share=share)
            return chunk.remade(src.tolist(), payloads, _metas(chunk, out, src), out.codec, nbytes=nbytes, share=share)
        lens = array("i")
        lens.frombytes(out.lens)
        if orig is not None and in_order and out.codec == chunk.codec and lens.count(UNCHANGED) == n:
            # untouched, in order: the original bytes as they are
            return chunk.remade(None, orig, _metas(chunk, out, None), out.codec, nbytes=chunk.nbytes, share=share)
        pos = out.start
        mv = memoryview(blob)
        if out.codec == PICKLED:  # values the job's codec could not hold (e.g. bytes for json): downstream decides
            values = []
            for ln in lens:
                values.append(pickle.loads(mv[pos : pos + ln]))
                pos += ln
            return chunk.remade(src.tolist(), [None] * n, _metas(chunk, out, src), chunk.codec, values=values, share=share)  # type: ignore[arg-type]
        if UNCHANGED not in lens:  # every record re-encoded (a stage that writes): a slice each
            ends = list(accumulate(lens, initial=pos))
            payloads = [blob[a:b] for a, b in pairwise(ends)]  # faster than map(blob.__getitem__, map(slice, ...))
            nbytes = ends[-1] - ends[0]
            if in_order:
                return chunk.remade(None, payloads, _metas(chunk, out, None), out.codec, nbytes=nbytes, share=share)
            return chunk.remade(src.tolist(), payloads, _metas(chunk, out, src), out.codec, nbytes=nbytes, share=share)
        mixed: list[bytes | None] = []
        for i, ln in zip(src, lens, strict=True):
            if ln == UNCHANGED:
                mixed.append(orig[i] if orig is not None else None)
            else:
                mixed.append(blob[pos : pos + ln])
                pos += ln
        return chunk.remade(src.tolist(), mixed, _metas(chunk, out, src), out.codec, share=share)


def _spliced(records: list[bytes], cuts: array[int], tail: bytes) -> list[bytes]:
    """``records[j][:cuts[j]] + tail`` for each j."""
    try:  # a comprehension: the interpreter's own slice and add beat map() with operator's (130 against 175 ns a record)
        return [r[:c] + tail for r, c in zip(records, cuts)]  # noqa: B905 (as long: one cut per record)
    except TypeError:  # a record held as another buffer type (a memoryview cannot be added to)
        return [bytes(r[:c]) + tail for r, c in zip(records, cuts, strict=True)]


def _metas(chunk: Batch, out: Any, src: array[int] | None) -> Metas | None:
    """An output's metas: from the answer, or (``metas_as_sent``) the ones the parent sent."""
    if not out.metas_as_sent or chunk.metas is None:
        return out.metas  # type: ignore[no-any-return]
    metas = chunk.metas
    return metas if src is None else take_metas(metas, src)


def _joinable(a: Batch, b: Batch) -> bool:
    return a.values is None and b.values is None and a.payloads is not None and a.group == b.group and joinable(a, b)
