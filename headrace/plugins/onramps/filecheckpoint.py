"""How far each file a ``file`` onramp follows was delivered, kept across restarts.

A file is known by a fingerprint: its device and inode, and a hash of its first bytes (up to
``HEAD_BYTES``; as many as it had when first seen, so a file that grows keeps its
fingerprint). A renamed file keeps it (rotation by rename is followed); a file truncated and
written again, or a new file at a reused inode, does not match (read from its start).

The delivered offset is the low watermark of done chunks, like a Kafka commit: chunks are
handed on in file order, each ending where a line ends, and the offset moves past a chunk
only when it and every chunk before it are done. It is saved every ``checkpoint_interval``
and on stop, as JSON written to a new file and renamed over the old one (never half-written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("headrace.file")

HEAD_BYTES = 1024  # bytes of a file's start in its fingerprint
MAX_FILES = 256  # fingerprints kept (the most recently moved); older ones are forgotten


def _head(f: IO[bytes], n: int) -> tuple[int, str]:
    """How many of the first ``n`` bytes of an open file there are, and their hash (the position is kept)."""
    at = f.tell()
    f.seek(0)
    head = f.read(n)
    f.seek(at)
    return len(head), hashlib.sha256(head).hexdigest()


def fingerprint(f: IO[bytes]) -> dict[str, Any]:
    """The fingerprint of an open file."""
    st = os.fstat(f.fileno())
    head_len, head = _head(f, HEAD_BYTES)
    return {"dev": st.st_dev, "ino": st.st_ino, "head_len": head_len, "head": head}


def _matches(saved: dict[str, Any], f: IO[bytes]) -> bool:
    st = os.fstat(f.fileno())
    if (saved.get("dev"), saved.get("ino")) != (st.st_dev, st.st_ino) or st.st_size < saved.get("offset", 0):
        return False
    return _head(f, int(saved.get("head_len", 0))) == (saved.get("head_len"), saved.get("head"))


class Checkpoints:
    """The saved offsets of one onramp: ``<state_dir>/file-onramp/<component>.json``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.files: list[dict[str, Any]] = []  # fingerprint + "path" + "offset", most recently moved last
        self.dirty = False
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                self.files = [f for f in data.get("files", []) if isinstance(f, dict)]
            except (OSError, ValueError) as exc:  # a damaged file costs a re-read, not the daemon
                log.error("file onramp: checkpoints %s unreadable (%s); files are read as never seen", path, exc)

    def find(self, f: IO[bytes]) -> dict[str, Any] | None:
        """The saved entry of the open file ``f``, when one matches its fingerprint."""
        for entry in reversed(self.files):
            if _matches(entry, f):
                found: dict[str, Any] = entry
                return found
        return None

    @staticmethod
    def locate(entry: dict[str, Any], folder: Path) -> Path | None:
        """The file of ``entry`` in ``folder`` (same device and inode), wherever it was renamed to."""
        try:
            with os.scandir(folder) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) == (entry.get("dev"), entry.get("ino")) and e.is_file(follow_symlinks=False):
                        return Path(e.path)
        except OSError:
            return None
        return None

    def moved(self, entry: dict[str, Any], offset: int, line: int | None) -> None:
        entry["offset"] = offset
        entry["line"] = line  # the number of the line at offset (None: not known)
        if not self.files or self.files[-1] is not entry:  # most recently moved last; the oldest forgotten
            self.files = [*[e for e in self.files if e is not entry][-(MAX_FILES - 1) :], entry]
        self.dirty = True

    def save(self) -> None:
        if not self.dirty or self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as out:
            json.dump({"version": 1, "files": self.files}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self.dirty = False


class Progress:
    """Chunks of one open file handed on and not yet done; moves its entry's offset in order."""

    def __init__(self, checkpoints: Checkpoints, entry: dict[str, Any]) -> None:
        self.checkpoints = checkpoints
        self.entry = entry
        self.chunks: deque[list[Any]] = deque()  # [end offset, done, self, the number of the line at end]

    def handed(self, end: int, line: int | None = None) -> list[Any]:
        """A token for the chunk of this file that ends at byte ``end`` (where line ``line`` begins)."""
        token = [end, False, self, line]
        self.chunks.append(token)
        return token

    def done(self, token: list[Any]) -> None:
        token[1] = True
        moved = None
        while self.chunks and self.chunks[0][1]:
            moved = self.chunks.popleft()
        if moved is not None:
            self.checkpoints.moved(self.entry, moved[0], moved[3])
