"""Compression of a stream (preprocessor) or of each written chunk (postprocessor): gzip, zstd, lz4.

Decompression is bounded: one call produces at most ``STEP`` bytes and keeps the rest of its
input back (``has_pending``/``resume``), so the onramp passes each step on, and waits for
room in the graph, before it decompresses more. A compression bomb (100 MiB of zeros are
3 KiB of zstd) therefore costs a stream no more memory than a step; a whole message (an HTTP
body, a datagram) that decompresses to more than ``max_message_bytes`` goes to err.

zstd and lz4 come with the optional extra ``compression``; without it they raise ``MissingExtra``.
"""

from __future__ import annotations

import gzip
import importlib
import zlib
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.contract.units import Size

STEP = 1 << 20  # decompressed bytes one feed/resume call produces at most (plus, for zstd, one slice's worth)
ZSTD_SLICE = 256  # zstd input per call: a zstd block expands at most 32 768:1, so a slice to at most 8 MiB


class DecompressConfig(PluginConfig):
    max_message_bytes: Size = Field(64 * 2**20, ge=1, description="a whole message (HTTP body, datagram) decompressing to more goes to err; "
                                                                  "streams are decompressed a step at a time as the graph takes them")


class _Decompressor(Preprocessor):
    """A stream of concatenated compressed members/frames, decompressed a bounded step at a time."""

    Config = DecompressConfig
    what = ""
    unit = "frame"

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        self.d = self.new()
        self.pending: bytes | memoryview = b""  # compressed input not consumed yet
        self.more = False  # the decompressor holds output it has not given yet
        self.fed = False  # bytes of an unfinished member were fed
        self.broken = False
        self.produced = 0  # decompressed bytes so far
        self.max_total: int | None = None  # whole messages only: see whole_message

    def new(self) -> Any:
        raise NotImplementedError

    def errors(self) -> tuple[type[Exception], ...]:
        raise NotImplementedError

    def step(self, limit: int) -> bytes:
        """At most about ``limit`` bytes of output from ``pending``; updates ``pending`` and ``more``."""
        raise NotImplementedError

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.broken:
            return
        self.pending = bytes(self.pending) + chunk if self.pending else chunk
        self.resume(out, rejected)

    def has_pending(self) -> bool:
        return not self.broken and (bool(self.pending) or self.more)

    def whole_message(self) -> None:
        self.max_total = self.config.max_message_bytes  # type: ignore[attr-defined]

    def resume(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        made = 0
        try:
            while (self.pending or self.more) and made < STEP:
                self.fed = True
                data = self.step(STEP - made)
                if data:
                    out.append(data)
                    made += len(data)
                if self.d.eof:
                    self.pending, self.more, self.fed = (self.d.unused_data or b"") + bytes(self.pending), False, False
                    self.d = self.new()
        except self.errors() as exc:
            self.broken, self.pending, self.more = True, b"", False
            rejected.append((b"", f"corrupt {self.what} stream: {exc}"))
            return
        self.produced += made
        if self.max_total is not None and self.produced > self.max_total:
            self.broken, self.pending, self.more = True, b"", False
            rejected.append((b"", f"{self.what} message decompresses to more than max_message_bytes ({self.max_total})"))

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        while self.has_pending():  # the runner drains; a direct caller may not have
            self.resume(out, rejected)
        if self.fed and not self.broken:
            rejected.append((b"", f"truncated {self.what} stream: the last {self.unit} is incomplete"))
        self.d = self.new()
        self.pending, self.more, self.fed, self.broken, self.produced = b"", False, False, False, 0


class GzipPreprocessor(_Decompressor):
    name = "gzip"
    summary = "decompress a gzip stream (multi-member allowed), a bounded step at a time; corrupt data goes to err"
    what = "gzip"
    unit = "member"

    def new(self) -> Any:
        return zlib.decompressobj(wbits=31)

    def errors(self) -> tuple[type[Exception], ...]:
        return (zlib.error,)

    def step(self, limit: int) -> bytes:
        data: bytes = self.d.decompress(self.pending, limit)
        # at the end of a member the leftover input is in unused_data, and (CPython) in unconsumed_tail too
        self.pending = b"" if self.d.eof else self.d.unconsumed_tail
        self.more = len(data) == limit and not self.d.eof  # zlib may hold more output for no more input
        return data


class GzipConfig(PluginConfig):
    level: int = Field(6, ge=1, le=9)


class GzipPostprocessor(Postprocessor):
    name = "gzip"
    Config = GzipConfig
    summary = "gzip each written chunk (a valid multi-member gzip file)"

    def process(self, records: list[bytes]) -> list[bytes]:
        level = self.config.level  # type: ignore[attr-defined]
        return [gzip.compress(b"".join(records), compresslevel=level)] if records else []


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{what} needs the package '{module.split('.')[0]}': pip install headrace[compression]", name=module) from exc


class ZstdPreprocessor(_Decompressor):
    name = "zstd"
    summary = "decompress a zstd stream (several frames allowed); corrupt or truncated data goes to err (extra: compression)"
    what = "zstd"

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.zstd = _require("zstandard", "the zstd preprocessor")
        super().__init__(config)

    def new(self) -> Any:
        return self.zstd.ZstdDecompressor().decompressobj()

    def errors(self) -> tuple[type[Exception], ...]:
        return (self.zstd.ZstdError,)

    def step(self, limit: int) -> bytes:
        # no output bound in the zstd API: bound the input instead (a block expands at most 32 768:1)
        made: list[bytes] = []
        size = 0
        view = memoryview(self.pending)
        pos = 0
        while pos < len(view) and size < limit and not self.d.eof:
            data: bytes = self.d.decompress(view[pos : pos + ZSTD_SLICE])
            pos += ZSTD_SLICE
            if data:
                made.append(data)
                size += len(data)
        self.pending = view[pos:] if pos < len(view) else b""
        return b"".join(made)


class ZstdConfig(PluginConfig):
    level: int = Field(3, ge=1, le=22, description="compression level")


class ZstdPostprocessor(Postprocessor):
    name = "zstd"
    Config = ZstdConfig
    summary = "compress each written chunk as one zstd frame (extra: compression)"

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        zstd = _require("zstandard", "the zstd postprocessor")
        self.c = zstd.ZstdCompressor(level=self.config.level)  # type: ignore[attr-defined]

    def process(self, records: list[bytes]) -> list[bytes]:
        return [self.c.compress(b"".join(records))] if records else []


class Lz4Preprocessor(_Decompressor):
    name = "lz4"
    summary = "decompress an LZ4 frame stream (several frames allowed); corrupt or truncated data goes to err (extra: compression)"
    what = "lz4"

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.lz4 = _require("lz4.frame", "the lz4 preprocessor")
        super().__init__(config)

    def new(self) -> Any:
        return self.lz4.LZ4FrameDecompressor()

    def errors(self) -> tuple[type[Exception], ...]:
        return (RuntimeError,)  # what lz4.frame raises for a bad frame

    def step(self, limit: int) -> bytes:
        data: bytes = self.d.decompress(bytes(self.pending), max_length=limit)  # it keeps unconsumed input itself
        self.pending = b""
        self.more = not self.d.eof and not self.d.needs_input
        return data


class Lz4Config(PluginConfig):
    level: int = Field(0, ge=0, le=16, description="compression level (0: fast; 3 and more: high compression)")


class Lz4Postprocessor(Postprocessor):
    name = "lz4"
    Config = Lz4Config
    summary = "compress each written chunk as one LZ4 frame (extra: compression)"

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        self.lz4 = _require("lz4.frame", "the lz4 postprocessor")
        self.level: int = self.config.level  # type: ignore[attr-defined]

    def process(self, records: list[bytes]) -> list[bytes]:
        return [self.lz4.compress(b"".join(records), compression_level=self.level)] if records else []
