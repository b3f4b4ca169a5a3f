"""Raw bytes, unchanged."""

from __future__ import annotations

from typing import Any

import orjson

from headrace.plugins.base import Codec


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
        return orjson.dumps(value)
