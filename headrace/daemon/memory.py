"""``daemon.memory``: the daemon's resident memory (parent and each worker) against a limit, and
pausing every source above ``max`` until it is back under ``high``.

The limit is the cgroup's (cgroup v2 ``memory.max``, the one systemd's ``MemoryMax=`` sets), else
the machine's memory. ``high`` and ``max`` are shares of it (``80%``) or sizes (``2GiB``). Every
``INTERVAL`` seconds the resident set of each process is read from ``/proc``; above ``max`` the
onramps stop reading (a Kafka one pauses its partitions) and ``/ready`` answers 503; once the sum
is below ``high`` they read again. Without ``daemon.memory`` the gauges are still kept.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headrace.config.model import memory_bound as bound

log = logging.getLogger("headrace.memory")

INTERVAL = 0.5
PAGE = os.sysconf("SC_PAGE_SIZE")


def limit_bytes() -> int:
    """The cgroup v2 memory.max of this process, else the machine's memory."""
    try:
        rel = next(line.split("::", 1)[1].strip() for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
        text = (Path("/sys/fs/cgroup") / rel.lstrip("/") / "memory.max").read_text().strip()
        if text != "max":
            return int(text)
    except (OSError, StopIteration, ValueError):
        pass
    return os.sysconf("SC_PHYS_PAGES") * PAGE


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class MemoryWatch:
    def __init__(self, config: Any, metrics: Any, processes: Callable[[], list[tuple[str, int]]], pause: Callable[[str], None],
                 resume: Callable[[], None], limit: int | None = None, rss: Callable[[int], int] = rss_bytes) -> None:  # fmt: skip
        self.cfg = config
        self.metrics = metrics
        self.processes = processes  # (label, pid): the parent and each live worker
        self.pause = pause
        self.resume = resume
        self.limit = limit if limit is not None else limit_bytes()
        self.high = bound(config.high, self.limit) if config is not None else None
        self.max = bound(config.max, self.limit) if config is not None else None
        self.paused = False
        self.rss = rss
        self.seen: set[str] = set()
        metrics["headrace_memory_limit_bytes"].set(self.limit)

    def sample(self) -> int:
        total = 0
        now: set[str] = set()
        for label, pid in self.processes():
            rss = self.rss(pid)
            total += rss
            now.add(label)
            self.metrics["headrace_memory_rss_bytes"].labels(label).set(rss)
        for gone in self.seen - now:  # a worker replaced under another label: its series goes
            try:
                self.metrics["headrace_memory_rss_bytes"].remove(gone)
            except KeyError:
                pass
        self.seen = now
        if self.max is not None and self.high is not None:
            if not self.paused and total >= self.max:
                self.paused = True
                self.metrics["headrace_memory_paused"].set(1)
                self.pause(f"resident memory {total >> 20} MiB is over daemon.memory.max ({self.max >> 20} MiB of {self.limit >> 20} MiB)")
            elif self.paused and total < self.high:
                self.paused = False
                self.metrics["headrace_memory_paused"].set(0)
                log.warning("resident memory %d MiB is under daemon.memory.high (%d MiB): the sources read again", total >> 20, self.high >> 20)
                self.resume()
        return total
