"""JSON through orjson. Nesting deeper than orjson's limit (1024) or ``max_event_depth`` is rejected.

Integers beyond 64 bits are kept exact: orjson would read them as floats, so a record whose
bytes hold a run of 20 or more digits, or a minus sign and 19, is read again with the standard
library's parser (7x slower, and rare: a nanosecond timestamp has 19 digits and fits), and a
value holding such an integer is written with it. A stage thus
sees, and a modified record carries, the integer that came in. Duplicate keys in an object:
the last one wins, as in JavaScript's ``JSON.parse``, Python and Go; a record nobody modified
leaves as its original bytes, duplicates included.

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
import json
from collections.abc import Callable
from typing import Any

import orjson

from headrace.contract.bytesearch import contains
from headrace.contract.codec import Codec, DecodeError, ViewLoader

simdjson: Any
try:
    import simdjson
except ImportError:  # optional: readonly stages then get dicts
    simdjson = None

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
_REUSE = "re-use a parser"
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
# orjson reads integers in int64 and uint64 exactly, others as floats: a positive integer of 19 digits
# always fits (uint64 holds 20), so only 20 digits, or a minus sign and 19, may not (a nanosecond
# timestamp, 19 digits, stays on orjson: read exactly by the standard library instead, 7x slower)
_LONG_RUN = b"0" * 20
_LONG_NEGATIVE = b"-" + b"0" * 19
_BIG_INT = "64-bit range"  # in orjson's refusal to write an integer it cannot hold


def may_hold_big_ints(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` has a run of 20+ digits, or a minus sign and 19 (C passes only; in a string or
    a long fraction it counts too: the careful reading is then only slower)."""
    digits = bytes(data).translate(_DIGITS)
    return contains(digits, _LONG_RUN) or contains(digits, _LONG_NEGATIVE)


def loads_exact(data: bytes | bytearray | memoryview) -> Any:
    """orjson decides what is valid; integers beyond 64 bits come back as integers, not floats."""
    value = orjson.loads(data)
    if may_hold_big_ints(data):
        value = json.loads(bytes(data))
    return value


def dumps_exact(value: Any) -> bytes:
    """What orjson writes; a value holding an integer beyond 64 bits, written by the standard library."""
    try:
        return orjson.dumps(value, default=_plain, option=_OPTS)
    except TypeError as exc:
        if _BIG_INT not in str(exc):
            raise
        return json.dumps(value, default=_plain, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


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
        self.object_type = simdjson.Object

    def recover(self, raw: bytes, exc: BaseException) -> Any:
        if isinstance(exc, RuntimeError) and _REUSE in str(exc):  # a stage kept a view of an earlier record: that parser stays with it
            self.parser = simdjson.Parser()
            self.parse = self.parser.parse
            try:
                return self.parse(raw)
            except self.errors:
                pass
        return loads_exact(raw)  # structure, UTF-8, depth: orjson decides, with its reason; big integers stay exact

    def plain(self, value: Any) -> Any:
        if isinstance(value, simdjson.Object):
            return value.as_dict()
        if isinstance(value, simdjson.Array):
            return value.as_list()
        return value

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
            return loads_exact(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None

    def loader(self) -> tuple[Callable[[Any], Any], tuple[type[Exception], ...]]:
        return loads_exact, (orjson.JSONDecodeError,)

    def validator(self) -> Callable[[Any], Any]:
        return orjson.loads  # validity is orjson's; exactness of big integers does not matter for a check

    def loader_for(self, blob: bytes | memoryview) -> tuple[Callable[[Any], Any], tuple[type[Exception], ...]]:
        # a job whose bytes hold no long digit run (nearly all) is read by orjson alone, with no Python frame per record
        if not may_hold_big_ints(blob):
            return orjson.loads, (orjson.JSONDecodeError,)
        return self.loader()

    def view_loader(self) -> ViewLoader | None:
        return SimdjsonViews() if simdjson is not None else None

    def reason(self, exc: BaseException) -> str:
        if isinstance(exc, orjson.JSONDecodeError):
            return f"invalid JSON: {exc}"
        return super().reason(exc)

    def encode(self, value: Any) -> bytes:
        return to_json(value)

    def fast_encoder(self) -> tuple[Callable[[Any], bytes], tuple[type[Exception], ...]] | None:
        # orjson with no option and no default writes what to_json writes for every value it takes; it
        # refuses (TypeError) the rest: bytes, non-str keys, integers beyond 64 bits, numpy, what needs _plain
        return orjson.dumps, (TypeError,)


def to_json(value: Any) -> bytes:
    """``value`` as JSON text (bytes as the module doc says; integers beyond 64 bits exact), for
    every codec that writes JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = text_or_base64(value)
    return dumps_exact(value)
