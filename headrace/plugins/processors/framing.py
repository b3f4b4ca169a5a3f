"""Length-prefixed framing: each record is a 4-byte big-endian length, then that many bytes.

A declared length over ``max_frame_bytes`` is rejected at once and the stream is marked
broken (after a bad length nothing in the stream can be trusted): the frame is never
buffered. A frame cut short by the end of the stream is rejected too.
"""

from __future__ import annotations

import struct

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.contract.units import Size

SAMPLE = 1024
HEADER = 4
MAX_FRAME = 2**32 - 1
_LEN = struct.Struct(">I")


class LengthPrefixedConfig(PluginConfig):
    max_frame_bytes: Size = Field(16 * 2**20, ge=0, le=MAX_FRAME, description="a longer declared length breaks the stream (rest dropped)")


class LengthPrefixedPreprocessor(Preprocessor):
    name = "length-prefixed"
    Config = LengthPrefixedConfig
    summary = "split a stream of 4-byte big-endian length-prefixed frames; oversized or truncated frames go to err"

    def __init__(self, config: LengthPrefixedConfig | None = None) -> None:
        super().__init__(config)
        cfg: LengthPrefixedConfig = self.config  # type: ignore[assignment]
        self.max = cfg.max_frame_bytes
        self.buf = bytearray()
        self.broken = False  # after an oversized length: drop the rest of this stream

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.broken:
            return
        buf = self.buf
        buf += chunk
        pos, end = 0, len(buf)
        while end - pos >= HEADER:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > self.max:
                # the sample is the length header itself: the same however reads split the stream
                rejected.append((bytes(buf[pos : pos + HEADER]), f"frame length {size} over max_frame_bytes ({self.max}); rest of the stream dropped"))
                self.broken = True
                buf.clear()
                return
            if end - pos - HEADER < size:
                break
            out.append(bytes(buf[pos + HEADER : pos + HEADER + size]))
            pos += HEADER + size
        del buf[:pos]

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        buf = self.buf
        if buf and not self.broken:
            if len(buf) < HEADER:
                rejected.append((bytes(buf), f"truncated frame header ({len(buf)} of {HEADER} bytes)"))
            else:
                (size,) = _LEN.unpack_from(buf, 0)
                rejected.append((bytes(buf[:SAMPLE]), f"truncated frame: {len(buf) - HEADER} of {size} bytes"))
        buf.clear()
        self.broken = False  # a new stream may follow (a rotated file)


class LengthPrefixedPostprocessor(Postprocessor):
    name = "length-prefixed"
    Config = LengthPrefixedConfig
    summary = "prefix each record with its length (4-byte big-endian)"

    def process(self, records: list[bytes]) -> list[bytes]:
        if not records:
            return []
        pack = _LEN.pack
        return [b"".join(pack(len(r)) + r for r in records)]
