"""InfluxDB line protocol <-> ``{"measurement", "tags", "fields", "timestamp"}``.

``weather,location=us\\ west temp=82.5,ok=true,n=3i,note="a \\"b\\"" 1465839830100400200``
decodes to ``{"measurement": "weather", "tags": {"location": "us west"},
"fields": {"temp": 82.5, "ok": True, "n": 3, "note": 'a "b"'}, "timestamp": 1465839830100400200}``.
Floats are ``float``, ``i``/``u`` integers ``int``; ``timestamp`` is ``None`` when absent.
Escaping follows the InfluxDB documentation: ``\\`` before ``,`` `` `` (and ``=`` in keys
and tag values), ``\\"`` and ``\\\\`` in strings, ``\\\\`` for a backslash.

With ``with_meta: true`` the line gets one more string field, ``meta``: the meta as JSON
(bytes in it as the ``json`` codec writes them: text, or ``{"base64": ...}``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from headrace.contract.codec import Codec, DecodeError
from headrace.plugins.codecs.json import to_json

_MEASUREMENT = re.compile(r"(?:\\.|[^\\, ])+", re.S)
_KEY = re.compile(r"(?:\\.|[^\\,= ])+", re.S)
_STRING = re.compile(r'"((?:\\.|[^"\\])*)"', re.S)
_BARE = re.compile(r"[^, ]+")
_UNESCAPE_NAME = re.compile(r"\\([\\,= ])")
_UNESCAPE_STRING = re.compile(r'\\(["\\])')
_INT = re.compile(r"[+-]?\d+i")
_UINT = re.compile(r"\d+u")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TIMESTAMP = re.compile(r"-?\d+")
_TRUE = frozenset({"t", "T", "true", "True", "TRUE"})
_FALSE = frozenset({"f", "F", "false", "False", "FALSE"})
I64 = 2**63
U64 = 2**64
_KNOWN = frozenset({"measurement", "tags", "fields", "timestamp"})


def _name(m: re.Match[str]) -> str:
    return _UNESCAPE_NAME.sub(r"\1", m.group(0))


def _field_value(raw: str, key: str) -> Any:
    if _FLOAT.fullmatch(raw):
        value = float(raw)
        if not math.isfinite(value):
            raise DecodeError(f"field {key!r}: float {raw} out of range")
        return value
    if _INT.fullmatch(raw):
        n = int(raw[:-1])
        if not -I64 <= n < I64:
            raise DecodeError(f"field {key!r}: integer {raw} out of the int64 range")
        return n
    if _UINT.fullmatch(raw):
        n = int(raw[:-1])
        if n >= U64:
            raise DecodeError(f"field {key!r}: unsigned {raw} out of the uint64 range")
        return n
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise DecodeError(f"field {key!r}: invalid value {raw[:40]!r}")


def parse_line(s: str) -> dict[str, Any]:
    if not s or s[0] in "# ":
        raise DecodeError("empty line or comment" if not s or s[0] == "#" else "line starts with a space")
    m = _MEASUREMENT.match(s)
    if m is None:
        raise DecodeError("missing measurement")
    measurement = _UNESCAPE_NAME.sub(r"\1", m.group(0))
    i, n = m.end(), len(s)
    tags: dict[str, str] = {}
    while i < n and s[i] == ",":
        k = _KEY.match(s, i + 1)
        if k is None or k.end() >= n or s[k.end()] != "=":
            raise DecodeError(f"invalid tag at column {i + 1}")
        v = _KEY.match(s, k.end() + 1)
        if v is None:
            raise DecodeError(f"tag {_name(k)!r} has no value")
        tags[_name(k)] = _name(v)
        i = v.end()
    if i >= n or s[i] != " ":
        raise DecodeError(f"expected a space before the fields at column {i}")
    fields: dict[str, Any] = {}
    sep = " "
    while i < n and s[i] == sep:
        sep = ","
        k = _KEY.match(s, i + 1)
        if k is None or k.end() >= n or s[k.end()] != "=":
            raise DecodeError(f"invalid field at column {i + 1}")
        key = _name(k)
        j = k.end() + 1
        if j < n and s[j] == '"':
            sm = _STRING.match(s, j)
            if sm is None:
                raise DecodeError(f"field {key!r}: unterminated string")
            fields[key] = _UNESCAPE_STRING.sub(r"\1", sm.group(1))
            i = sm.end()
        else:
            bm = _BARE.match(s, j)
            if bm is None:
                raise DecodeError(f"field {key!r} has no value")
            fields[key] = _field_value(bm.group(0), key)
            i = bm.end()
    if not fields:
        raise DecodeError("no fields")
    timestamp = None
    if i < n:
        if s[i] != " ":
            raise DecodeError(f"unexpected {s[i]!r} at column {i}")
        raw = s[i + 1 :]
        if not _TIMESTAMP.fullmatch(raw):
            raise DecodeError(f"invalid timestamp {raw[:40]!r}")
        timestamp = int(raw)
        if not -I64 <= timestamp < I64:
            raise DecodeError("timestamp out of the int64 range")
    return {"measurement": measurement, "tags": tags, "fields": fields, "timestamp": timestamp}


def _escape(s: str, what: str, specials: str) -> str:
    if "\n" in s or "\r" in s:
        raise ValueError(f"influx: line breaks cannot be written in a {what}")
    if not s:
        raise ValueError(f"influx: empty {what}")
    s = s.replace("\\", "\\\\")
    for c in specials:
        s = s.replace(c, "\\" + c)
    return s


def _value(v: Any, key: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if -I64 <= v < I64:
            return f"{v}i"
        if 0 <= v < U64:
            return f"{v}u"
        raise ValueError(f"influx: field {key!r}: integer out of range")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"influx: field {key!r}: {v} cannot be written")
        return repr(v)
    if isinstance(v, str):
        if "\n" in v or "\r" in v:
            raise ValueError(f"influx: field {key!r}: line breaks cannot be written in a string")
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise ValueError(f"influx: field {key!r}: unsupported type {type(v).__name__}")


def format_line(value: Any) -> str:
    if not isinstance(value, dict) or not isinstance(value.get("measurement"), str):
        raise ValueError('influx: expected {"measurement": str, "tags": {...}, "fields": {...}, "timestamp": int}')
    unknown = set(value) - _KNOWN
    if unknown:
        raise ValueError(f"influx: unknown keys {', '.join(sorted(map(str, unknown)))}")
    measurement: str = value["measurement"]
    if measurement.startswith("#"):
        raise ValueError("influx: a measurement starting with # reads as a comment")
    parts = [_escape(measurement, "measurement", ", ")]
    tags = value.get("tags") or {}
    fields = value.get("fields")
    if not isinstance(tags, dict) or not isinstance(fields, dict) or not fields:
        raise ValueError("influx: tags must be a mapping and fields a non-empty mapping")
    for k, v in tags.items():
        if isinstance(v, (dict, list, bool)) or v is None:
            raise ValueError(f"influx: tag {k!r} must be a string or number")
        parts.append("," + _escape(str(k), "tag key", ",= ") + "=" + _escape(str(v), "tag value", ",= "))
    parts.append(" ")
    parts.append(",".join(_escape(str(k), "field key", ",= ") + "=" + _value(v, str(k)) for k, v in fields.items()))
    ts = value.get("timestamp")
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, int) or not -I64 <= ts < I64:
            raise ValueError("influx: timestamp must be an int64 (nanoseconds) or null")
        parts.append(f" {ts}")
    return "".join(parts)


class InfluxCodec(Codec):
    name = "influx"
    summary = "InfluxDB line protocol <-> {measurement, tags, fields, timestamp}; malformed lines go to err"

    def decode(self, data: bytes) -> Any:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
        return parse_line(text)

    def encode(self, value: Any) -> bytes:
        return format_line(value).encode("utf-8")

    def encode_with_meta(self, value: Any, meta: dict[str, Any]) -> bytes:
        if not isinstance(value, dict) or not isinstance(value.get("fields"), dict):
            return self.encode(value)  # says what is wrong with it
        return self.encode({**value, "fields": {**value["fields"], "meta": to_json(meta).decode("utf-8")}})
