"""The one backoff: exponential with jitter, capped, used by every retry in headrace."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.1, maximum: float = 30.0, factor: float = 2.0, jitter: float = 0.2) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next try."""
        base = min(self.initial * self.factor**self.attempt, self.maximum)
        self.attempt += 1
        return base * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.attempt = 0
