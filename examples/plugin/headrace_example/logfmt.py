"""``codec: logfmt``: ``key=value`` pairs separated by spaces (``level=info msg="disk full"``).

Decoding gives a flat object of strings. Encoding writes an object's keys in order; nested
objects are flattened with dotted keys (``meta.kafka.key=...``), values holding a space, a
quote, ``=`` or nothing are quoted with ``\\"`` and ``\\\\`` escapes, bytes are written as
UTF-8 text when valid, else as ``base64:...``, and any other value as its JSON. With ``with_meta: true`` a record reads
``event.level=info meta.kafka.topic=logs ...`` (the default ``encode_with_meta`` nests the
two; ``encode`` flattens them).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from headrace.contract import Codec, DecodeError


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode("ascii")
    return json.dumps(value, separators=(",", ":"), default=_text)


def _quote(text: str) -> str:
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _pairs(value: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, item in value.items():
        name = f"{prefix}{key}"
        if not name or any(c in name for c in ' "=\n\t'):
            raise ValueError(f"logfmt cannot write the key {name!r}")
        if isinstance(item, dict):
            out += _pairs(item, name + ".")
        else:
            out.append(f"{name}={_quote(_text(item))}")
    return out


ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "t": "\t"}


class LogfmtCodec(Codec):
    name = "logfmt"
    summary = "key=value pairs (flat object of strings); nested objects written with dotted keys"

    def decode(self, data: bytes) -> Any:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 at byte {exc.start}") from None
        out: dict[str, str] = {}
        i, n = 0, len(text)
        while i < n:
            if text[i] == " ":
                i += 1
                continue
            eq = text.find("=", i)
            end = text.find(" ", i)
            if eq < 0 or (0 <= end < eq):
                raise DecodeError(f"column {i + 1}: a key without '=value'")
            key, i = text[i:eq], eq + 1
            if i < n and text[i] == '"':
                chars, i = [], i + 1
                while True:
                    if i >= n:
                        raise DecodeError(f"unterminated quote in the value of {key!r}")
                    c = text[i]
                    if c == '"':
                        i += 1
                        break
                    if c == "\\":
                        if i + 1 >= n or text[i + 1] not in ESCAPES:
                            raise DecodeError(f"column {i + 1}: unknown escape in the value of {key!r}")
                        chars.append(ESCAPES[text[i + 1]])
                        i += 2
                        continue
                    chars.append(c)
                    i += 1
                value = "".join(chars)
                if i < n and text[i] != " ":
                    raise DecodeError(f"column {i + 1}: text after the closing quote of {key!r}")
            else:
                end = text.find(" ", i)
                end = n if end < 0 else end
                value, i = text[i:end], end
            out[key] = value
        return out

    def encode(self, value: Any) -> bytes:
        if not isinstance(value, dict):
            raise TypeError(f"logfmt writes objects, not {type(value).__name__}")
        return " ".join(_pairs(value)).encode("utf-8")
