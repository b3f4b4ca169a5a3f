"""UTF-8 text: each record is a ``str``; invalid UTF-8 goes to err.

Encoding writes a ``str`` as its UTF-8 and ``bytes`` as they are; any other value (and
``{"event", "meta"}`` with ``with_meta: true``) as JSON, bytes inside it as the ``json``
codec writes them (text, or ``{"base64": ...}``).
"""

from __future__ import annotations

from typing import Any

from headrace.contract.codec import Codec, DecodeError
from headrace.plugins.codecs.json import to_json


class StringCodec(Codec):
    name = "string"
    summary = "UTF-8 text; non-string values are encoded as JSON"

    def decode(self, data: bytes) -> Any:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None

    def encode(self, value: Any) -> bytes:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        return to_json(value)
