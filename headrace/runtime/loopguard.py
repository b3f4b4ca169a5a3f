"""Measures how long stages on the event loop hold it, and the loop's own lag.

A stage that holds the loop longer than the threshold is named in a warning (at most
once per stage per minute) that suggests ``placement: workers``, and the time is
counted in ``headrace_loop_blocked_seconds_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

log = logging.getLogger("headrace.loopguard")
T = TypeVar("T")


class LoopGuard:
    def __init__(self, threshold: float, on_blocked: Callable[[str, float], None] | None = None) -> None:
        self.threshold = threshold
        self.on_blocked = on_blocked
        self._last_warn: dict[str, float] = {}
        self.lag_samples: list[float] = []

    def report(self, component_id: str, seconds: float) -> None:
        if seconds < self.threshold:
            return
        if self.on_blocked:
            self.on_blocked(component_id, seconds)
        now = time.monotonic()
        if now - self._last_warn.get(component_id, -1e9) >= 60:
            self._last_warn[component_id] = now
            log.warning(
                "stage %s held the event loop for %.0f ms (threshold %.0f ms); if it is CPU-bound, "
                "make it a plain def or set placement: workers",
                component_id, seconds * 1000, self.threshold * 1000,
            )  # fmt: skip

    def timed(self, component_id: str, awaitable: Awaitable[T]) -> Awaitable[T]:
        return _Timed(awaitable, self, component_id)

    async def measure_lag(self, interval: float, observe: Callable[[float], None]) -> None:
        """Runs forever: a timer every ``interval``; its delay beyond schedule is the loop lag."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(loop.time() - start - interval, 0.0)
            observe(lag)
            self.lag_samples.append(lag)
            if len(self.lag_samples) > 4096:
                del self.lag_samples[:2048]


class _Timed:
    """Wraps an awaitable and times each synchronous step it takes on the loop."""

    __slots__ = ("aw", "cid", "guard")

    def __init__(self, aw: Awaitable[Any], guard: LoopGuard, cid: str) -> None:
        self.aw = aw
        self.guard = guard
        self.cid = cid

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self.aw.__await__()
        send: Any = None
        throw: BaseException | None = None
        while True:
            t0 = time.perf_counter()
            try:
                y = it.throw(throw) if throw is not None else it.send(send)
            except StopIteration as stop:
                self.guard.report(self.cid, time.perf_counter() - t0)
                return stop.value
            except BaseException:
                self.guard.report(self.cid, time.perf_counter() - t0)
                raise
            self.guard.report(self.cid, time.perf_counter() - t0)
            send, throw = None, None
            try:
                send = yield y
            except BaseException as exc:
                throw = exc
