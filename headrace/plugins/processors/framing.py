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


class OctetCountingConfig(PluginConfig):
    max_frame_bytes: Size = Field(1 * 2**20, ge=1, description="a longer declared length breaks the stream (rest dropped)")
    lines_fallback: bool = Field(True, description="a frame that starts with '<' instead of a length is read up to its newline "
                                 "(RFC 6587's non-transparent framing, which many senders use over TCP)")


_DIGITS = frozenset(b"0123456789")
MAX_LEN_DIGITS = 10


class OctetCountingPreprocessor(Preprocessor):
    """RFC 6587 octet counting: ``MSG-LEN SP MSG`` (``MSG-LEN`` in decimal), as syslog over TCP."""

    name = "octet-counting"
    Config = OctetCountingConfig
    summary = "split RFC 6587 octet-counted frames ('<length> <message>', syslog over TCP); with lines_fallback, '<...' frames end at a newline"

    def __init__(self, config: OctetCountingConfig | None = None) -> None:
        super().__init__(config)
        cfg: OctetCountingConfig = self.config  # type: ignore[assignment]
        self.max = cfg.max_frame_bytes
        self.lines = cfg.lines_fallback
        self.buf = bytearray()
        self.broken = False

    def _break(self, sample: bytes, reason: str, rejected: list[tuple[bytes, str]]) -> None:
        rejected.append((sample[:SAMPLE], reason + "; rest of the stream dropped"))
        self.broken = True
        self.buf.clear()

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.broken:
            return
        buf = self.buf
        buf += chunk
        pos, end = 0, len(buf)
        while pos < end:
            first = buf[pos]
            if first in (0x0A, 0x0D):  # stray line ends between frames
                pos += 1
                continue
            if first == 0x3C and self.lines:  # '<': a line
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    if end - pos > self.max:
                        self._break(bytes(buf[pos : pos + SAMPLE]), f"line over max_frame_bytes ({self.max})", rejected)
                        return
                    break
                line = bytes(buf[pos:nl])
                out.append(line[:-1] if line.endswith(b"\r") else line)
                pos = nl + 1
                continue
            sp = buf.find(b" ", pos, min(end, pos + MAX_LEN_DIGITS + 1))
            if sp < 0:
                if end - pos > MAX_LEN_DIGITS or not all(c in _DIGITS for c in buf[pos:end]):
                    self._break(bytes(buf[pos : pos + 32]), "no octet count (digits, then a space) at the start of a frame", rejected)
                    return
                break
            digits = bytes(buf[pos:sp])
            if not digits or not digits.isdigit() or (digits.startswith(b"0") and digits != b"0"):  # "0 ": an empty record
                self._break(bytes(buf[pos : pos + 32]), f"bad octet count {digits[:16]!r}", rejected)
                return
            size = int(digits)
            if size > self.max:
                self._break(digits, f"frame length {size} over max_frame_bytes ({self.max})", rejected)
                return
            if end - sp - 1 < size:
                break
            out.append(bytes(buf[sp + 1 : sp + 1 + size]))
            pos = sp + 1 + size
        del buf[:pos]

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        buf = self.buf
        if buf and not self.broken:
            if self.lines and buf[:1] == b"<":
                out.append(bytes(buf).rstrip(b"\r"))  # the last line had no newline
            else:
                rejected.append((bytes(buf[:SAMPLE]), f"truncated frame ({len(buf)} bytes at the end of the stream)"))
        buf.clear()
        self.broken = False


class OctetCountingPostprocessor(Postprocessor):
    name = "octet-counting"
    Config = OctetCountingConfig
    summary = "prefix each record with its length in decimal and a space (RFC 6587 octet counting, syslog over TCP)"

    def process(self, records: list[bytes]) -> list[bytes]:
        if not records:
            return []
        return [b"".join(b"%d %s" % (len(r), r) for r in records)]
