"""``type: file``: read a file (plain, gzip or xz, by content), optionally following it like ``tail -F``."""

from __future__ import annotations

import asyncio
import gzip
import lzma
import os
from pathlib import Path
from typing import IO, Any, cast

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.paths import check_file_path
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration, Size


class FileOnrampConfig(PluginConfig):
    path: str = Field(description="file to read, relative to the config file's folder")
    follow: bool = Field(False, description="keep reading appended data and follow rotation (tail -F); never ends")
    read_size: Size = Field(256 * 1024, ge=1, description="bytes per read")
    poll_interval: Duration = Field(0.25, gt=0, description="with follow: how often to look for new data")


def open_any(path: str) -> IO[bytes]:
    """Open plain, gzip or xz by the file's magic bytes."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if magic == b"\xfd7zXZ\x00":
        return cast(IO[bytes], lzma.open(path, "rb"))
    return open(path, "rb")


class FileOnramp(Onramp):
    name = "file"
    Config = FileOnrampConfig
    summary = "read a file (plain, gzip or xz); follow: true tails it and follows rotation"
    default_preprocessors = ("lines",)
    example = "{type: file, codec: json, config: {path: data/logs.ndjson}}"

    def __init__(self, config: FileOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.path = str(context.resolve(config.path))
        self.finite = not config.follow
        self.file: IO[bytes] | None = None

    def check(self) -> None:
        check_file_path("path", Path(self.path))

    async def start(self) -> None:
        """A file read once must exist now (start-up fails naming it otherwise); a followed one may appear later."""
        if not self.cfg.follow and self.file is None:
            self.file = open_any(self.path)
        self.ready = True

    async def run(self, sink: OnrampSink) -> None:
        if not self.cfg.follow:
            f = self.file or open_any(self.path)
            self.file = None
            with f:
                while chunk := f.read(self.cfg.read_size):
                    await sink.chunk(chunk)
            return
        await self._follow(sink)

    async def stop(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    async def _follow(self, sink: OnrampSink) -> None:
        f: Any = None
        ino = None
        while True:
            if f is None:
                try:
                    f = open(self.path, "rb")  # noqa: SIM115 - held across iterations
                    ino = os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    await asyncio.sleep(self.cfg.poll_interval)
                    continue
            chunk = f.read(self.cfg.read_size)
            if chunk:
                await sink.chunk(chunk)
                continue
            await asyncio.sleep(self.cfg.poll_interval)
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                continue
            if st.st_ino != ino or st.st_size < f.tell():  # rotated or truncated: finish and reopen
                rest = f.read()
                if rest:
                    await sink.chunk(rest)
                await sink.end_of_stream()
                f.close()
                f = None
