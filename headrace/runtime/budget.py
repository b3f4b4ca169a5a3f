"""``daemon.error_budget``: when too many of an onramp's records go to ``err`` ports, stop
dead-lettering them and pause the onramp (or stop the daemon).

Every record read counts toward its onramp, every record sent to an ``err`` port toward
the onramp it came from (``Batch.origin``), in one-second buckets over ``window``. While the
budget holds, a dead-lettered record keeps its source unacked for ``window`` (a share of its
ack is held): if the budget trips within that time, those records fail instead (a Kafka
source then commits nothing past the first of them, and reads them again after a restart);
once the budget trips, what its onramp sends to ``err`` fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from headrace.contract.acks import AckRef, add_each, done_each, fail_each

log = logging.getLogger("headrace.budget")


class ErrorBudget:
    def __init__(self, config: Any, metrics: Any, on_trip: Callable[[str, str], None]) -> None:
        self.cfg = config
        self.metrics = metrics
        self.on_trip = on_trip  # (onramp, why): pause it or stop the daemon
        self.buckets: dict[str, deque[list[int]]] = {}  # onramp -> [second, read, errored] per second of the window
        self.tripped: set[str] = set()
        self.held: dict[str, deque[list[AckRef]]] = {}  # onramp -> ack shares held for records sent to err, oldest first

    def _bucket(self, origin: str) -> list[int]:
        now = int(time.monotonic())
        dq = self.buckets.setdefault(origin, deque())
        horizon = now - math.ceil(self.cfg.window)
        while dq and dq[0][0] <= horizon:
            dq.popleft()
        if not dq or dq[-1][0] != now:
            dq.append([now, 0, 0])
        return dq[-1]

    def received(self, origin: str, n: int) -> None:
        self._bucket(origin)[1] += n

    def errored(self, origin: str, acks: list[AckRef] | None, n: int) -> bool:
        """``n`` records of ``origin`` go to an err port. True: the budget is spent and their acks
        failed (the caller sends nothing); False: send them on (a share of their acks is held)."""
        if origin in self.tripped:
            fail_each(acks)
            return True
        self._bucket(origin)[2] += n
        read = sum(b[1] for b in self.buckets[origin])
        bad = sum(b[2] for b in self.buckets[origin])
        if read >= self.cfg.min_events and min(bad, read) > self.cfg.ratio * read:
            self._trip(origin, f"{min(bad, read)} of the {read} records it read in the last {self.cfg.window:g}s went to err ports "
                               f"(error_budget.ratio {self.cfg.ratio:g})")  # fmt: skip
            fail_each(acks)
            return True
        if acks:
            add_each(acks, 1)
            self.held.setdefault(origin, deque()).append(acks)
            asyncio.get_running_loop().call_later(self.cfg.window, self._release, origin, acks)
        return False

    def _release(self, origin: str, acks: list[AckRef]) -> None:
        """``window`` passed without the budget tripping: the held shares are done."""
        held = self.held.get(origin)
        if not held or origin in self.tripped:
            return
        if held[0] is acks:  # they expire in the order they were held
            held.popleft()
        else:
            held.remove(acks)
        done_each(acks)

    def _trip(self, origin: str, why: str) -> None:
        self.tripped.add(origin)
        for acks in self.held.pop(origin, deque()):
            fail_each(acks)
        log.error("onramp %s: error budget exceeded: %s; then: %s", origin, why, self.cfg.then)
        if self.metrics is not None:
            self.metrics["headrace_error_budget_exceeded"].labels(origin).set(1)
        self.on_trip(origin, why)
