"""``type: file``: write records to files, flushed per batch; optional path template and rotation.

``path`` may hold placeholders: ``{meta.KEY}`` (a metadata value) and strftime codes such
as ``%Y-%m-%d`` (the write time, UTC). Every file is confined to ``root`` (default: the
folder of the first placeholder-free part of the path): a value with ``/``, ``..``, a NUL
byte, an absolute path, or a path that resolves outside ``root`` through a symlink is
refused, and that record goes to the offramp's ``err`` port with the reason.

Rotation: when a file reaches ``rotate_bytes`` or is older than ``rotate_interval``, it is
renamed ``NAME.1`` (older ones shift to ``.2`` ...; ``keep`` are kept) and a new one starts.
A file renamed or deleted by someone else (logrotate without ``copytruncate``) is noticed
at the next write to it (its path no longer names the open file) and opened again.

**Confirmed** means: ``write`` and ``flush`` to the file returned (``fsync: true``: and
``fsync`` returned, so the records survive a power loss). What a failure does depends on
the error, per file of a templated path (the other files of the batch are written once):

- an error that the same path will always give goes to the ``err`` port with the reason:
  a name too long (``ENAMETOOLONG``), a folder where the file should be (``EISDIR``), a
  file where a folder should be (``ENOTDIR``, ``EEXIST``), a symlink (``ELOOP``), a name the
  file system refuses (``EINVAL``, ``EILSEQ``), a device without a reader (``ENXIO``);
- any other error (disk full ``ENOSPC``, quota ``EDQUOT``, ``EFBIG`` from a file size
  limit, ``EIO``, no permission ``EACCES``/``EPERM``, a read-only file system ``EROFS``,
  too many open files ``EMFILE``) is retried with backoff: an operator can fix them while
  the records wait, unacked. A partly written record is cut off before the retry.
"""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.paths import check_file_path, check_folder_path
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.units import Duration, Size

_PLACEHOLDER = re.compile(r"\{meta\.([A-Za-z_][A-Za-z0-9_]*)\}")


class FileOfframpConfig(PluginConfig):
    path: str = Field(description="file to write, relative to the config file's folder; may hold {meta.KEY} and %Y-%m-%d")
    mode: Literal["append", "truncate"] = Field("append", description="append to an existing file, or start it empty")
    fsync: bool = Field(False, description="fsync after each batch (slow; survives power loss)")
    root: str | None = Field(None, description="every file written must be inside this folder (default: the path's fixed leading folder)")
    rotate_bytes: Size | None = Field(None, ge=1, description="rotate a file when it reaches this size")
    rotate_interval: Duration | None = Field(None, gt=0, description="rotate a file when it is older than this")
    keep: int = Field(5, ge=0, le=10_000, description="rotated files kept per path (NAME.1 ... NAME.keep)")
    max_open: int = Field(64, ge=1, description="files kept open at once (least recently used closed first)")


# errors that opening or writing the same path gives again however often it is tried
PERMANENT_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ELOOP, errno.EINVAL,
                              errno.EILSEQ, errno.ENXIO})  # fmt: skip


class PathRefused(ValueError):
    pass


def permanent(exc: BaseException) -> bool:
    """Whether writing the same path again cannot help (the records go to err)."""
    return isinstance(exc, PathRefused) or (isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS)


def _reason(path: Path, exc: BaseException) -> str:
    if not isinstance(exc, OSError) or not exc.strerror:
        return f"refused: {exc}"
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
    return f"cannot write {path}: {exc.strerror}{where}"


