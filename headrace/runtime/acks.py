"""Delivery tracking: an ``AckRef`` counts the deliveries still owed for one source batch.

The onramp creates one ref per batch it reads (pending = number of events). Every
fan-out adds, every accepted delivery, filter drop or err routing completes one. At
zero the onramp's ``ack(token)`` is called; if any delivery failed, ``fail(token)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class AckRef:
    __slots__ = ("_ack", "_fail", "failed", "pending", "token")

    def __init__(self, pending: int, token: Any, ack: Callable[[Any], None], fail: Callable[[Any], None]) -> None:
        self.pending = pending
        self.token = token
        self.failed = False
        self._ack = ack
        self._fail = fail

    def done(self, n: int = 1) -> None:
        self.pending -= n
        if self.pending == 0:
            (self._fail if self.failed else self._ack)(self.token)


def add_each(refs: list[AckRef] | None, n: int) -> None:
    if refs is not None and n:
        for r in refs:
            r.pending += n


def done_each(refs: list[AckRef] | None) -> None:
    if refs is not None:
        for r in refs:
            r.done()


def fail_each(refs: list[AckRef] | None) -> None:
    if refs is not None:
        for r in refs:
            r.failed = True
            r.done()
