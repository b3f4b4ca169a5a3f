"""``type: stdin``: read standard input until it closes."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Size


class StdinConfig(PluginConfig):
    read_size: Size = Field(256 * 1024, ge=1, description="bytes per read")


class StdinOnramp(Onramp):
    name = "stdin"
    Config = StdinConfig
    summary = "read standard input (a pipe, file or terminal) until end of file"
    default_preprocessors = ("lines",)
    example = "{type: stdin, codec: json}"

    def __init__(self, config: StdinConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.finite = True
        self.read_size = config.read_size

    async def run(self, sink: OnrampSink) -> None:
        # a thread reads, so a regular file, pipe or tty all work and the loop never blocks
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        fd = sys.stdin.fileno()

        def reader() -> None:
            while True:
                data = os.read(fd, self.read_size)
                asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
                if not data:
                    return

        threading.Thread(target=reader, name="headrace-stdin", daemon=True).start()
        self.ready = True
        while data := await queue.get():
            await sink.chunk(data)
