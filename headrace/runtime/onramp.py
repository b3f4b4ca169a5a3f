"""The onramp runner: frames, batches and routes what a source reads; implements ``OnrampSink``."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

from headrace.config.graph import ComponentSpec
from headrace.contract.acks import AckRef, done_each
from headrace.contract.backoff import Backoff
from headrace.contract.codec import Codec
from headrace.contract.framing import Preprocessor
from headrace.contract.metas import CONST, MetaColumns, Metas
from headrace.contract.source import Onramp
from headrace.errors import safe_str
from headrace.runtime.batch import Batch
from headrace.runtime.diskbuffer import DiskBuffer
from headrace.runtime.records import check
from headrace.runtime.router import Router
from headrace.runtime.runner import Runner
from headrace.runtime.starting import StartFailed, describe, start_one

log = logging.getLogger("headrace.runtime")

_SCALARS = (str, int, float, bool, bytes, type(None))


def same_meta(meta: dict[str, Any], n: int) -> Metas:
    """One meta for ``n`` records (a connection's peer): as constant columns when its values are
    immutable (no dict per record is built until a stage reads one), else a copy each."""
    if all(isinstance(v, _SCALARS) for v in meta.values()):
        return MetaColumns(n, [(k, CONST, v) for k, v in meta.items()])
    return [dict(meta) for _ in range(n)]


def _line_numbers(data: bytes, first: int, carried: bool, n: int, newlines: int) -> Sequence[int] | None:
    """The line number of each of the ``n`` records ``lines`` framed from ``data`` (whose first line
    is number ``first``; ``carried``: it began in an earlier chunk; ``newlines``: the framing found
    that many): a range when every newline ended a record, else counted line by line (blank lines
    are skipped by the framing). None when the count does not come out (never a wrong number)."""
    if n == newlines:
        return range(first, first + n)
    numbers = []
    for k, piece in enumerate(data.split(b"\n")[:-1]):
        if (piece[:-1] if piece.endswith(b"\r") else piece) or (k == 0 and carried):  # what the framing keeps (a carried start: the line has bytes)
            numbers.append(first + k)
    return numbers if len(numbers) == n else None


class OnrampRunner(Runner):
    """Frames, batches and routes what an onramp reads; implements ``OnrampSink``."""

    def __init__(self, spec: ComponentSpec, plugin: Onramp, pre: list[Preprocessor], router: Router, batch_size: int,
                 start_timeout: float = 60.0) -> None:  # fmt: skip
        super().__init__()
        self.name = spec.id
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
        self.unheld = asyncio.Event()  # cleared while something holds this onramp (error budget, memory)
        self.unheld.set()
        self.holds: set[str] = set()
        self.start_timeout = start_timeout
        self.buffer: DiskBuffer | None = None  # buffer: {type: disk} (set by the wiring)
        self.feeding = False  # the buffer's feeder is handing an entry to the graph (not waiting for one)
        self.feed_stop = False  # the feeder ends once it handed on what it has
        self.syncing: asyncio.Future[None] | None = None  # the buffer's fsync loop
        self.fanout_codec: Codec | None = None  # set by the wiring when ``out`` has several targets
        self.source_codec: Codec | None = None  # set by the wiring when the codec prepares records in the parent
        self.unsettled = 0  # ack tokens handed on and not yet acked or failed (``settle``)

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

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None, ack: Any = None, line: int | None = None) -> int | None:
        self.stats.received_bytes.inc(len(data))
        ref = self._ref(1, ack) if ack is not None else None  # its own share until all is framed
        lines_pre = self.pre[0] if self._plain_lines() else None
        before = lines_pre.separators if lines_pre is not None else 0  # type: ignore[attr-defined]
        numbered = line is not None and lines_pre is not None and not lines_pre.discarding  # type: ignore[attr-defined]  # (an over-long line)
        carried = numbered and bool(lines_pre.buf)  # type: ignore[union-attr]  # a line begun in an earlier chunk
        for records, rejected in self._steps(data):  # the next step once the graph took the last one
            lines = None
            if numbered and not rejected:
                lines = _line_numbers(data, line, carried, len(records), lines_pre.separators - before)  # type: ignore[arg-type, union-attr]
            await self._emit(records, rejected, meta, ref, lines)
            numbered = False  # a further step (a decompressor's): not numbered
        if ref is not None:
            ref.done()
        return lines_pre.separators - before if lines_pre is not None else None  # type: ignore[attr-defined]

    async def end_of_stream(self, meta: dict[str, Any] | None = None, line: int | None = None) -> None:
        records, rejected = self._finish()
        numbered = line is not None and not rejected and len(records) <= 1 and self._plain_lines()  # at most the last line, unended
        await self._emit(records, rejected, meta, lines=range(line, line + len(records)) if numbered else None)  # type: ignore[operator, arg-type]

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

    def _plain_lines(self) -> bool:
        """Framing is one ``lines`` preprocessor splitting at ``\\n``: a record per non-empty line."""
        return len(self.pre) == 1 and hasattr(self.pre[0], "separators") and getattr(self.pre[0], "sep", None) == b"\n"

    async def _emit(self, records: list[bytes], rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None,
                    ref: AckRef | None = None, lines: Sequence[int] | None = None) -> None:  # fmt: skip
        if rejected:
            await self.reject(rejected, meta)
        bs = self.batch_size
        for start in range(0, len(records), bs):
            part = records[start : start + bs]
            metas = same_meta(meta, len(part)) if meta else None
            if lines is not None and isinstance(metas, MetaColumns):  # numbered lines: one more column
                metas = metas.with_column("file_line", lines[start : start + len(part)])
            await self._send(part, metas, None, None, ref=ref)

    async def reject(self, rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None = None) -> None:
        self.stats.error("framing", len(rejected))
        await self.router.send("err", Batch.rejected(rejected, self.spec.id, "FramingError", meta, origin=self.spec.id, group=self.group))

    async def records(self, payloads: list[bytes], metas: Metas | None = None, ack: Any = None, group: Any = None,
                      refused: dict[int, str] | None = None, wire: tuple[bytes, tuple[bytes, ...]] | None = None) -> None:  # fmt: skip
        """Whole records from the source (their bytes count as received; streams count in ``chunk``).

        ``refused``: records the source will not pass on (index -> reason, e.g. over a size
        limit); they go to the onramp's ``err`` port with a sample of their bytes and count
        toward the same ack as the rest.
        """
        nbytes = sum(map(len, wire[1])) if wire is not None else sum(map(len, payloads))
        self.stats.received_bytes.inc(nbytes)
        if not payloads:
            return
        batch = self._batch(payloads, metas, ack, group, nbytes, wire if not refused else None)
        self._count_in(len(batch))
        if not refused:
            await self._out(batch)
            return
        bad = sorted(refused)
        self.stats.error("framing", len(bad))
        err = batch.failed([(i, refused[i]) for i in bad], self.spec.id, "RecordTooLarge", as_text=True, sample=SAMPLE_BYTES)
        done_each(err.acks)  # the err batch took its own shares: the source batch's go
        await self.router.send("err", err)
        keep = [i for i in range(len(batch)) if i not in refused]
        if keep:
            await self._out(batch.select(keep))

    def _batch(self, payloads: list[bytes], metas: Metas | None, ack: Any, group: Any, nbytes: int | None = None,
               wire: tuple[bytes, tuple[bytes, ...]] | None = None, ref: AckRef | None = None) -> Batch:  # fmt: skip
        if ref is not None:  # a share of a chunk's ref per record framed from it
            ref.pending += len(payloads)
        elif ack is not None:
            ref = self._ref(len(payloads), ack)
        return Batch.source(payloads, codec=self.codec, origin=self.spec.id, group=(self.group, group) if group is not None else self.group,
                            ack=ref, metas=metas, nbytes=nbytes, wire=wire)  # fmt: skip

    async def _send(self, payloads: list[bytes], metas: Metas | None, ack: Any, group: Any, nbytes: int | None = None,
                    wire: tuple[bytes, tuple[bytes, ...]] | None = None, ref: AckRef | None = None) -> None:  # fmt: skip
        if not payloads:
            return
        batch = self._batch(payloads, metas, ack, group, nbytes, wire, ref)
        self._count_in(len(batch))
        await self._out(batch)

    def _count_in(self, n: int) -> None:
        """Records read: the component's count, and the error budget's."""
        self.stats.received.inc(n)
        if self.router.budget is not None:
            self.router.budget.received(self.spec.id, n)

    def hold(self, why: str, kind: str = "error_budget") -> None:
        """Read nothing more, and answer not ready: for good (the error budget tripped; the daemon
        must restart) or until ``unhold(kind)`` (memory)."""
        log.error("onramp %s paused: %s", self.spec.id, why)
        self.holds.add(kind)
        self.unheld.clear()
        if kind == "error_budget":
            self.plugin.ready = False

    def unhold(self, kind: str) -> None:
        self.holds.discard(kind)
        if not self.holds:
            self.unheld.set()

    async def _out(self, batch: Batch) -> None:
        """To the ``out`` port. When it fans out to several targets, the records are checked here,
        once: each target would otherwise report every malformed record on this onramp's err port.
        With a disk buffer: into the buffer, and done for the source once fsynced (``_feed`` hands them on)."""
        if self.buffer is not None:
            await self._buffered(self.buffer, batch)
            return
        if not self.unheld.is_set():  # paused by the error budget: the source waits here (a Kafka one pauses its partitions)
            await self.unheld.wait()
        await self._route(batch)

    async def _buffered(self, buf: DiskBuffer, batch: Batch) -> None:
        entry = await buf.append(batch.payloads, batch.ingest, batch.metas, self.spec.id, batch.nbytes)  # type: ignore[arg-type]
        if entry is None:  # full, drop_newest: dropped (and counted); for the source it is done
            self.stats.discard("buffer_full", len(batch))
        else:
            await buf.durable(entry)  # the source reads on (an HTTP request is answered) once its records are on disk
        done_each(batch.acks)

    async def _feed(self, buf: DiskBuffer) -> None:
        """Hand the buffer's entries to the graph, oldest first; an entry is done in the buffer once
        the graph delivered all its records (one that failed stays, for the next start)."""
        while not self.feed_stop:
            entry, (records, ingest, metas, _origin) = await buf.take()
            self.feeding = True
            try:
                if not self.unheld.is_set():
                    await self.unheld.wait()
                ref = AckRef(len(records), entry, buf.done, self._feed_failed)
                await self._route(Batch(payloads=records, metas=metas, ingest=ingest, acks=[ref] * len(records), codec=self.codec,  # type: ignore[arg-type]
                                        origin=self.spec.id, group=self.group, unchecked=True))  # fmt: skip
            finally:
                self.feeding = False

    def _feed_failed(self, entry: Any) -> None:
        log.error("onramp %s: %d buffered record(s) were not delivered (a stop, a reload, the error budget): they stay in its disk "
                  "buffer and are handed on again at the next start", self.spec.id, entry.events)  # fmt: skip

    async def _route(self, batch: Batch) -> None:
        if self.source_codec is not None and batch.payloads is not None:  # e.g. fetch the schemas the records name, once each
            await self.source_codec.prepare(batch.payloads)
        if self.fanout_codec is not None:
            batch, err = check(batch, self.fanout_codec)
            if err is not None:
                self.stats.error("decode", len(err))
                await self.router.send("err", err)
            if not len(batch):
                return
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
                self.plugin.ready = False  # /ready answers 503 until the restarted source is ready again
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
        feeder: asyncio.Task[None] | None = None
        try:
            if self.stopped or not await self._start():
                return
            if self.buffer is not None:  # what a previous run left is handed on first
                await asyncio.get_running_loop().run_in_executor(None, self.buffer.open)
                self.syncing = asyncio.ensure_future(self.buffer.sync_forever())
                feeder = asyncio.ensure_future(self._feed(self.buffer))
            # the source runs in a task of its own: a stop cancels it, and framing is still flushed
            self.task = asyncio.ensure_future(self._source())
            try:
                await asyncio.shield(self.task)
            except asyncio.CancelledError:
                if not self.task.cancelled():
                    self.task.cancel()
                    raise
            await self.end_of_stream()
            if feeder is not None and self.buffer is not None:
                while not self.stopped and self.buffer.untaken and not feeder.done():  # a finite source ended: all of it goes on
                    await asyncio.sleep(0.01)
                self.feed_stop = True
                while self.feeding and not feeder.done():  # a stop: the rest stays on disk; the entry being handed on goes on
                    await asyncio.sleep(0.005)
        finally:
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            for inbox in self.closes:
                inbox.close()

    async def release(self) -> None:
        self.plugin.ready = False
        try:
            await self.plugin.stop()
        finally:
            await self.close_buffer()

    async def close_buffer(self) -> None:
        """After the drain (the graph's last acks moved the buffer's watermark): sync and close it."""
        if self.buffer is not None:
            if self.syncing is not None:
                self.syncing.cancel()
                await asyncio.gather(self.syncing, return_exceptions=True)
                self.syncing = None
            await self.buffer.close()

    def _ref(self, pending: int, token: Any) -> AckRef:
        """An ack ref for the source's ``token``, counted in ``unsettled`` until it is acked or failed."""
        self.unsettled += 1
        return AckRef(pending, token, self._acked, self._nacked)

    def _acked(self, token: Any) -> None:
        self.unsettled -= 1
        self.plugin.ack(token)

    def _nacked(self, token: Any) -> None:
        self.unsettled -= 1
        self.plugin.fail(token)

    async def settle(self, timeout: float) -> bool:
        """Before a reload stops this (changed) source: wait, at most ``timeout``, until everything it
        handed on was acked or failed, so that those acks still reach it (a broker whose acks a
        stopped client never sent hands the messages again to the next session: duplicates).
        Whether all settled (a stage holding events until its input closes, a window, makes it
        time out: those acks then come after the stop, as before)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.unsettled > 0 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.unsettled > 0:
            log.warning("onramp %s: %d delivery(ies) still open after %.1fs; stopping it for the reload (its source sees them "
                        "unacknowledged)", self.spec.id, self.unsettled, timeout)  # fmt: skip
            return False
        return True

    def stop(self) -> None:
        """Stop intake: the source's task is cancelled, framing is flushed, targets close."""
        self.stopped = True
        if self.task is not None and not self.task.done():
            self.task.cancel()


SAMPLE_BYTES = 4096  # what the err port keeps of a record refused for its size
