"""A memory cgroup for one test: the daemon runs under a real memory limit, killed by the kernel past it."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A fresh cgroup limited to ``limit`` bytes of memory and no swap (cgroup v2, or v1's memory
    hierarchy); skips the test where none can be made (not root, no cgroup file system). What is
    still in it at the end is killed by PID, then it is removed."""
    name = f"headrace-test-{os.getpid()}-{time.monotonic_ns()}"
    if (ROOT / "cgroup.controllers").exists() and "memory" in (ROOT / "cgroup.controllers").read_text().split():
        path, files = ROOT / name, {"memory.max": str(limit), "memory.swap.max": "0"}
    else:
        path, files = ROOT / "memory" / name, {"memory.limit_in_bytes": str(limit), "memory.memsw.limit_in_bytes": str(limit)}
    try:
        path.mkdir()
    except OSError as exc:
        pytest.skip(f"no memory cgroup can be made here ({exc})")
    try:
        for file, value in files.items():
            if (path / file).exists():
                (path / file).write_text(value)
        yield path
    finally:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            path.rmdir()


def joiner(path: Path) -> object:
    """A ``preexec_fn`` that moves the new process (before it runs the program) into the cgroup."""

    def join() -> None:
        (path / "cgroup.procs").write_text(str(os.getpid()))

    return join


def oom_kills(path: Path) -> int:
    """Processes of the cgroup the kernel's OOM killer killed (``oom_kill`` in v2 memory.events, v1 memory.oom_control)."""
    file = path / ("memory.events" if (path / "memory.events").exists() else "memory.oom_control")
    return int(dict(line.split() for line in file.read_text().splitlines()).get("oom_kill", 0))
