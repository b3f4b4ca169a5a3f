"""What an onramp refused or cut off (a connection over a cap, a request too slow or too large),
counted in ``headrace_onramp_refused_total`` by reason and logged without flooding the log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

LOG_INTERVAL = 10.0  # seconds between log lines about one kind of flood


class LogEvery:
    """True at most once per ``interval``: for log lines about something that comes in floods."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last = -interval

    def __call__(self) -> bool:
        now = self.clock()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True


class Refusals:
    def __init__(self, component_id: str, metrics: Any, log: logging.Logger) -> None:
        self.component_id = component_id
        self.counter = metrics["headrace_onramp_refused_total"] if metrics is not None else None
        self.log = log
        self.total = 0
        self.due = LogEvery()

    def __call__(self, reason: str, detail: str) -> None:
        self.total += 1
        if self.counter is not None:
            self.counter.labels(self.component_id, reason).inc()
        if self.due():
            self.log.warning("%s: %s (%s; %d refused or cut off so far)", self.component_id, detail, reason, self.total)
