"""Raw bytes, unchanged.

Encoding writes ``bytes`` as they are and a ``str`` as its UTF-8; any other value (and
``{"event", "meta"}`` with ``with_meta: true``) as JSON, bytes inside it as the ``json``
codec writes them (text, or ``{"base64": ...}``).
"""

from __future__ import annotations

from typing import Any

from headrace.contract.codec import Codec
from headrace.plugins.codecs.json import to_json


class BinaryCodec(Codec):
    name = "binary"
    summary = "raw bytes, passed through; str values are UTF-8 encoded, others as JSON"
    validates = False

    def decode(self, data: bytes) -> Any:
        return data

    def encode(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        return to_json(value)
