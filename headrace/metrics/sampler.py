"""Periodic gauges, sampled once a second off the hot path.

- ``headrace_worker_busy_ratio{worker}``: the CPU time a worker reported for its jobs
  over the last interval, divided by the wall time of that interval.
- ``headrace_worker_occupied_ratio{worker}``: the same with the wall time each job was in
  the worker's hands (read to answered): what it lacks of 1 is the time the worker waited
  for work; what it has above the busy ratio, the time it waited for a core.
- the totals sample behind the per-component rates of ``/status`` (``rates.py``).

Both read what the runtime already keeps (``WorkerPool.busy()``, the registry); nothing
here adds work per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from headrace.metrics.rates import tracker_for
from headrace.metrics.source import DaemonView

log = logging.getLogger("headrace.metrics")


class BusyRatio:
    """Turns cumulative busy nanoseconds per worker into the busy share of the last interval."""

    def __init__(self, gauge: Any, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.gauge = gauge
        self.clock = clock
        self.prev_at = 0
        self.prev: list[int] | None = None
        self.ratios: dict[str, float] = {}

    def sample(self, busy: list[int] | None) -> dict[str, float]:
        now = self.clock()
        if busy is None:
            self.prev = None
            return self.ratios
        if self.prev is None or len(self.prev) != len(busy) or now <= self.prev_at:
            ratios = dict.fromkeys(map(str, range(len(busy))), 0.0)  # a baseline: no interval yet
        else:
            wall = now - self.prev_at
            ratios = {str(i): min(max((b - p) / wall, 0.0), 1.0) for i, (b, p) in enumerate(zip(busy, self.prev, strict=True))}
        for worker, ratio in ratios.items():
            self.gauge.labels(worker).set(ratio)
        self.prev, self.prev_at, self.ratios = list(busy), now, ratios
        return ratios


async def run_sampler(daemon: DaemonView, interval: float = 1.0) -> None:
    """Runs until cancelled; a failing sample is logged (once) and never stops the daemon."""
    busy = BusyRatio(daemon.metrics["headrace_worker_busy_ratio"])
    occupied = BusyRatio(daemon.metrics["headrace_worker_occupied_ratio"])
    rates = tracker_for(daemon)
    rates.interval = interval
    failed = False
    while True:
        try:
            pool = daemon.workers
            busy.sample(pool.busy() if pool is not None else None)
            occupied.sample(pool.occupied() if pool is not None else None)
            rates.sample(daemon.metrics)
        except Exception:
            if not failed:
                log.exception("sampling metrics failed; will keep trying")
            failed = True
        await asyncio.sleep(interval)
