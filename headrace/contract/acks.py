"""Delivery tracking: an ``AckRef`` counts the deliveries still owed for one source batch.

The onramp creates one ref per batch it reads (pending = number of events). Every
fan-out adds, every accepted delivery, filter drop or err routing completes one. At
zero the onramp's ``ack(token)`` is called; if any delivery failed, ``fail(token)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headrace.contract.stage import Ev


class AckRef:
    __slots__ = ("_ack", "_fail", "failed", "pending", "token")

    def __init__(self, pending: int, token: Any, ack: Callable[[Any], None], fail: Callable[[Any], None]) -> None:
        self.pending = pending
        self.token = token
        self.failed = False
        self._ack = ack
        self._fail = fail

    def take_share(self, n: int = 1) -> None:
        """``n`` more deliveries are owed (a copy of the event goes somewhere else too)."""
        self.pending += n

    def done(self, n: int = 1) -> None:
        self.pending -= n
        if self.pending == 0:
            (self._fail if self.failed else self._ack)(self.token)


GROUPED = 16  # from this many refs on, equal ones are counted (in C) and settled once each


def add_each(refs: list[AckRef] | None, n: int) -> None:
    """Each ref owes ``n`` more deliveries (a batch of its events goes to ``n`` more places)."""
    if refs is not None and n:
        if len(refs) >= GROUPED:  # a source batch shares one ref: one step per ref, not per event
            for r, k in Counter(refs).items():
                r.pending += n * k
            return
        for r in refs:
            r.pending += n


def done_each(refs: list[AckRef] | None) -> None:
    """One share of each ref is done (a ref listed k times: k shares, settled at once)."""
    if refs is not None:
        if len(refs) >= GROUPED:
            for r, k in Counter(refs).items():
                r.done(k)
            return
        for r in refs:
            r.done()


def fail_each(refs: list[AckRef] | None) -> None:
    """Each ref's share ends in failure: its source is not acked (``Onramp.fail``)."""
    if refs is not None:
        for r in refs:
            r.failed = True
            r.done()


def _complete(shares: list[tuple[AckRef, int]]) -> None:
    for ref, n in shares:
        ref.done(n)


def _complete_failed(shares: list[tuple[AckRef, int]]) -> None:
    for ref, n in shares:
        ref.failed = True
        ref.done(n)


class MergedAck(AckRef):
    """The ref of an event made from events a stage held (a batch, a window).

    It carries the shares the stage kept for those events and completes them when it
    completes itself: delivered, dropped, or failed (then they fail too). It starts
    with one share, like the share an input batch holds for each of its events; the
    chain runner releases it after routing the new event (``fresh`` until then).
    """

    __slots__ = ("fresh",)

    def __init__(self, shares: list[tuple[AckRef, int]]) -> None:
        super().__init__(1, shares, _complete, _complete_failed)
        self.fresh = True


class HeldAcks:
    """The delivery shares a stage keeps for the events it holds past their batch.

    Without them, the source would be acked as soon as the batch an event came in was
    routed, while the event still waits in a window. ``hold(ev)`` for each event kept;
    ``merge()`` for the event made of them.
    """

    __slots__ = ("_shares",)

    def __init__(self) -> None:
        self._shares: dict[int, tuple[AckRef, int]] = {}

    def hold(self, ev: Ev | Any) -> None:
        """Keep a share of ``ev.ack`` (``ev``: an event, or what a stage keeps of one with its ``ack``)."""
        ref = ev.ack
        if ref is None:
            return
        ref.pending += 1
        held = self._shares.get(id(ref))
        self._shares[id(ref)] = (ref, held[1] + 1 if held is not None else 1)

    def merge(self) -> MergedAck:
        """The ack for the event made of the held events; this holder is empty afterwards."""
        ack = MergedAck(list(self._shares.values()))
        self._shares = {}
        return ack
