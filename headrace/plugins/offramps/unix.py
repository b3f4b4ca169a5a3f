"""``type: unix``: write records to a unix stream socket; reconnects after the peer went away."""

from __future__ import annotations

import asyncio

from pydantic import Field

from headrace.plugins.base import PluginContext
from headrace.plugins.onramps.unix import MAX_PATH
from headrace.plugins.sockets import StreamOfframp, StreamOfframpConfig


class UnixOfframpConfig(StreamOfframpConfig):
    path: str = Field(description="socket path of the server, relative to the config file's folder")


class UnixOfframp(StreamOfframp):
    name = "unix"
    Config = UnixOfframpConfig
    summary = "write records to a unix stream socket (lines by default); a failed write is retried on a new connection"
    example = "{type: unix, codec: json, config: {path: run/out.sock}}"

    def __init__(self, config: UnixOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.path = context.resolve(config.path)

    def check(self) -> None:
        if len(str(self.path).encode()) > MAX_PATH:
            raise ValueError(f"socket path {self.path} is longer than {MAX_PATH} bytes")

    def where(self) -> str:
        return str(self.path)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self.path))
