"""``Onramp``: produces records through an ``OnrampSink``; ``finite`` ones end by themselves."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from headrace.contract.config import NoConfig, PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas


class OnrampSink(Protocol):
    """Where an onramp puts what it reads. Both methods wait while the graph is full."""

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None, ack: Any = None, line: int | None = None) -> int | None:
        """A piece of a byte stream, framed by the onramp's preprocessors. ``ack``: a token handed back
        to ``Onramp.ack`` once every record framed from ``data`` is done (at once when it framed to
        none). Meaningful only when ``data`` ends where a record ends (a newline, for ``lines``):
        framing state carried into the next chunk is not covered by this one's token. ``line``: the
        number of the line the first record framed from ``data`` is (1 + the newlines before
        ``data``); when the framing is plain ``lines`` and each newline of ``data`` ended one record,
        the records get ``file_line`` in their meta (else none: never a wrong number). Returns how
        many newlines the framing found in ``data`` when it is plain ``lines`` (else None), so the
        caller can number the next chunk without counting them itself."""

    async def records(
        self, payloads: list[bytes], metas: Metas | None = None, ack: Any = None, group: Any = None,
        refused: dict[int, str] | None = None, wire: tuple[bytes, tuple[bytes, ...]] | None = None,
    ) -> None:
        """Whole records (one message each); ``ack`` is handed back to ``Onramp.ack`` when all are done.
        ``refused`` (index -> reason): records sent to the onramp's ``err`` port (with a sample) instead.
        ``wire``: the same records as (lengths as ``array('I')`` bytes, blobs of them joined), when the
        source has them so anyway; workers then get them without a copy per record."""

    async def end_of_stream(self, meta: dict[str, Any] | None = None, line: int | None = None) -> None:
        """Flush framing state at the end of one stream (a file, a connection); ``meta`` and ``line``
        as for ``chunk`` (the number of the last line, one that had no newline)."""


class Onramp:
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = NoConfig
    summary: ClassVar[str] = ""
    default_preprocessors: ClassVar[tuple[str, ...]] = ()
    example: ClassVar[str] = ""

    def __init__(self, config: Any, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.finite = False
        self.ready = False

    def check(self) -> None:
        """Validate what the model cannot, without touching files, sockets or brokers."""

    async def start(self) -> None:
        """Connect; set ``self.ready`` when intake can begin."""
        self.ready = True

    async def run(self, sink: OnrampSink) -> None:
        """Produce until the source ends (finite) or the task is cancelled."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Release resources; called after ``run`` returned or was cancelled."""

    def ack(self, token: Any) -> None:
        """All events of ``token`` are done."""

    def fail(self, token: Any) -> None:
        """Events of ``token`` could not be delivered (retry is the source's choice)."""

    def read_less(self, factor: float) -> None:
        """Memory pressure (over ``daemon.memory.high``): take at most ``factor`` of the usual amount
        per read (1.0: the usual again). Optional: a source that buffers ahead (Kafka fetches) shrinks."""


