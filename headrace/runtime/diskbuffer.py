"""A disk buffer (``buffer: {type: disk}``): a write-ahead log of batches under
``<state_dir>/buffers/<component>/``.

On an offramp it sits between its queue and its sink: what the offramp is given is encoded as
usual and appended; upstream it counts as done once an fsync covered it (every
``sync_interval``) or the sink took it, whichever comes first, so a slow or dead sink no longer
holds its sources: a Kafka source commits once its records are on disk. A writer takes the entries in order and writes them to the sink
(with the offramp's retry rules). On an onramp it sits right after framing: a source's read
completes once its records are synced (``durable``), and a feeder hands the entries to the
graph. Entries are done in any order; their segments are freed once every entry before is.

Each entry is one batch: a header (magic, length, xxh3-64 checksum of the body, sequence number)
and the body: the record lengths and ingest times as arrays, the metas pickled, the origin, and
the records back to back (made and checked at memory speed: a pickle of the records and a CRC-32
cost the parent a third of a core at 450 MiB/s). On start the segments are
read back in order: a torn or corrupt tail (a crash in the middle of a write) is cut at the last
good entry and counted; entries the sink had confirmed before the last saved watermark
(``written``, saved at every sync) are skipped, the others written again. Duplicates: what the
sink confirmed in the last ``sync_interval`` before a crash. Loss: what was appended but not yet
synced when the machine (not the process) went down; a SIGKILL of the daemon loses nothing the
daemon had appended, since the page cache survives it.

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


@dataclass
class Entry:
    seq: int
    segment: Segment
    offset: int  # of the body in the segment file
    length: int
    events: int
    content: Any = None  # what was appended, kept in memory while there is room (else read back from the segment)
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
        self.kept = 0  # bytes of bodies kept in memory
        self.events = 0  # events in ``entries``
        self.fd: int | None = None  # the open segment's file (the last segment)
        self.retired: list[tuple[Segment, int]] = []  # earlier segments' files with appends not yet synced: synced if needed, then closed
        self.new_files = False  # a segment was created since the last sync
        self.unsynced: list[Entry] = []
        self.space = asyncio.Event()
        self.space.set()
        self.has_entries = asyncio.Event()
        self.lock_file: Any = None
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
        runs what waits for it to be safe: synced, or done before), or None when it was dropped (full, ``drop_newest``)."""
        if self.when_full == "drop_newest" and self.size > 0 and self.size + (nbytes if nbytes is not None else sum(map(len, records))) > self.max_bytes:
            self.m_dropped.inc(len(records))  # full for certain: dropped before anything is made of it
            return None
        parts = _body(records, ingest, metas, origin)
        length = sum(map(len, parts))
        need = HEADER.size + length
        while self.size + need > self.max_bytes and self.size > 0:
            if self.when_full == "drop_newest":
                self.m_dropped.inc(len(records))
                return None
            self.space.clear()
            await self.space.wait()
        digest = xxh3_64()
        for part in parts:
            digest.update(part)
        header = HEADER.pack(MAGIC, length, digest.intdigest(), self.next_seq)
        while True:
            seg = self._segment(need)  # again after a wait: the writer may have freed the open segment meanwhile
            try:
                _write_all(self.fd, [header, *parts])  # type: ignore[arg-type]
                break
            except OSError as exc:  # the disk is full (ENOSPC) or the file too large (EFBIG): cut back, wait, try again
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, seg.size)  # type: ignore[arg-type]
                    os.lseek(self.fd, seg.size, os.SEEK_SET)  # type: ignore[arg-type]
                delay = self.refusals.next()
                if self.refusals.attempt == 1 or delay >= 5.0:
                    log.error("%s: cannot append to its disk buffer (%s); what feeds it waits and it tries again in %.1fs",
                              self.component, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
        if self.refusals.attempt:
            log.warning("%s: its disk buffer takes appends again", self.component)
            self.refusals = Backoff(0.1, 5.0)
        entry = Entry(self.next_seq, seg, seg.size + HEADER.size, length, len(records))
        if self.kept + length <= KEEP_BYTES:
            entry.content = (records, ingest, metas, origin)
            self.kept += length
        seg.size += need
        seg.last = self.next_seq
        self.size += need
        self.next_seq += 1
        self.events += len(records)
        self.entries.append(entry)
        self.untaken.append(entry)
        self.unsynced.append(entry)
        self.has_entries.set()
        self._gauges()
        return entry

    def _segment(self, need: int) -> Segment:
        seg = self.segments[-1] if self.segments else None
        if seg is None or self.fd is None or (seg.size > 0 and seg.size + need > self.segment_bytes):
            if self.fd is not None:
                if self.unsynced:  # the next sync covers it (if still needed) before it is closed
                    self.retired.append((self.segments[-1], self.fd))
                else:
                    os.close(self.fd)
                self.fd = None
            seg = Segment(self.folder / f"{self.next_seq:020d}.seg")
            self.segments.append(seg)
            self.fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.new_files = True  # the next sync makes the folder's entry of it durable too
        return seg

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

    async def sync(self) -> None:
        """fsync the segments holding appended entries that are not done yet. An entry done before
        (the sink took it) needs none: its upstream was released then, and a segment whose every
        entry is done is unlinked before its pages are written back, so a sink that keeps up costs
        the disk only what is in flight at each sync."""
        if self.unsynced:
            todo, self.unsynced = self.unsynced, []
            retired, self.retired = self.retired, []
            need = {id(e.segment) for e in todo if not e.finished}
            fds = [os.dup(fd) for seg, fd in retired if id(seg) in need]
            for _, fd in retired:
                os.close(fd)
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
        with open(e.segment.path, "rb") as f:
            f.seek(e.offset)
            body = f.read(e.length)
        return e, _unbody(body)

    def done(self, entry: Entry) -> None:
        """``entry`` was written to the sink or went to err (an offramp's), or its records were
        delivered (an onramp's): in any order; what every entry up to one holds is freed."""
        entry.finished = True
        entry._release()  # done before an fsync covered it: nothing waits for one any more
        if entry.content is not None:
            self.kept -= entry.length
            entry.content = None
        self.events -= entry.events
        while self.entries and self.entries[0].finished:
            self.written = self.entries.popleft().seq + 1
        while len(self.segments) > 1 and self.segments[0].last < self.written:
            self._free(self.segments.popleft())
        if not self.entries and self.segments and self.segments[-1].last < self.written and self.fd is not None and not self.unsynced:
            os.close(self.fd)  # everything written: the open segment goes too, the next append starts a fresh one
            self.fd = None
            self._free(self.segments.pop())
        self.space.set()
        self._gauges()

    def _free(self, seg: Segment) -> None:
        """A segment none of whose entries is needed any more: its file goes."""
        self.size -= seg.size
        seg.path.unlink(missing_ok=True)

    @property
    def empty(self) -> bool:
        return not self.entries

    def _gauges(self) -> None:
        self.m_bytes.set(self.size)
        self.m_events.set(self.events)

    async def close(self) -> None:
        if self.lock_file is None:  # not open (or closed already)
            return
        with contextlib.suppress(OSError):
            await self.sync()
        for _, fd in self.retired:
            os.close(fd)
        self.retired = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not self.entries:  # everything was written: no segment is needed any more
            while self.segments:
                self._free(self.segments.popleft())
            self._gauges()
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
