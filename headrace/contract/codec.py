"""``Codec``: bytes <-> value, one record at a time (``decode`` may raise ``DecodeError``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from headrace.contract.config import NoConfig, PluginConfig
from headrace.contract.context import PluginContext
from headrace.errors import safe_str


class DecodeError(ValueError):
    """A record that the codec cannot decode; it goes to the onramp's err port."""


class ViewLoader(Protocol):
    """Read-only views of records: ``parse`` is the fast path; whatever it raises (one of
    ``errors``) goes to ``recover``, which returns a value or raises what ``Codec.loader``'s
    function would, so that accepting and refusing are the same as without views."""

    errors: tuple[type[Exception], ...]
    parse: Callable[[bytes], Any]
    object_type: type  # what ``parse`` gives for a record that is an object (a map)

    def recover(self, raw: bytes, exc: BaseException) -> Any: ...

    def plain(self, value: Any) -> Any:
        """``value`` with any view in it turned into dicts and lists (a view stored into meta)."""
        ...

    def __call__(self, raw: bytes) -> Any: ...


class Codec:
    name: ClassVar[str] = ""
    validates: ClassVar[bool] = True  # False: any bytes are a valid record (nothing to check)
    takes_buffer: ClassVar[bool] = False  # True: decode() accepts a memoryview (workers then skip a copy)
    # False: a value a stage made may not survive encode -> decode (a schema drops or refuses fields);
    # workers then hand modified events on as values, not re-encoded in this codec, between stages
    carries_any: ClassVar[bool] = True

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

    def fast_encoder(self) -> tuple[Callable[[Any], bytes], tuple[type[Exception], ...]] | None:
        """A C-level function that encodes most values exactly as ``encode`` does, and the
        exceptions it raises for the others (``encode`` then decides): workers call it with no
        Python frame per record. None: ``encode`` is used."""
        return None

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

    @classmethod
    def settle(cls, config: PluginConfig, context: PluginContext) -> PluginConfig:
        """The config as every instance gets it (workers too), checked against its surroundings when
        the config is loaded (``headrace check`` too): relative paths resolved against the config's
        folder, files read. Raise ``SettingError(key, message)`` for a setting that cannot work.
        Touches no network."""
        return config

    # A codec whose records name something only the parent can look up (a schema registry) says so
    # with ``needs_parent``; the runtime then calls ``open`` once before any record, ``prepare`` in
    # the parent before records are decoded anywhere, and gives each worker job ``shipment`` of its
    # records, which the codec's instance in the worker takes with ``receive``.
    def needs_parent(self) -> bool:
        return False

    async def open(self) -> None:
        """In the parent, once, before any record is written or read (e.g. register the schema it
        writes with). Raising fails the component's start; it may wait (the start is bounded)."""

    async def prepare(self, payloads: Sequence[bytes | None]) -> None:
        """In the parent, before ``payloads`` (records straight from an onramp) are decoded anywhere:
        fetch what decoding them needs. Never raises for a bad record: ``decode`` refuses it later."""

    def shipment(self, payloads: Sequence[bytes | None] | None) -> Any:
        """Picklable, small: what this codec's instance in a worker needs besides its config to
        decode ``payloads`` (None: to encode only). It goes with every job that needs it."""
        return None

    def receive(self, shipment: Any) -> None:
        """In a worker: take a ``shipment`` of the parent's instance (before the job's records)."""

    def reason(self, exc: BaseException) -> str:
        """Why a record did not decode, for its err event (``exc`` may be anything the codec raised)."""
        if isinstance(exc, RecursionError):
            return "nesting too deep"
        if isinstance(exc, DecodeError):
            return safe_str(exc)
        return f"codec {self.name or type(self).__name__} failed: {type(exc).__name__}: {safe_str(exc)}"


