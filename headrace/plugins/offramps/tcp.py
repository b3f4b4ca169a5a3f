"""``type: tcp``: write records to a TCP server; reconnects after the peer went away."""

from __future__ import annotations

import asyncio

from pydantic import Field

from headrace.plugins.base import PluginContext
from headrace.plugins.sockets import StreamOfframp, StreamOfframpConfig


class TcpOfframpConfig(StreamOfframpConfig):
    host: str = Field("127.0.0.1", description="address of the server")
    port: int = Field(ge=1, le=65535, description="port of the server")


class TcpOfframp(StreamOfframp):
    name = "tcp"
    Config = TcpOfframpConfig
    summary = "write records to a TCP server (lines by default); a failed write is retried on a new connection, unacked meanwhile"
    example = "{type: tcp, codec: json, config: {host: 127.0.0.1, port: 9000}}"

    def __init__(self, config: TcpOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config

    def where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.cfg.host, self.cfg.port)
