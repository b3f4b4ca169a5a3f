"""``type: file``: read a file (plain, gzip or xz, by content), optionally following it like ``tail -F``.

With ``follow: true`` the onramp remembers how far the file was delivered (``checkpoint``, on
by default) under ``daemon.state_dir`` and resumes after the last delivered line when the
daemon restarts; the file is recognised by device, inode and a hash of its first bytes, so a
rotation by rename is followed and a truncated or replaced file is read from its start. A
SIGKILL delivers again at most what was delivered in the last ``checkpoint_interval``. A file
read once (no ``follow``) is read whole every run. A glob in ``path`` reads every match (in name
order), or follows each (new matches are picked up as they appear).

Each record's meta holds ``file_path`` (the file it was read from: a rotated file's new name
while its rest is read) and, with the default ``lines`` framing, ``file_line`` (its line number,
blank lines counted; kept in the checkpoint, so a resumed file goes on counting). A dead letter
carries both as ``error.file: {path, line}``. Where a number cannot be known (a file followed
from its end, a checkpoint written before lines were counted, a line too long for the framing
in the chunk) the record has no ``file_line``: never a wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import gzip
import logging
import lzma
import os
from pathlib import Path
from typing import IO, Any, Literal, cast

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.paths import SettingError, check_file_path, check_folder_path
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration, Size
from headrace.plugins.onramps.filecheckpoint import Checkpoints, Progress, fingerprint

log = logging.getLogger("headrace.file")
CARRY_MAX = 64 << 20  # a line this long without a newline is handed on untracked


class FileOnrampConfig(PluginConfig):
    path: str = Field(description="file to read, relative to the config file's folder; a glob (`logs/*.log`, `**` too) reads every "
                                  "file that matches (read once: in name order; followed: each on its own, new matches picked up every "
                                  "poll_interval, a renamed file that still matches not read twice)")
    follow: bool = Field(False, description="keep reading appended data and follow rotation (tail -F); never ends")
    read_size: Size = Field(256 * 1024, ge=1, description="bytes per read")
    poll_interval: Duration = Field(0.25, gt=0, description="with follow: how often to look for new data")
    checkpoint: bool = Field(True, description="with follow: remember in daemon.state_dir how far the file was delivered and resume "
                                               "there after a restart (needs the default lines framing)")
    read_from: Literal["beginning", "end"] = Field("beginning", description="with follow: where to start a file found at start-up that "
                                                                            "has no checkpoint (a rotated-in file is always read whole)")
    checkpoint_interval: Duration = Field(1.0, gt=0, description="how often checkpoints are saved (also on stop): a SIGKILL may "
                                                                 "deliver again what was delivered in the last interval")


def open_any(path: str) -> IO[bytes]:
    """Open plain, gzip or xz by the file's magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if magic == b"\xfd7zXZ\x00":
        return cast(IO[bytes], lzma.open(path, "rb"))
    return open(path, "rb")


GLOB_CHARS = frozenset("*?[")


def is_glob(path: str) -> bool:
    return any(c in GLOB_CHARS for c in path)