class OpenFile:
    __slots__ = ("dev", "f", "ino", "opened", "path", "size")

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        self.f = f
        self.size = f.tell()
        self.opened = time.monotonic()
        st = os.fstat(f.fileno())
        self.dev, self.ino = st.st_dev, st.st_ino

    def replaced(self) -> bool:
        """Whether the path no longer names this open file (renamed or deleted by someone else)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != (self.dev, self.ino)


class FileOfframp(Offramp):
    name = "file"
    Config = FileOfframpConfig
    summary = "write records to files (lines by default): path templates confined to a root, rotation by size or age"
    default_postprocessors = ("lines",)
    example = '{type: file, codec: json, config: {path: "out/{meta.kafka_topic}/%Y-%m-%d.ndjson", rotate_bytes: 64MiB, keep: 10}}'
    frames_itself = True

    def __init__(self, config: FileOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.path = context.resolve(config.path)  # for a template: the unexpanded template, resolved
        self.templated = bool(_PLACEHOLDER.search(config.path)) or "%" in config.path
        fixed = _PLACEHOLDER.split(config.path)[0].split("%")[0]
        # the fixed leading folder: "out/{meta.x}/f" -> out, "out/x-{meta.y}" -> out, "{meta.x}.log" -> the config's folder
        default_root = context.resolve(fixed[: fixed.rfind("/") + 1]) if self.templated else context.resolve(config.path).parent
        self.root = (context.resolve(config.root) if config.root else default_root).resolve()
        self.files: dict[Path, OpenFile] = {}
        self.truncated: set[Path] = set()

    def check(self) -> None:
        if "\0" in self.cfg.path:
            raise ValueError("path contains a NUL byte")
        if not self.templated:
            self._confine(self.path)
            check_file_path("path", self.path)
        else:
            check_folder_path("root" if self.cfg.root else "path", self.root)

    def _confine(self, path: Path) -> Path:
        """``path`` made absolute and checked to lie inside ``root`` (symlinks resolved)."""
        resolved = Path(os.path.realpath(path))
        if resolved != self.root and self.root not in resolved.parents:
            raise PathRefused(f"path {path} is outside the root {self.root}")
        return resolved

    def path_for(self, meta: dict[str, Any]) -> Path:
        if not self.templated:
            return self.path

        def value(m: re.Match[str]) -> str:
            v = meta.get(m.group(1))
            if v is None:
                raise PathRefused(f"meta key '{m.group(1)}' of the path template is missing")
            text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            if not text or "/" in text or "\\\\" in text or "\0" in text or text in (".", "..") or text.startswith("~"):
                raise PathRefused(f"meta key '{m.group(1)}' = {text!r} cannot be a path part")
            return text

        text = time.strftime(_PLACEHOLDER.sub(lambda m: value(m).replace("%", "%%"), self.cfg.path), time.gmtime())
        if "\0" in text or os.path.isabs(text):
            raise PathRefused(f"path {text!r} is absolute or holds a NUL byte")
        return self.context.resolve(text)

    def _open(self, path: Path) -> OpenFile:
        of = self.files.pop(path, None)
        if of is not None:
            if not of.replaced():
                self.files[path] = of  # last in the dict: the most recently used
                return of
            of.f.close()  # rotated away or deleted: records would go to a file nobody reads
        real = self._confine(path)
        real.parent.mkdir(parents=True, exist_ok=True)
        real = self._confine(real)  # a symlink planted in between is caught here
        truncate = self.cfg.mode == "truncate" and real not in self.truncated
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if truncate else os.O_APPEND)
        fd = os.open(real, flags, 0o644)
        self.truncated.add(real)
        of = OpenFile(real, os.fdopen(fd, "ab" if not truncate else "wb"))
        if len(self.files) >= self.cfg.max_open:
            oldest = next(iter(self.files))  # the least recently used
            self.files.pop(oldest).f.close()
        self.files[path] = of
        return of

    def _rotate_if_due(self, path: Path, of: OpenFile) -> OpenFile:
        cfg = self.cfg
        due = (cfg.rotate_bytes is not None and of.size >= cfg.rotate_bytes) or (
            cfg.rotate_interval is not None and time.monotonic() - of.opened >= cfg.rotate_interval)  # fmt: skip
        if not due:
            return of
        of.f.close()
        del self.files[path]
        real = of.path
        if cfg.keep == 0:
            real.unlink(missing_ok=True)
        else:
            for i in range(cfg.keep - 1, 0, -1):
                older = real.with_name(f"{real.name}.{i}")
                if older.exists():
                    os.replace(older, real.with_name(f"{real.name}.{i + 1}"))
            os.replace(real, real.with_name(f"{real.name}.1"))
        self.truncated.add(real)  # the new file starts empty anyway
        return self._open(path)

    async def start(self) -> None:
        if not self.templated:
            self._open(self.path)

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        rejected: list[tuple[int, str]] = []
        groups: dict[Path, list[int]] = {}
        for i in range(len(chunks)):
            try:
                path = self.path_for(metas[i] if metas is not None else {})
            except PathRefused as exc:
                rejected.append((i, str(exc)))
                continue
            groups.setdefault(path, []).append(i)
        delivered: list[int] = []
        failure: OSError | None = None
        for path, idx in groups.items():
            try:
                self._write_file(path, [chunks[i] for i in idx])
            except (PathRefused, OSError) as exc:
                if permanent(exc):
                    rejected.extend((i, _reason(path, exc)) for i in idx)
                    continue
                assert isinstance(exc, OSError)
                failure = failure or exc  # the other files are still written: a retry repeats only this one
                continue
            delivered += idx
        if failure is not None:
            if not delivered and not rejected:
                raise failure
            raise PartialWrite(failure, delivered, rejected)
        return rejected or None

    def _write_file(self, path: Path, records: list[bytes]) -> None:
        of = self._rotate_if_due(path, self._open(path))
        data = b"".join(self.postprocess(records))
        try:
            of.f.write(data)
            of.f.flush()
            if self.cfg.fsync:
                os.fsync(of.f.fileno())
        except OSError:
            self._undo(path, of)  # no torn record is left behind; the retry writes it whole
            raise
        of.size += len(data)

    def _undo(self, path: Path, of: OpenFile) -> None:
        self.files.pop(path, None)
        try:
            of.f.close()
        except OSError:
            pass  # the buffered tail could not be written either: it is cut off below
        try:
            os.truncate(of.path, of.size)
        except OSError:
            pass

    async def stop(self) -> None:
        for of in self.files.values():
            of.f.close()
        self.files.clear()
