"""``type: tcp``: a byte stream per TCP connection, as a server (default) or a client."""

from __future__ import annotations

import asyncio

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.plugins.sockets import Handler, Meta, StreamOnramp, StreamOnrampConfig


class TcpOnrampConfig(StreamOnrampConfig):
    host: str = Field("127.0.0.1", description="server: address to listen on; client: address to connect to")
    port: int = Field(ge=1, le=65535, description="server: port to listen on; client: port to connect to")


class TcpOnramp(StreamOnramp):
    name = "tcp"
    Config = TcpOnrampConfig
    summary = "read TCP connections (server, or client with reconnect); each connection framed on its own; meta tcp_peer"
    example = "{type: tcp, codec: json, config: {port: 9000}}"

    def __init__(self, config: TcpOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config

    def where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    async def listen(self, handler: Handler) -> asyncio.AbstractServer:
        return await asyncio.start_server(handler, self.cfg.host, self.cfg.port, reuse_address=True)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.cfg.host, self.cfg.port)

    def peer_meta(self, writer: asyncio.StreamWriter) -> Meta:
        peer = writer.get_extra_info("peername")
        return {"tcp_peer": f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)}