class FileOnramp(Onramp):
    name = "file"
    Config = FileOnrampConfig
    summary = "read files (plain, gzip or xz; a glob reads every match); follow: true tails them and follows rotation; meta file_path, file_line"
    default_preprocessors = ("lines",)
    example = "{type: file, codec: json, config: {path: data/logs.ndjson}}"

    def __init__(self, config: FileOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.path = str(context.resolve(config.path))
        self.pattern = is_glob(config.path)
        self.finite = not config.follow
        self.file: IO[bytes] | None = None
        self.checkpoint = config.follow and config.checkpoint
        folder = context.state_dir / "file-onramp" if context.state_dir is not None else None
        self.checkpoint_path = folder / f"{context.component_id}.json" if folder is not None and self.checkpoint else None
        self.checkpoints = Checkpoints(None)  # read when ``run`` begins: at a reload, after the onramp it replaces saved its own
        self.checkpoints_read = False
        self.followers: dict[str, _Follower] = {}  # path -> what follows the file there (a glob: one per match)
        self.finished: dict[tuple[int, int], int] = {}  # (device, inode) -> size of files read to their end (rotated away)

    def check(self) -> None:
        if self.pattern:
            check_folder_path("path", Path(self.path).parent)  # the folder of the pattern; the matches come and go
        else:
            check_file_path("path", Path(self.path))
        framing = self.context.framing
        if self.checkpoint and framing and framing != ("lines",):
            raise SettingError("checkpoint", f"resuming needs records that end at a newline (preprocessors: [lines]), not "
                                             f"{list(framing)}; set checkpoint: false to read the file from its start after a restart")

    async def start(self) -> None:
        """A file read once must exist now (start-up fails naming it otherwise); a followed one may appear later."""
        if not self.cfg.follow and self.file is None and not self.pattern:
            self.file = open_any(self.path)
        self.ready = True

    def matches(self) -> list[str]:
        return sorted(p for p in glob.glob(self.path, recursive=True) if os.path.isfile(p))

    async def run(self, sink: OnrampSink) -> None:
        if not self.cfg.follow:
            paths = self.matches() if self.pattern else [self.path]
            if not paths:
                log.warning("file onramp %s: no file matches %s", self.context.component_id, self.path)
            for path in paths:
                f = self.file if (self.file is not None and not self.pattern) else open_any(path)
                self.file = None
                meta = {"file_path": path}
                line: int | None = 1
                with f:
                    while chunk := f.read(self.cfg.read_size):
                        found = await sink.chunk(chunk, meta, line=line)
                        line = line + found if line is not None and found is not None else None  # the framing counted them
                await sink.end_of_stream(meta, line)  # a last line without its newline: not joined to the next file's first
            return
        if not self.checkpoints_read:  # a source restarted after a failure keeps what it knows (at least what was saved)
            self.checkpoints, self.checkpoints_read = Checkpoints(self.checkpoint_path), True
        saver = asyncio.create_task(self._save_every()) if self.checkpoint else None
        try:
            if not self.pattern:
                await _Follower(self, self.path, sink, glob=False).follow()
            else:
                await self._scan(sink)
        finally:
            if saver is not None:
                saver.cancel()

    async def _scan(self, sink: OnrampSink) -> None:
        """``path`` is a glob: follow every file that matches it, each with its own framing, new
        matches looked for every ``poll_interval``; a file being read under another name (renamed
        by a rotation to a name that matches too) is not read twice."""
        tasks: dict[str, asyncio.Task[None]] = {}
        first = True
        try:
            while True:
                reading = {f.inode for f in self.followers.values() if f.inode is not None}
                for path in self.matches():
                    if path in tasks:
                        continue
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue
                    if (st.st_dev, st.st_ino) in reading or self.finished.get((st.st_dev, st.st_ino)) == st.st_size:
                        continue  # being read under its old name, or read to its end before it was renamed
                    follower = _Follower(self, path, sink.stream(), glob=True, first=first)  # type: ignore[attr-defined]
                    self.followers[path] = follower
                    tasks[path] = asyncio.create_task(follower.follow())
                first = False
                for path, task in list(tasks.items()):
                    if task.done():
                        del tasks[path]
                        self.followers.pop(path, None)
                        task.result()
                await asyncio.sleep(self.cfg.poll_interval)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def stop(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.checkpoint:
            self._save()

    async def _save_every(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.checkpoint_interval)
            self._save()

    def _save(self) -> None:
        try:
            self.checkpoints.save()
        except OSError as exc:
            log.error("file onramp %s: cannot save checkpoints (%s); a restart may read again what was delivered", self.context.component_id, exc)

    def ack(self, token: Any) -> None:
        token[2].done(token)

    def fail(self, token: Any) -> None:  # the runtime already sent those records to err or the last-resort file
        token[2].done(token)


class _Follower:
    """Follows the file at one path (``tail -F``): its rotations, its checkpoint, its line count.
    ``glob``: one match of a pattern, which ends once no file is at its path any more."""

    def __init__(self, onramp: FileOnramp, path: str, sink: OnrampSink, glob: bool, first: bool = True) -> None:
        self.onramp = onramp
        self.cfg = onramp.cfg
        self.checkpoints = onramp.checkpoints
        self.checkpoint = onramp.checkpoint
        self.component = onramp.context.component_id
        self.path = path
        self.sink = sink
        self.glob = glob
        self.first = first  # read_from applies to files found at start-up only; later ones (rotation, new matches) are read whole
        self.inode: tuple[int, int] | None = None  # (device, inode) of the file being read
        self.progress: Progress | None = None
        self.carry = b""  # the bytes after the last newline read (checkpoints: handed on with their line)
        self.reading = path  # the file being read (a rotated one is read to its end under its new name)
        self.line: int | None = 1  # the number of the next line handed on (None: unknown, after a resume from an old checkpoint)

    async def follow(self) -> None:
        sink = self.sink
        f: Any = None
        ino = None
        try:
            if self.checkpoint:
                await self._catch_up(sink)
            while True:
                if f is None:
                    try:
                        f = open(self.path, "rb")  # noqa: SIM115 - held across iterations
                        st = os.fstat(f.fileno())
                        ino, self.inode = st.st_ino, (st.st_dev, st.st_ino)
                    except FileNotFoundError:
                        if self.glob:
                            return  # gone: the scan follows it again should it come back
                        await asyncio.sleep(self.cfg.poll_interval)
                        continue
                    self.reading, self.line = self.path, 1
                    self.progress = self._resume(f, self.first) if self.checkpoint else None
                    if self.first and not self.checkpoint and self.cfg.read_from == "end":
                        f.seek(0, os.SEEK_END)
                        self.line = None
                    self.first = False
                chunk = f.read(self.cfg.read_size)
                if chunk:
                    await self._hand(sink, chunk, f.tell())
                    continue
                await asyncio.sleep(self.cfg.poll_interval)
                try:
                    st = os.stat(self.path)
                except FileNotFoundError:
                    if self.glob:  # renamed away or deleted: read to its end, and this follower ends
                        await self._finish(sink, f)
                        return
                    continue
                if st.st_ino != ino or st.st_size < f.tell():  # rotated or truncated: finish and reopen
                    await self._finish(sink, f)
                    f.close()
                    f = None
        finally:
            if f is not None:
                f.close()

    async def _catch_up(self, sink: OnrampSink) -> None:
        """Files rotated away (renamed in the same folder) while the daemon was down: the rest of
        each, found by its fingerprint, before the file now at the path."""
        try:
            here = os.stat(self.path)
            now = (here.st_dev, here.st_ino)
        except FileNotFoundError:
            now = None
        for entry in list(self.checkpoints.files):
            if entry.get("path") != self.path or (entry.get("dev"), entry.get("ino")) == now:
                continue
            moved = self.checkpoints.locate(entry, Path(self.path).parent)
            if moved is None:
                continue
            with open(moved, "rb") as f:
                if self.checkpoints.find(f) is not entry:
                    continue
                log.info("file onramp %s: reading the rest of %s (rotated from %s) from byte %d", self.component, moved,
                         self.path, entry["offset"])  # fmt: skip
                f.seek(entry["offset"])
                self.carry = b""
                self.reading, self.line = str(moved), entry.get("line")
                self.progress = Progress(self.checkpoints, entry)
                await self._finish(sink, f)
                entry["path"] = str(moved)  # done with it: it is no longer the file at the path

    async def _finish(self, sink: OnrampSink, f: IO[bytes]) -> None:
        """Hand on the rest of ``f`` (a file rotated away, or cut short), a last line without its
        newline included, and end its stream."""
        while chunk := f.read(self.cfg.read_size):
            await self._hand(sink, chunk, f.tell())
        if self.carry:
            await self._hand(sink, b"\n", f.tell())
        await sink.end_of_stream({"file_path": self.reading}, self.line)
        with contextlib.suppress(OSError, ValueError):
            st = os.fstat(f.fileno())
            done = self.onramp.finished
            done[(st.st_dev, st.st_ino)] = f.tell()
            while len(done) > 1024:  # the oldest are forgotten
                del done[next(iter(done))]

    def _resume(self, f: IO[bytes], first: bool) -> Progress:
        """Where to read ``f`` from: after what was delivered of it before, or (never seen) ``read_from``."""
        entry = self.checkpoints.find(f)
        if entry is not None:
            f.seek(entry["offset"])
            self.line = entry.get("line")  # None: a checkpoint written before lines were counted
            log.info("file onramp %s: resuming %s at byte %d", self.component, self.path, entry["offset"])
        else:
            entry = {**fingerprint(f), "path": self.path, "offset": 0, "line": 1}
            if first and self.cfg.read_from == "end":
                entry["offset"] = f.seek(0, os.SEEK_END)
                entry["line"] = self.line = None  # where "end" was is not counted in lines
            self.checkpoints.moved(entry, entry["offset"], entry["line"])
        self.carry = b""
        return Progress(self.checkpoints, entry)

    async def _hand(self, sink: OnrampSink, data: bytes, end: int) -> None:
        """Hand on ``data`` (the file's bytes up to ``end``); with checkpoints, up to its last newline
        with a token for that offset (the rest waits for the next read)."""
        meta = {"file_path": self.reading}
        if self.progress is None:
            found = await sink.chunk(data, meta, line=self.line)
            self.line = self.line + found if self.line is not None and found is not None else None  # the framing counted them
            return
        buf = self.carry + data if self.carry else data
        cut = buf.rfind(b"\n") + 1
        if not cut and len(buf) < CARRY_MAX:
            self.carry = buf
            return
        if not cut:  # a line longer than CARRY_MAX: handed on untracked (its framing bounds it)
            self.carry = b""
            await sink.chunk(buf, meta)
            self.line = None  # (the framing refuses it: where the count stands is not known)
            return
        self.carry = buf[cut:]
        line = self.line
        if line is not None:  # counted here, not by the framing: the checkpoint's token holds the number before the chunk goes
            self.line = line + buf.count(b"\n", 0, cut)
        await sink.chunk(buf[:cut], meta, ack=self.progress.handed(end - len(self.carry), self.line), line=line)

