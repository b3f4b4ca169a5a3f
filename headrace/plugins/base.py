"""The small contracts every plugin implements.

- ``Codec``: bytes <-> value, one record at a time (``decode`` may raise ``DecodeError``).
- ``Preprocessor``: a stream of chunks -> records (framing, decompression); stateful.
- ``Postprocessor``: records -> chunks to write (framing, compression).
- ``Onramp``: produces records through an ``OnrampSink``; ``finite`` ones end by themselves.
- ``Offramp``: accepts encoded records; returning from ``write`` means the peer confirmed them
  (what "confirmed" is, each offramp's docstring says); ``PartialWrite`` when only some were.
- ``Operator`` (in ``headrace.runtime.stage``): processes a batch of events.

Each plugin class names a pydantic ``Config`` model; its docs and schema come from it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from headrace.errors import safe_str

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


class PluginConfig(BaseModel):
    """Base of every plugin's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoConfig(PluginConfig):
    pass


class DecodeError(ValueError):
    """A record that the codec cannot decode; it goes to the onramp's err port."""


@dataclass
class PluginContext:
    """What a plugin may know about its surroundings."""

    component_id: str
    base_dir: Path  # folder of the config file; relative paths resolve here
    max_event_depth: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p


class ViewLoader(Protocol):
    """Read-only views of records: ``parse`` is the fast path; whatever it raises (one of
    ``errors``) goes to ``recover``, which returns a value or raises what ``Codec.loader``'s
    function would, so that accepting and refusing are the same as without views."""

    errors: tuple[type[Exception], ...]
    parse: Callable[[bytes], Any]

    def recover(self, raw: bytes, exc: BaseException) -> Any: ...

    def __call__(self, raw: bytes) -> Any: ...


class Codec:
    name: ClassVar[str] = ""
    validates: ClassVar[bool] = True  # False: any bytes are a valid record (nothing to check)
    takes_buffer: ClassVar[bool] = False  # True: decode() accepts a memoryview (workers then skip a copy)

    Config: ClassVar[type[PluginConfig]] = NoConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: PluginConfig | None = None, context: PluginContext | None = None) -> None:
        self.config = config or self.Config()
        self.max_depth = context.max_event_depth if context else 1024

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> bytes:
        """One record. Raise (any exception) for a value this codec cannot carry: it goes to the
        offramp's err port with the reason. Every codec writes every meta value a built-in onramp
        produces (``bytes`` included; how, its page says)."""
        raise NotImplementedError

    def encode_with_meta(self, value: Any, meta: dict[str, Any]) -> bytes:
        """The event and its meta as one record (an offramp's ``with_meta: true``): by default
        ``{"event": value, "meta": meta}``; codecs whose records cannot nest override it."""
        return self.encode({"event": value, "meta": meta})

    def loader(self) -> tuple[Callable[[Any], Any], tuple[type[Exception], ...]]:
        """A function equivalent to ``decode`` and the exceptions it raises for bad input; codecs
        with a C-level parser return it here so workers call it with no Python frame per record."""
        return self.decode, (DecodeError,)

    def validator(self) -> Callable[[Any], Any]:
        """A function that raises for a record ``decode`` would refuse; its result is not used
        (records going straight from an onramp to an offramp are checked, not decoded)."""
        return self.loader()[0]

    def loader_for(self, blob: bytes | memoryview) -> tuple[Callable[[Any], Any], tuple[type[Exception], ...]]:
        """``loader()`` for the records of ``blob`` (a worker job): a codec may pick a faster
        function when it can tell from the whole blob at once that it suffices."""
        return self.loader()

    def view_loader(self) -> ViewLoader | None:
        """A loader of read-only views for stages that never modify events (``readonly``), or
        None. Views only need to be read (``[]``, ``get``, ``in``, iteration, ``len``)."""
        return None

    def reason(self, exc: BaseException) -> str:
        """Why a record did not decode, for its err event (``exc`` may be anything the codec raised)."""
        if isinstance(exc, RecursionError):
            return "nesting too deep"
        if isinstance(exc, DecodeError):
            return safe_str(exc)
        return f"codec {self.name or type(self).__name__} failed: {type(exc).__name__}: {safe_str(exc)}"


class Preprocessor:
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = NoConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config or self.Config()

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        """Append complete records from ``chunk`` to ``out``; malformed input to ``rejected``."""
        raise NotImplementedError

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        """End of stream: flush what is left."""

    def has_pending(self) -> bool:
        """Input was kept back to bound the output of one call (a decompressor); ``resume`` gives more."""
        return False

    def resume(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        """Continue on input kept back by ``feed`` (called while ``has_pending``)."""

    def whole_message(self) -> None:
        """This instance frames one whole message (an HTTP body, a datagram), not a stream."""


class Postprocessor:
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = NoConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config or self.Config()

    def process(self, records: list[bytes]) -> list[bytes]:
        raise NotImplementedError


class OnrampSink(Protocol):
    """Where an onramp puts what it reads. Both methods wait while the graph is full."""

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """A piece of a byte stream, framed by the onramp's preprocessors."""

    async def records(
        self, payloads: list[bytes], metas: list[dict[str, Any]] | None = None, ack: Any = None, group: Any = None,
        refused: dict[int, str] | None = None, wire: tuple[bytes, tuple[bytes, ...]] | None = None,
    ) -> None:
        """Whole records (one message each); ``ack`` is handed back to ``Onramp.ack`` when all are done.
        ``refused`` (index -> reason): records sent to the onramp's ``err`` port (with a sample) instead.
        ``wire``: the same records as (lengths as ``array('I')`` bytes, blobs of them joined), when the
        source has them so anyway; workers then get them without a copy per record."""

    async def end_of_stream(self) -> None:
        """Flush framing state at the end of one stream (a file, a connection)."""


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

    def __init__(self, config: Any, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self.on_done: Callable[[], Awaitable[None]] | None = None  # blackhole stops the daemon
        self.postprocess: Callable[[list[bytes]], list[bytes]] = lambda records: records

    def check(self) -> None:
        """Validate what the model cannot, without touching files, sockets or brokers."""

    async def start(self) -> None:
        pass

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
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
