"""``Offramp``: accepts encoded records; returning from ``write`` means the peer confirmed them
(what "confirmed" is, each offramp's docstring says); ``PartialWrite`` when only some were."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from headrace.contract.config import NoConfig, PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas

Rejections = list[tuple[int, str]] | None


class PartialWrite(Exception):
    """Raised by ``Offramp.write`` when the peer confirmed some records of the batch and not others.

    ``delivered`` (event indexes) count as accepted (acked, never written again);
    ``rejected`` (``(index, reason)``) go to the offramp's ``err`` port like a returned
    rejection; every other record is written again with the runtime's backoff, or goes to
    ``err`` if ``Offramp.retryable(cause)`` says no. ``cause`` is why the rest failed.
    """

    def __init__(self, cause: BaseException, delivered: Iterable[int] = (), rejected: Rejections = None) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.delivered = sorted(set(delivered))
        self.rejected = list(rejected or [])


class Offramp:
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = NoConfig
    summary: ClassVar[str] = ""
    default_postprocessors: ClassVar[tuple[str, ...]] = ()
    example: ClassVar[str] = ""
    # True: ``write`` gets one record per event and frames groups itself with ``self.postprocess``
    frames_itself: ClassVar[bool] = False
    # queued batches the runtime may join into one write, up to this many events (0: one write
    # per batch). For sinks whose cost is per write (a produce round trip), not per record.
    coalesce_events: ClassVar[int] = 0
    # True: ``write`` also takes ``nbytes=``, the total length of ``chunks`` when the runtime
    # knows it (else None), so a sink that only counts need not touch every record
    takes_nbytes: ClassVar[bool] = False
    # writes the runtime may have in flight at once (each awaiting its confirmation), started in
    # inbox order. >1 only for a sink that keeps the order of what it was handed (Kafka: per
    # partition) and whose acks may complete out of order; a failed write is retried while later
    # ones may already be confirmed (at least once: order can differ only after a failure).
    max_in_flight: int = 1
    # seconds a write waits for more queued events to join it, when fewer than coalesce_events
    # are queued and another write is still in flight (so an idle sink adds no latency): small
    # writes (jobs of a slow stage) become fewer, larger ones. 0: never waits.
    linger: float = 0.0

    def __init__(self, config: Any, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.postprocess: Callable[[list[bytes]], list[bytes]] = lambda records: records

    def check(self) -> None:
        """Validate what the model cannot, without touching files, sockets or brokers."""

    async def start(self) -> None:
        pass

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        """Deliver; return only once the peer confirmed every record not rejected (acks flow upstream).

        Raise to fail the whole batch: it is retried with backoff (``retryable`` decides).
        Raise ``PartialWrite`` when some records were confirmed and others not: only the
        others are retried. Return ``[(index, reason), ...]`` for records rejected for good
        (too large, refused by the peer): they go to the offramp's ``err`` port and the rest
        counts as delivered.
        """
        raise NotImplementedError

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failed write is tried again (default: yes; the batch waits, nothing is acked)."""
        return True

    async def flush(self) -> None:
        pass

    async def stop(self) -> None:
        pass
