"""The offramp runner: encodes, frames and writes batches; retries, partial writes, err routing."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from headrace.config.graph import ComponentSpec
from headrace.contract.acks import done_each
from headrace.contract.backoff import Backoff
from headrace.contract.codec import Codec
from headrace.contract.framing import Postprocessor
from headrace.contract.metas import take, take_metas
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.errors import describe_exception, safe_repr, safe_str
from headrace.metrics.defs import Metrics
from headrace.runtime.batch import Batch, join, joinable
from headrace.runtime.diskbuffer import DiskBuffer
from headrace.runtime.inbox import Inbox
from headrace.runtime.records import check
from headrace.runtime.retry import RetryState
from headrace.runtime.router import Router
from headrace.runtime.runner import Runner
from headrace.runtime.stats import ComponentStats
from headrace.runtime.tap import Tap, feed

log = logging.getLogger("headrace.runtime")

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


class OfframpRunner(Runner):
    def __init__(self, spec: ComponentSpec, plugin: Offramp, codec: Codec, post: list[Postprocessor], inbox: Inbox,
                 stats: ComponentStats, codecs: dict[str, Codec], routers: dict[str, Router], metrics: Metrics,
                 with_meta: bool) -> None:  # fmt: skip
        super().__init__()
        self.name = spec.id
        self.spec = spec
        self.plugin = plugin
        self.codec = codec
        self.post = post
        self.inbox: Inbox = inbox
        self.stats = stats
        self.codecs = codecs
        self.routers = routers
        self.with_meta = with_meta
        self.router: Router | None = None
        self.started = False  # the plugin's start() returned (the engine starts it before ``run``)
        self.latency = metrics["headrace_event_latency_seconds"].labels(spec.id)
        self.retry = RetryState(spec.id, spec.retry, metrics)
        # encoded bytes per event of recent writes: what a batch of events a stage changed (counted
        # at 64 bytes each until encoded) really weighs, so that a joined write stays near COALESCE_BYTES
        self.event_bytes = 64.0
        self.taps: dict[str, list[Tap]] = {}  # "in": live taps of what this offramp is given
        self.buffer: DiskBuffer | None = None  # buffer: {type: disk} (set by the wiring)
        self.framing: SelfFraming | None = None
        if plugin.frames_itself:  # it gets one record per event and frames groups of them itself
            self.framing = plugin.postprocess = SelfFraming(post)

    def encode(self, batch: Batch) -> tuple[list[bytes], list[tuple[int, str]]]:
        """Encoded records (b"" where encoding failed), and the failures with their reasons."""
        name = self.spec.codec
        encode = self.codec.encode
        encode_with_meta = self.codec.encode_with_meta
        payloads, values = batch.payloads, batch.values
        # all(): no None among them (nor b"", which the loop below keeps as it is): 6 ns an item, ``None in`` 22
        if not self.with_meta and payloads is not None and batch.codec == name and all(payloads):
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
        if codec is None:
            return batch
        good, err = check(batch, codec)
        if err is not None:
            self.routers[batch.origin].stats.error("decode", len(err))
            await self.routers[batch.origin].send("err", err)
        return good

    def _take(self, batch: Batch, records: list[bytes], idx: list[int]) -> tuple[Batch, list[bytes]]:
        """The events ``idx`` of ``batch`` (as encoded by this offramp) and their records; no new shares."""
        part = take(records, idx)
        metas = take_metas(batch.metas, idx) if batch.metas is not None else None
        return batch.remade(idx, part, metas, self.spec.codec, share=False), part

    async def reject(self, batch: Batch, records: list[bytes], rejected: list[tuple[int, str]], unencoded: bool = False,
                     extra: dict[str, Any] | None = None) -> tuple[Batch, list[bytes]]:  # fmt: skip
        """Send records the offramp refused for good to its err port; returns the others.

        ``unencoded``: the events could not be encoded: they leave as they came (their value,
        or their bytes in the codec they came in), so that a dead letter gets the event itself;
        else they were refused by the peer: valid records in this offramp's codec. ``extra``:
        more keys of their ``meta.error`` (attempts and last error of a write that gave up).
        """
        bad = dict(rejected)
        self.stats.error("rejected", len(bad))
        reasons = [(i, bad[i]) for i in sorted(bad)]
        kind = "Rejected" if extra is None else "GaveUp"
        if unencoded:
            err = batch.failed(reasons, self.spec.id, kind, extra=extra)
        else:
            err = batch.failed(reasons, self.spec.id, kind, payloads=[records[i] for i, _ in reasons], codec=self.spec.codec, extra=extra)
        done_each(err.acks)  # the err batch took its own shares
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

    def retire(self, routers: dict[str, Router]) -> None:
        super().retire(routers)
        self.routers = routers

    async def release(self) -> None:
        await self.plugin.stop()

    async def run(self) -> None:
        if self.buffer is not None:
            await self._run_buffered(self.buffer)
            return
        depth = max(int(self.plugin.max_in_flight), 1)
        writing: set[asyncio.Task[None]] = set()  # deliveries in flight (at most ``depth``)
        try:
            limit = self.plugin.coalesce_events
            linger = float(self.plugin.linger)
            while (batch := await self.inbox.get()) is not None:
                if linger and writing and len(batch) < limit:  # busy: let more join this write (no latency when idle)
                    await asyncio.sleep(linger)
                if limit:
                    batch = self.coalesce(batch, limit)
                prepared = await self.prepare(batch)  # here, in order: only the writes overlap
                if prepared is None:
                    continue
                if depth == 1:
                    await self.send(*prepared)
                    continue
                while len(writing) >= depth:
                    done, writing = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        t.result()  # a fault of the runner itself ends it, as without pipelining
                # a write starts by handing its records over, before any await: writes reach the sink in inbox order
                writing.add(asyncio.create_task(self.send(*prepared)))
                await asyncio.sleep(0)
            if writing and self.started:  # a sink holding writes until it closes a batch of its own (s3's objects) closes it now
                await self.plugin.flush()
            while writing:
                done, writing = await asyncio.wait(writing)
                for t in done:
                    t.result()
            if self.started:
                await self.plugin.flush()
        finally:
            for t in writing:
                t.cancel()
            await asyncio.gather(*writing, return_exceptions=True)
            for inbox in self.closes:
                inbox.close()

    async def _run_buffered(self, buf: DiskBuffer) -> None:
        """``buffer: {type: disk}``: what the queue gives is encoded and appended to the buffer (done
        upstream once synced); a writer task writes the buffer's entries to the sink in order. At the
        end of the queue (a drain, a reload) the writer goes on until the buffer is empty, unless the
        sink is failing: then what is left stays on disk for the next start."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, buf.open)  # reads back what a previous run left
        except BaseException:
            for inbox in self.closes:
                inbox.close()
            raise
        self.plugin.max_in_flight = 1  # the writer writes one at a time: a sink that gathers writes (s3) must not wait for more
        syncing = asyncio.create_task(buf.sync_forever())
        writer = asyncio.create_task(self._write_buffered(buf))
        try:
            limit = self.plugin.coalesce_events
            while (batch := await self.inbox.get()) is not None:
                for task in (writer, syncing):
                    if task.done():
                        task.result()  # a fault of the writer or the syncer ends the runner
                if limit:
                    batch = self.coalesce(batch, limit)
                prepared = await self.prepare(batch)
                if prepared is None:
                    continue
                batch, records = prepared
                entry = await buf.append(records, batch.ingest, batch.metas, batch.origin,
                                         batch.nbytes if records is batch.payloads else None)  # fmt: skip
                acks = batch.acks
                if entry is None:  # full, drop_newest: dropped (and counted); upstream it is done
                    self.stats.discard("buffer_full", len(batch))
                    done_each(acks)
                elif acks is not None:
                    entry.when_safe(lambda acks=acks: done_each(acks))  # type: ignore[misc]
            await buf.sync()
            while not buf.empty and not writer.done() and not self.retry.failing:
                await asyncio.sleep(0.02)
            if writer.done():
                writer.result()
            elif not buf.empty:
                log.warning("offramp %s: its sink is failing: %d event(s) stay in its disk buffer for the next start", self.spec.id,
                            buf.events)  # fmt: skip
            if self.started and buf.empty:
                await self.plugin.flush()
        finally:
            writer.cancel()
            syncing.cancel()
            await asyncio.gather(writer, syncing, return_exceptions=True)
            await buf.close()
            for inbox in self.closes:
                inbox.close()

    async def _write_buffered(self, buf: DiskBuffer) -> None:
        while True:
            entry, (records, ingest, metas, origin) = await buf.take()
            batch = Batch(payloads=records, metas=metas, ingest=ingest, codec=self.spec.codec, origin=origin, group=origin)  # type: ignore[arg-type]
            await self.send(batch, records)  # retried within the offramp's retry bounds; what it gives up on goes to err
            buf.done(entry)

    def coalesce(self, batch: Batch, limit: int) -> Batch:
        """Join the batches queued behind ``batch`` (same codec and origin) into one write."""
        parts = [batch]
        per = self.event_bytes
        total, nbytes = len(batch), max(batch.nbytes, len(batch) * per)
        while total < limit and nbytes < COALESCE_BYTES:
            nxt = self.inbox.peek()
            if nxt is None or len(nxt) + total > limit or not joinable(batch, nxt):
                break
            parts.append(self.inbox.take())
            total += len(nxt)
            nbytes += max(nxt.nbytes, len(nxt) * per)
        return parts[0] if len(parts) == 1 else join(parts)

    async def prepare(self, batch: Batch) -> tuple[Batch, list[bytes]] | None:
        """Validate and encode; what cannot be written goes to err. The records to write, or None."""
        self.stats.received.inc(len(batch))
        self.stats.received_bytes.inc(batch.nbytes)
        if self.taps:
            feed(self.taps, "in", batch)
        if batch.unchecked and batch.payloads is not None and batch.values is None:
            batch = await self.validate(batch)
            if not len(batch):
                return None
        records, bad = self.encode(batch)
        if records and len(records) == len(batch):
            try:
                size = batch.nbytes if records is batch.payloads else sum(map(len, records))  # the payloads' size is known
                self.event_bytes = 0.5 * self.event_bytes + 0.5 * size / len(records)
            except TypeError:  # not all bytes (a plugin's own records): keep the last estimate
                pass
        if bad:  # an event this codec cannot carry goes to the offramp's err port with the reason
            log.error("offramp %s: %d event(s) could not be encoded: %s", self.spec.id, len(bad), bad[0][1])
            batch, records = await self.reject(batch, records, bad, unencoded=True)
            if not len(batch):
                return None
        return batch, records

    async def send(self, batch: Batch, records: list[bytes]) -> None:
        """Write until the peer confirmed (retries with backoff, within the offramp's ``retry``
        bounds, after which the records go to err), then count and ack."""
        backoff = Backoff(maximum=self.spec.retry.max_backoff if self.spec.retry is not None else 30.0)
        attempts = 0
        first_failure: float | None = None
        gave_up: dict[str, Any] | None = None
        try:
            while True:
                attempts += 1
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
                    now = time.monotonic()
                    first_failure = now if first_failure is None else first_failure
                    if (why := self.retry.give_up(attempts, now - first_failure)) is not None:
                        last = f"{type(cause).__name__}: {cause}"
                        log.error("offramp %s: write of %d event(s) failed %s; to err: %s", self.spec.id, n, why, last)
                        rejected = [(i, f"gave up {why}: {last}") for i in range(n)]
                        gave_up = {"attempts": attempts, "last_error": last}
                        break
                    delay = backoff.next()
                    self.retry.waiting(delay, first=backoff.attempt == 1)
                    log.error("offramp %s: write of %d event(s) failed, retrying in %.1fs: %s", self.spec.id, n, delay, cause)
                    await asyncio.sleep(delay)
                    continue
                break
        finally:
            if backoff.attempt:
                self.retry.settled()
        if rejected:
            batch, records = await self.reject(batch, records, rejected, extra=gave_up)
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


COALESCE_BYTES = 4 << 20  # a joined offramp write holds at most about this much
