"""JSON through orjson. Nesting deeper than orjson's limit (1024) or ``max_event_depth`` is rejected.

Bytes (a Kafka key or header value in meta, a value a stage made) are written as the text
they hold when they are valid UTF-8, else as ``{"base64": "..."}`` (an object, so that a
text that looks like base64 is never taken for it): ``b"k1"`` -> ``"k1"``, ``b"\\xff\\x00"``
-> ``{"base64": "/wA="}``.

Stages declared ``readonly`` may read records through a lazy, read-only view
(pysimdjson, when installed): parsing builds no Python objects until a field is read,
which is several times cheaper than building the whole dict for a stage that reads
a few fields. Any record simdjson refuses is parsed again with orjson, so what is
accepted, and the reason given for what is not, is the same on both paths.
"""

from __future__ import annotations

import base64
import copyreg
from collections.abc import Callable
from typing import Any

import orjson

from headrace.plugins.base import Codec, DecodeError, ViewLoader

simdjson: Any
try:
    import simdjson
except ImportError:  # optional: readonly stages then get dicts
    simdjson = None

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_REUSE = "re-use a parser"


def text_or_base64(value: bytes | bytearray | memoryview) -> str | dict[str, str]:
    """Bytes as JSON carries them: their text when valid UTF-8, else ``{"base64": ...}``."""
    raw = bytes(value)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def _plain(value: Any) -> Any:
    """orjson's fallback for types it does not know: bytes (see the module doc); lazy views become dicts and lists."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return text_or_base64(value)
    if simdjson is not None:
        if isinstance(value, simdjson.Object):
            return value.as_dict()
        if isinstance(value, simdjson.Array):
            return value.as_list()
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _reduce_object(o: Any) -> tuple[Any, tuple[Any, ...]]:
    return dict, (o.as_dict(),)


def _reduce_array(a: Any) -> tuple[Any, tuple[Any, ...]]:
    return list, (a.as_list(),)


if simdjson is not None:  # a view put into meta crosses the process boundary as a plain value
    copyreg.pickle(simdjson.Object, _reduce_object)
    copyreg.pickle(simdjson.Array, _reduce_array)


class SimdjsonViews:
    """Parses a record into a read-only view; the views of one record stay valid while referenced.

    ``parse`` is the parser's own method (no Python frame per record); what it raises goes to
    ``recover``, which parses the record again (a fresh parser, or orjson) or raises orjson's error.
    """

    errors: tuple[type[Exception], ...] = (ValueError, RuntimeError)  # UnicodeDecodeError is a ValueError

    def __init__(self) -> None:
        assert simdjson is not None
        self.parser = simdjson.Parser()
        self.parse: Callable[[bytes], Any] = self.parser.parse

    def recover(self, raw: bytes, exc: BaseException) -> Any:
        if isinstance(exc, RuntimeError) and _REUSE in str(exc):  # a stage kept a view of an earlier record: that parser stays with it
            self.parser = simdjson.Parser()
            self.parse = self.parser.parse
            try:
                return self.parse(raw)
            except self.errors:
                pass
        return orjson.loads(raw)  # structure, UTF-8, depth, big integers...: orjson decides, with its reason

    def __call__(self, raw: bytes) -> Any:
        try:
            return self.parse(raw)
        except self.errors as exc:
            return self.recover(raw, exc)


class JsonCodec(Codec):
    name = "json"
    summary = "JSON values (orjson); invalid JSON, invalid UTF-8 and over-deep nesting go to err"
    takes_buffer = True

    def decode(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None

    def loader(self) -> tuple[Callable[[Any], Any], tuple[type[Exception], ...]]:
        return orjson.loads, (orjson.JSONDecodeError,)

    def view_loader(self) -> ViewLoader | None:
        return SimdjsonViews() if simdjson is not None else None

    def reason(self, exc: BaseException) -> str:
        if isinstance(exc, orjson.JSONDecodeError):
            return f"invalid JSON: {exc}"
        return super().reason(exc)

    def encode(self, value: Any) -> bytes:
        return to_json(value)


def to_json(value: Any) -> bytes:
    """``value`` as JSON text (bytes as the module doc says), for every codec that writes JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = text_or_base64(value)
    return orjson.dumps(value, default=_plain, option=_OPTS)
