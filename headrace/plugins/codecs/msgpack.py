"""MessagePack values.

``bytes`` (a Kafka key or header value in meta) are written as MessagePack ``bin`` and
read back as ``bytes``: nothing is converted.
"""

from __future__ import annotations

from typing import Any

import msgpack

from headrace.contract.codec import Codec, DecodeError


class MsgpackCodec(Codec):
    name = "msgpack"
    summary = "MessagePack values; malformed or truncated records go to err"
    takes_buffer = True

    def decode(self, data: bytes) -> Any:
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise DecodeError(f"invalid msgpack: {exc}") from None

    def encode(self, value: Any) -> bytes:
        return bytes(msgpack.packb(value, use_bin_type=True))
