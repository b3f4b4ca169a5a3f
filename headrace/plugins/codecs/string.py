"""UTF-8 text: each record is a ``str``; invalid UTF-8 goes to err."""

from __future__ import annotations

from typing import Any

import orjson

from headrace.plugins.base import Codec, DecodeError


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
        return orjson.dumps(value)
