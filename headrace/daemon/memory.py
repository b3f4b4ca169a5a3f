"""``daemon.memory``: the daemon's resident memory (parent and each worker) against a limit; above
``high`` every queue bound and every source's reads ahead (Kafka fetches) shrink to a quarter,
and above ``max`` every source pauses until the sum is back under ``high``.

The limit is the cgroup's (cgroup v2 ``memory.max``, the one systemd's ``MemoryMax=`` sets; on a
v1 or hybrid system ``memory.limit_in_bytes``), else the machine's memory. ``high`` and ``max`` are shares of it (``80%``) or sizes (``2GiB``). Every
``INTERVAL`` seconds the resident set of each process is read from ``/proc``; above ``max`` the
onramps stop reading (a Kafka one pauses its partitions), ``/ready`` answers 503 and sd_notify's
STATUS says why; once the sum is below ``high`` they read again (over ``high``, the parent hands
its heap's free pages back once a second, ``malloc_trim``, or they would stay resident). With ``daemon.memory`` set the
reads come every ``BUDGET_INTERVAL`` (50 ms) instead, and sooner (down to 5 ms) while the sum
grows fast toward ``max``: a stage that makes each event 50x larger grows a daemon by over
1 GB/s. What the sources read before they stop still lands, so leave a margin between ``max``
and the limit (the default 90 % of a 300 MiB limit is too tight for such a stage; 65 % holds). The bounds come back once the
sum is under 90 % of ``high``. Without ``daemon.memory`` the gauges are still kept.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headrace.config.model import memory_bound as bound
from headrace.runtime.heap import malloc_trim

log = logging.getLogger("headrace.memory")

INTERVAL = 0.5  # without daemon.memory: only the gauges
BUDGET_INTERVAL = 0.05  # with it, at most this long between reads (one /proc read: ~20 us a process)
MIN_INTERVAL = 0.005  # and at least this long: growing fast toward max, the reads come sooner
TRIM_EVERY = 1.0  # over high, the parent hands freed heap back to the system at most this often
SHRINK = 0.25  # queue bounds and reads ahead above ``high``
PAGE = os.sysconf("SC_PAGE_SIZE")


def limit_bytes(cgroups: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> int:
    """The memory limit of this process's cgroup (v2 ``memory.max``, else v1 ``memory.limit_in_bytes``),
    else the machine's memory."""
    try:
        lines = cgroups.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, rel = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "":  # v2: the unified hierarchy
            found = _read_limit(root / rel.lstrip("/") / "memory.max")
        elif "memory" in controllers.split(","):  # v1 (a hybrid system)
            found = _read_limit(root / "memory" / rel.lstrip("/") / "memory.limit_in_bytes")
        else:
            continue
        if found is not None:
            return found
    return os.sysconf("SC_PHYS_PAGES") * PAGE


def _read_limit(path: Path) -> int | None:
    """A cgroup limit file: None when absent or unlimited (v2 ``max``, v1's page-rounded huge number)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= 1 << 62:
        return None
    return int(text)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class MemoryWatch:
    def __init__(self, config: Any, metrics: Any, processes: Callable[[], list[tuple[str, int]]], pause: Callable[[str], None],
                 resume: Callable[[], None], limit: int | None = None, rss: Callable[[int], int] = rss_bytes,
                 shrink: Callable[[float], None] | None = None) -> None:  # fmt: skip
        self.cfg = config
        self.metrics = metrics
        self.processes = processes  # (label, pid): the parent and each live worker
        self.pause = pause
        self.resume = resume
        self.limit = limit if limit is not None else limit_bytes()
        self.high = bound(config.high, self.limit) if config is not None else None
        self.max = bound(config.max, self.limit) if config is not None else None
        self.paused = False
        self.pressed = False  # bounds shrunk (over high)
        self.shrink = shrink
        self.rss = rss
        self.seen: set[str] = set()
        self.interval = BUDGET_INTERVAL if config is not None else INTERVAL  # until the next sample
        self.last: tuple[float, int] | None = None  # (monotonic time, total) of the last sample
        # freed heap stays resident otherwise: the sum would stay over high after the queues drained, and the sources never read again
        self.trim = malloc_trim
        self.trimmed = 0.0  # when the parent's heap was last trimmed
        metrics["headrace_memory_limit_bytes"].set(self.limit)

    def sample(self) -> int:
        if (self.paused or self.pressed) and time.monotonic() - self.trimmed >= TRIM_EVERY:
            self.trimmed = time.monotonic()
            self.trim()
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
            if self.shrink is not None:
                if total >= self.high:  # every sample: edges a reload added meanwhile shrink too
                    if not self.pressed:
                        log.warning("resident memory %d MiB is over daemon.memory.high (%d MiB): queue bounds and reads ahead shrink to %d%%",
                                    total >> 20, self.high >> 20, SHRINK * 100)  # fmt: skip
                    self.pressed = True
                    self.shrink(SHRINK)
                elif self.pressed and total < self.high * 0.9:
                    self.pressed = False
                    log.warning("resident memory %d MiB is under 90%% of daemon.memory.high: queue bounds restored", total >> 20)
                    self.shrink(1.0)
            if not self.paused and total >= self.max:
                self.paused = True
                self.metrics["headrace_memory_paused"].set(1)
                self.pause(f"resident memory {total >> 20} MiB is over daemon.memory.max ({self.max >> 20} MiB of {self.limit >> 20} MiB)")
            elif self.paused and total < self.high:
                self.paused = False
                self.metrics["headrace_memory_paused"].set(0)
                log.warning("resident memory %d MiB is under daemon.memory.high (%d MiB): the sources read again", total >> 20, self.high >> 20)
                self.resume()
            self._pace(total)
        return total

    def _pace(self, total: int) -> None:
        """The next read comes before the growth seen since the last one could cross a quarter of what is left below ``max``."""
        assert self.max is not None
        now = time.monotonic()
        last, self.last = self.last, (now, total)
        self.interval = BUDGET_INTERVAL
        if last is None or self.paused or now <= last[0] or total <= last[1]:
            return
        rate = (total - last[1]) / (now - last[0])
        self.interval = min(BUDGET_INTERVAL, max(MIN_INTERVAL, (self.max - total) / rate / 4))
