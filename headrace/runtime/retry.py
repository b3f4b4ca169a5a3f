"""An offramp's failing writes: when one gives up (``retry`` bounds), and the state metrics
(``headrace_offramp_state``, ``headrace_offramp_backoff_seconds``) that show it to an operator."""

from __future__ import annotations

import time
from typing import Any

from headrace.metrics.defs import Metrics


class RetryState:
    def __init__(self, offramp: str, bounds: Any, metrics: Metrics) -> None:
        self.bounds = bounds  # the offramp's RetryConfig, or None: never give up
        self.ok = metrics["headrace_offramp_state"].labels(offramp, "ok")
        self.retrying = metrics["headrace_offramp_state"].labels(offramp, "retrying")
        self.backoff_s = metrics["headrace_offramp_backoff_seconds"].labels(offramp)
        self.ok.set(1)
        self.failing = 0  # writes failed and waiting for their next attempt (several with max_in_flight > 1)
        self.failing_since: float | None = None  # monotonic time the offramp began to fail (None: it does not)

    def failing_for(self) -> float:
        """Seconds the offramp has been failing without a success in between (0: it is not)."""
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    def give_up(self, attempts: int, failing_s: float) -> str | None:
        """Why a batch failing for ``failing_s`` after ``attempts`` writes is not tried again (None: it is)."""
        bound = self.bounds
        if bound is None:
            return None
        if bound.max_attempts is not None and attempts >= bound.max_attempts:
            return f"after {attempts} attempts (retry.max_attempts)"
        if bound.max_elapsed is not None and failing_s >= bound.max_elapsed:
            return f"after {attempts} attempts in {failing_s:.1f}s (retry.max_elapsed {bound.max_elapsed:g}s)"
        return None

    def waiting(self, delay: float, first: bool) -> None:
        """A write failed and waits ``delay`` s (``first``: its first failure): the state is ``retrying``."""
        if first:
            self.failing += 1
            if self.failing_since is None:
                self.failing_since = time.monotonic()
        self.ok.set(0)
        self.retrying.set(1)
        self.backoff_s.set(delay)

    def settled(self) -> None:
        """A write that had failed is settled (written, given up or cancelled): ``ok`` once no other fails."""
        self.failing -= 1
        if not self.failing:
            self.failing_since = None
            self.retrying.set(0)
            self.backoff_s.set(0)
            self.ok.set(1)
