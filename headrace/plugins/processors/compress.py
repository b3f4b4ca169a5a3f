"""Compression of a stream (preprocessor) or of each written chunk (postprocessor): gzip, zstd, lz4.

zstd and lz4 come with the optional extra ``compression``; without it they raise ``MissingExtra``.
"""

from __future__ import annotations

import gzip
import importlib
import zlib
from typing import Any

from pydantic import Field

from headrace.plugins.base import PluginConfig, Postprocessor, Preprocessor


class GzipPreprocessor(Preprocessor):
    name = "gzip"
    summary = "decompress a gzip stream (multi-member allowed); corrupt data goes to err"

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        self.d = zlib.decompressobj(wbits=31)
        self.broken = False

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.broken:
            return
        try:
            while chunk:
                data = self.d.decompress(chunk)
                if data:
                    out.append(data)
                if self.d.eof:
                    chunk = self.d.unused_data
                    self.d = zlib.decompressobj(wbits=31)
                else:
                    chunk = b""
        except zlib.error as exc:
            self.broken = True
            rejected.append((chunk[:1024], f"corrupt gzip stream: {exc}"))


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


class _FramesPreprocessor(Preprocessor):
    """A stream of concatenated compressed frames (one per written chunk), decompressed as it comes."""

    what = ""

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        self.d = self.new()
        self.fed = False  # bytes of an unfinished frame were fed
        self.broken = False

    def new(self) -> Any:
        raise NotImplementedError

    def errors(self) -> tuple[type[Exception], ...]:
        raise NotImplementedError

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.broken:
            return
        try:
            while chunk:
                self.fed = True
                data = self.d.decompress(chunk)
                if data:
                    out.append(data)
                if self.d.eof:
                    chunk = self.d.unused_data
                    self.d = self.new()
                    self.fed = False
                else:
                    chunk = b""
        except self.errors() as exc:
            self.broken = True
            rejected.append((chunk[:1024], f"corrupt {self.what} stream: {exc}"))

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.fed and not self.broken:
            rejected.append((b"", f"truncated {self.what} stream: the last frame is incomplete"))
        self.d = self.new()
        self.fed = self.broken = False


class ZstdPreprocessor(_FramesPreprocessor):
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


class Lz4Preprocessor(_FramesPreprocessor):
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
