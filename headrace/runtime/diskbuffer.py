"""A disk buffer (``buffer: {type: disk}``): a write-ahead log of batches under
``<state_dir>/buffers/<component>/``.

On an offramp it sits between its queue and its sink: what the offramp is given is encoded as
usual and appended; upstream it counts as done once an fsync covered it (every
``sync_interval``) or the sink took it, whichever comes first, so a slow or dead sink no longer
holds its sources: a Kafka source commits once its records are on disk. A writer takes the
entries in order and writes them to the sink (with the offramp's retry rules). On an onramp it
sits right after framing: a source's read completes once its records are synced (``durable``),
and a feeder hands the entries to the graph. Entries are done in any order; their segments are
freed once every entry before is.

An appended entry waits in memory until the next sync (``write_pending``): the ones the sink
took meanwhile are never written (their upstream was released when it took them), the others
are written to the open segment (4 MiB each, on the buffer's own I/O thread) and fsynced. So a
sink that keeps up costs the disk nothing, and one that falls behind gets every byte it has not
taken written and synced; beyond ``KEEP_BYTES`` waiting in memory, entries are written at once
and the writer reads them back from their segment.

Each entry is one batch: a header (magic, length, xxh3-64 checksum of the body, sequence number)
and the body: the record lengths and ingest times as arrays, the metas pickled, the origin, and
the records back to back (made and checked at memory speed: a pickle of the records and a CRC-32
cost the parent a third of a core at 450 MiB/s). On start the segments are read back in order: a
torn or corrupt tail (a crash in the middle of a write) is cut at the last good entry and
counted; entries the sink had confirmed before the last saved watermark (``written``, saved at
every sync) are skipped, the others written again. Duplicates: what the sink confirmed in the
last ``sync_interval`` before a crash. Loss: what was appended in the last ``sync_interval`` and
neither synced nor taken by the sink; its upstream was not released, so a source that reads
again (Kafka, a followed file) sends it again, one that cannot (a tcp client without an onramp
buffer) has lost it, as it would have in the queue before the buffer.

Full (``max_bytes``): ``when_full: block`` makes the offramp's queue wait (backpressure, as
without a buffer), ``drop_newest`` drops the new batch (counted in
``headrace_buffer_dropped_events_total``) so the other branches of a fan-out go on. A write the
disk refuses (ENOSPC, EFBIG) is cut back, logged, and tried again with backoff: the offramp's
queue waits meanwhile, nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pickle
import struct
from array import array
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xxhash import xxh3_64, xxh3_64_intdigest

from headrace.contract.backoff import Backoff

log = logging.getLogger("headrace.buffer")

MAGIC = 0x32425248  # "HRB2"
HEADER = struct.Struct("<IIQQ")  # magic, body length, xxh3-64 of the body, sequence number of the entry
BODY = struct.Struct("<III")  # records, bytes of pickled metas (0: none), bytes of the origin; then lengths, ingest, metas, origin, records
# a segment is closed once it holds this much (or a quarter of max_bytes, if less): small, so that while the sink
# keeps up, whole segments are written to it and unlinked before any fsync, and their pages never reach the disk
SEGMENT_BYTES = 4 << 20
KEEP_BYTES = 8 << 20  # bodies kept in memory for the writer; beyond, it reads them back from the segment
IOV_MAX = 1024  # buffers one writev takes (Linux)
WRITTEN = "written"  # the watermark file: entries below this sequence number were written to the sink


@dataclass
class Segment:
    path: Path  # named by the sequence number of its first entry
    size: int = 0
    last: int = -1  # sequence number of its last entry (-1: none yet)
    retired_fd: int | None = None  # closed for appends but open until a sync covered it (or it is freed)
    freed: bool = False


@dataclass
class Entry:
    seq: int
    segment: Segment | None  # None until written to one
    offset: int  # of the body in the segment file
    length: int  # of the body (before it is written: about what it will take)
    events: int
    content: Any = None  # what was appended, in memory until written and the sink falls behind (then read back from the segment)
    pending: bool = False  # appended, not handed to ``write_pending`` yet
    synced: bool = False  # an fsync covered it
    finished: bool = False  # done: written to the sink (offramp), or delivered by the graph (onramp)
    then: list[Callable[[], None]] = field(default_factory=list)  # called once it is safe

    @property
    def safe(self) -> bool:
        """On disk (an fsync covered it), or done before one was needed: nothing is lost without it."""
        return self.synced or self.finished

    def when_safe(self, fn: Callable[[], None]) -> None:
        if self.safe:
            fn()
        else:
            self.then.append(fn)

    def _release(self) -> None:
        then, self.then = self.then, []
        for fn in then:
            fn()


class BufferInUse(RuntimeError):
    pass


class DiskBuffer:
    def __init__(self, folder: Path, max_bytes: int, when_full: str, sync_interval: float, metrics: Any, component: str) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.sync_interval = sync_interval
        self.component = component
        self.segment_bytes = max(1 << 16, min(SEGMENT_BYTES, max_bytes // 4))
        self.segments: deque[Segment] = deque()
        self.entries: deque[Entry] = deque()  # appended and not done yet, in order (taken or not)
        self.untaken: deque[Entry] = deque()  # of those, the ones ``take`` has not handed out yet
        self.sync_now = asyncio.Event()  # someone waits for an fsync (``durable``): do it at once
        self.next_seq = 0
        self.written = 0  # every entry below this was written to the sink
        self.saved_written = -1
        self.size = 0  # bytes in segment files
        self.pending: list[Entry] = []  # appended, not written yet (in order)
        self.pending_bytes = 0  # about what those take once written
        self.kept = 0  # bytes of bodies kept in memory
        self.events = 0  # events in ``entries``
        self.fd: int | None = None  # the open segment's file (the last segment)
        self.retired: list[Segment] = []  # earlier segments with appends not yet synced (``retired_fd``): synced if needed, then closed
        self.new_files = False  # a segment was created since the last sync
        self.unsynced: list[Entry] = []
        self.space = asyncio.Event()
        self.space.set()
        self.has_entries = asyncio.Event()
        self.lock_file: Any = None
        # appends are written and freed segments unlinked on a thread of their own, in order: a write
        # waits whenever the journal commits an fsync, and the event loop must not wait with it
        self.io = ThreadPoolExecutor(1, thread_name_prefix=f"buffer-{component}")
        self.append_lock = asyncio.Lock()
        self.appending = False  # a write to the open segment is under way on the I/O thread
        self.refusals = Backoff(0.1, 5.0)
        self.m_bytes = metrics["headrace_buffer_bytes"].labels(component)
        self.m_events = metrics["headrace_buffer_events"].labels(component)
        self.m_dropped = metrics["headrace_buffer_dropped_events_total"].labels(component, "full")
        self.m_torn = metrics["headrace_buffer_torn_total"].labels(component)
        self.m_synced = metrics["headrace_buffer_synced_events_total"].labels(component)

    # -- open: what a previous run left ---------------------------------------------------------
    def open(self) -> None:
        """Lock the folder and read back what is in it (``BufferInUse``: another process holds it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock_file = open(self.folder / "lock", "w")  # noqa: SIM115 - held while the buffer is open
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.lock_file.close()
            raise BufferInUse(f"disk buffer {self.folder} is in use by another process") from exc
        try:
            self.written = int((self.folder / WRITTEN).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self.written = 0
        self.saved_written = self.written
        for path in sorted(self.folder.glob("*.seg")):
            self._read_back(path)
        self.next_seq = max(self.next_seq, self.written)
        for e in self.entries:
            e.synced = True  # on disk already
        self._gauges()
        if self.entries:
            self.has_entries.set()
            log.info("%s: disk buffer holds %d event(s) in %d entries from before; they are handed on first", self.component,
                     self.events, len(self.entries))  # fmt: skip

    def _read_back(self, path: Path) -> None:
        seg = Segment(path)
        data = path.read_bytes()
        at = 0
        while at + HEADER.size <= len(data):
            magic, length, digest, seq = HEADER.unpack_from(data, at)
            body_at = at + HEADER.size
            if magic != MAGIC or body_at + length > len(data) or xxh3_64_intdigest(memoryview(data)[body_at : body_at + length]) != digest:
                break
            events = BODY.unpack_from(data, body_at)[0]
            seg.last = seq
            self.next_seq = seq + 1
            if seq >= self.written:
                e = Entry(seq, seg, body_at, length, events)
                self.entries.append(e)
                self.untaken.append(e)
                self.events += events
            at = body_at + length
        if at < len(data):
            self.m_torn.inc()
            log.error("%s: disk buffer segment %s has a torn or corrupt tail at byte %d of %d (a crash during a write): "
                      "cut there; the entries before it are kept", self.component, path.name, at, len(data))  # fmt: skip
            with open(path, "r+b") as f:
                f.truncate(at)
        seg.size = at
        if seg.last < 0 or seg.last < self.written:  # nothing left to write in it
            path.unlink(missing_ok=True)
            return
        self.segments.append(seg)
        self.size += at

    # -- appending ----------------------------------------------------------------------------
    async def append(self, records: list[bytes], ingest: list[int], metas: Any, origin: str, nbytes: int | None = None) -> Entry | None:
        """Append one batch (``nbytes``: the records' size, when known); the entry (``entry.when_safe``
        runs what waits for it to be safe: synced, or done before), or None when it was dropped (full,
        ``drop_newest``). The entry waits in memory: it is written to a segment at the next sync unless
        the sink took it before (at once while more than ``KEEP_BYTES`` wait in memory)."""
        size = nbytes if nbytes is not None else sum(map(len, records))
        need = HEADER.size + BODY.size + 12 * len(records) + size  # about what its entry takes on disk
        while self.size + self.pending_bytes + need > self.max_bytes and (self.size or self.pending_bytes):
            if self.when_full == "drop_newest":
                self.m_dropped.inc(len(records))
                return None
            self.space.clear()
            await self.space.wait()
        entry = Entry(self.next_seq, None, 0, need, len(records), (records, ingest, metas, origin), pending=True)
        self.next_seq += 1
        self.pending.append(entry)
        self.pending_bytes += need
        self.kept += need
        self.events += len(records)
        self.entries.append(entry)
        self.untaken.append(entry)
        self.has_entries.set()
        self._gauges()
        if self.kept > KEEP_BYTES:  # the sink falls behind: what waits goes to disk now, and is read back from there
            await self.write_pending()
            for e in reversed(self.untaken):
                if self.kept <= KEEP_BYTES // 2:
                    break
                if e.content is not None and e.segment is not None:
                    e.content = None
                    self.kept -= e.length
        return entry

    async def write_pending(self, once: bool = False) -> bool:
        """Write the entries appended since the last call that are not done yet, in order (the ones the
        sink took meanwhile are never written). A write the disk refuses (ENOSPC, EFBIG) is cut back,
        logged and tried again with backoff while appends wait, or (``once``) given up: False."""
        async with self.append_lock:
            todo = [e for e in self.pending if not e.finished]
            self.m_synced.inc(sum(e.events for e in self.pending if e.finished))  # safe already: the sink has them
            for e in self.pending:
                e.pending = False
            self.pending.clear()
            self.pending_bytes = 0
            if not todo:
                return True
            wrote = False
            while todo:
                plan = self._place(todo)
                self.appending = True
                try:
                    await asyncio.get_running_loop().run_in_executor(self.io, _write_plan, plan)
                    wrote = True
                    break
                except OSError as exc:  # cut back every file it grew, wait, try again
                    for seg, fd, _placed, _parts in plan:
                        with contextlib.suppress(OSError):
                            os.ftruncate(fd, seg.size)
                    delay = self.refusals.next()
                    if self.refusals.attempt == 1 or delay >= 5.0 or once:
                        log.error("%s: cannot append to its disk buffer (%s); what feeds it waits and it tries again in %.1fs",
                                  self.component, exc, delay)  # fmt: skip
                    if once:
                        return False
                    await asyncio.sleep(delay)
                    todo = [e for e in todo if not e.finished]  # the sink may have taken some meanwhile: those need no writing
                    plan = []
                finally:
                    self.appending = False
            if wrote and self.refusals.attempt:
                log.warning("%s: its disk buffer takes appends again", self.component)
                self.refusals = Backoff(0.1, 5.0)
            for seg, _fd, placed, _parts in plan:
                for e, length in placed:
                    e.segment = seg
                    e.offset = seg.size + HEADER.size
                    if e.content is not None:
                        self.kept += length - e.length
                    e.length = length
                    seg.size += HEADER.size + length
                    if not seg.freed:
                        self.size += HEADER.size + length
            self.unsynced.extend(todo)
            self._gauges()
            return True

    def _place(self, todo: list[Entry]) -> list[tuple[Segment, int, list[tuple[Entry, int]], list[bytes]]]:
        """Where each entry goes (new segments opened as needed) and what is written there, per file:
        (segment, its file, [(entry, body length)], the headers and bodies back to back)."""
        plan: list[tuple[Segment, int, list[tuple[Entry, int]], list[bytes]]] = []
        at = self.segments[-1].size if self.segments and self.fd is not None else 0
        for e in todo:
            records, ingest, metas, origin = e.content
            parts = _body(records, ingest, metas, origin)
            length = sum(map(len, parts))
            digest = xxh3_64()
            for part in parts:
                digest.update(part)
            if self.fd is None or (at > 0 and at + HEADER.size + length > self.segment_bytes):
                self._segment(e.seq)
                at = 0
            seg = self.segments[-1]
            if not plan or plan[-1][0] is not seg:
                plan.append((seg, self.fd, [], []))  # type: ignore[arg-type]
            plan[-1][2].append((e, length))
            plan[-1][3].append(HEADER.pack(MAGIC, length, digest.intdigest(), e.seq))
            plan[-1][3].extend(parts)
            seg.last = e.seq  # planned: the segment is not freed while this entry may need it
            at += HEADER.size + length
        return plan

    def _segment(self, first: int) -> None:
        """A new open segment, named by the sequence number of its first entry; the one before is
        retired (its file stays open until the next sync covered what needs it)."""
        if self.fd is not None:
            self.segments[-1].retired_fd = self.fd
            self.retired.append(self.segments[-1])
            self.fd = None
        seg = Segment(self.folder / f"{first:020d}.seg")
        self.segments.append(seg)
        self.fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.new_files = True  # the next sync makes the folder's entry of it durable too


    async def sync_forever(self) -> None:
        """Every ``sync_interval`` (at once when ``durable`` waits): fsync what was appended, run what
        waited for it, save the watermark."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sync_now.wait(), self.sync_interval)
            self.sync_now.clear()
            await self.sync()

    async def durable(self, entry: Entry) -> None:
        """Once an fsync covered ``entry`` (one is started now; appends meanwhile share it), or it was done first."""
        if entry.safe:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        entry.when_safe(wake)
        self.sync_now.set()
        await fut

    async def sync(self, once: bool = False) -> None:
        """Write what waits in memory and fsync the segments holding entries not done yet. An entry
        done before (the sink took it) needs neither: its upstream was released then, so a sink that
        keeps up costs the disk what is in flight at each sync, not every byte."""
        await self.write_pending(once)
        if self.unsynced:
            todo, self.unsynced = self.unsynced, []
            retired, self.retired = self.retired, []
            need = {id(e.segment) for e in todo if not e.finished}
            fds = []
            for seg in retired:
                if seg.retired_fd is None:  # freed meanwhile
                    continue
                if id(seg) in need:
                    fds.append(os.dup(seg.retired_fd))
                os.close(seg.retired_fd)
                seg.retired_fd = None
            if self.fd is not None and self.segments and id(self.segments[-1]) in need:
                fds.append(os.dup(self.fd))
            folder, self.new_files = self.new_files, False
            if fds:
                try:
                    await asyncio.get_running_loop().run_in_executor(None, _fsync_each, fds, self.folder if folder else None)
                finally:
                    for fd in fds:
                        os.close(fd)
            else:
                self.new_files = folder  # the folder's entries are synced with the next segment that needs it
            self.m_synced.inc(sum(e.events for e in todo))
            for e in todo:
                e.synced = True
                e._release()
        if self.written != self.saved_written:
            tmp = self.folder / (WRITTEN + ".tmp")
            tmp.write_text(str(self.written))
            os.replace(tmp, self.folder / WRITTEN)
            self.saved_written = self.written

    # -- the writer's side ----------------------------------------------------------------------
    async def take(self) -> tuple[Entry, tuple[list[bytes], list[int], Any, str]]:
        """The oldest entry not handed out yet, and its content (read back from disk if not kept)."""
        while not self.untaken:
            self.has_entries.clear()
            await self.has_entries.wait()
        e = self.untaken.popleft()
        if e.content is not None:
            return e, e.content
        assert e.segment is not None, "an entry's content is dropped only once it is written"
        with open(e.segment.path, "rb") as f:
            f.seek(e.offset)
            body = f.read(e.length)
        return e, _unbody(body)

    def done(self, entry: Entry) -> None:
        """``entry`` was written to the sink or went to err (an offramp's), or its records were
        delivered (an onramp's): in any order; what every entry up to one holds is freed."""
        entry.finished = True
        entry._release()  # done before an fsync covered it: nothing waits for one any more
        if entry.pending:  # never written: it never will be
            entry.pending = False
            self.pending_bytes -= entry.length
        if entry.content is not None:
            self.kept -= entry.length
            entry.content = None
        self.events -= entry.events
        while self.entries and self.entries[0].finished:
            self.written = self.entries.popleft().seq + 1
        while len(self.segments) > 1 and self.segments[0].last < self.written:
            self._free(self.segments.popleft())
        if not self.entries and self.segments and self.segments[-1].last < self.written and self.fd is not None and not self.appending:
            os.close(self.fd)  # everything written: the open segment goes too, the next append starts a fresh one
            self.fd = None
            self._free(self.segments.pop())
        self.space.set()
        self._gauges()

    def _free(self, seg: Segment) -> None:
        """A segment none of whose entries is needed any more: its file goes (closed at once, so that
        the kernel drops its pages instead of writing them back)."""
        self.size -= seg.size
        seg.freed = True
        fd, seg.retired_fd = seg.retired_fd, None
        self.io.submit(_unlink, seg.path, fd)

    @property
    def empty(self) -> bool:
        return not self.entries

    def _gauges(self) -> None:
        self.m_bytes.set(self.size + self.pending_bytes)
        self.m_events.set(self.events)

    async def close(self) -> None:
        if self.lock_file is None:  # not open (or closed already)
            return
        with contextlib.suppress(OSError):
            await self.sync(once=True)  # a disk that refuses it now: what is not written was not acked upstream either
        for seg in self.retired:
            if seg.retired_fd is not None:
                os.close(seg.retired_fd)
                seg.retired_fd = None
        self.retired = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self.entries:  # everything was written: no segment is needed any more
            while self.segments:
                self._free(self.segments.popleft())
            self._gauges()
        await asyncio.get_running_loop().run_in_executor(None, self.io.shutdown)  # the unlinks are done before the lock goes
        self.lock_file.close()
        self.lock_file = None


def _body(records: list[bytes], ingest: list[int], metas: Any, origin: str) -> list[bytes]:
    """An entry's body as parts written with one ``writev`` each (no copy of the records)."""
    meta_blob = pickle.dumps(metas, protocol=5) if metas is not None else b""
    where = origin.encode()
    return [BODY.pack(len(records), len(meta_blob), len(where)), array("I", map(len, records)).tobytes(), array("q", ingest).tobytes(),
            meta_blob, where, *records]  # fmt: skip


def _unbody(body: bytes) -> tuple[list[bytes], list[int], Any, str]:
    n, meta_len, origin_len = BODY.unpack_from(body)
    at = BODY.size
    lengths = array("I")
    lengths.frombytes(body[at : at + 4 * n])
    at += 4 * n
    ingest = array("q")
    ingest.frombytes(body[at : at + 8 * n])
    at += 8 * n
    metas = pickle.loads(body[at : at + meta_len]) if meta_len else None
    at += meta_len
    origin = body[at : at + origin_len].decode()
    at += origin_len
    records = []
    for size in lengths:
        records.append(body[at : at + size])
        at += size
    return records, ingest.tolist(), metas, origin


def _write_all(fd: int, parts: list[bytes]) -> None:
    """Append ``parts`` (``IOV_MAX`` at a time); a short write (a signal, a nearly full disk) goes on with the rest."""
    at = 0
    while at < len(parts):
        group = parts[at : at + IOV_MAX]
        n = os.writev(fd, group)
        want = sum(map(len, group))
        if n < want:
            rest = memoryview(b"".join(group))[n:]
            while rest:
                rest = rest[os.write(fd, rest) :]
        at += IOV_MAX


def _unlink(path: Path, fd: int | None) -> None:
    """A freed segment's file goes; closed at once if still open, so the kernel drops its pages."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.error("cannot remove disk buffer segment %s: %s", path, exc)
    if fd is not None:
        os.close(fd)


def _write_plan(plan: list[tuple[Segment, int, list[tuple[Entry, int]], list[bytes]]]) -> None:
    for _seg, fd, _placed, parts in plan:
        _write_all(fd, parts)


def _fsync_each(fds: list[int], folder: Path | None) -> None:
    for fd in fds:
        os.fsync(fd)
    if folder is not None:
        _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
