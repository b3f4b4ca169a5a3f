"""``type: tcp``: a byte stream per TCP connection, as a server (default) or a client."""

from __future__ import annotations

import asyncio
import ssl

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.plugins.sockets import Handler, Meta, StreamOnramp, StreamOnrampConfig
from headrace.plugins.tls import TlsConfig, check_tls, client_cn, client_context, server_context


class TcpOnrampConfig(StreamOnrampConfig):
    host: str = Field("127.0.0.1", description="server: address to listen on; client: address to connect to")
    port: int = Field(ge=1, le=65535, description="server: port to listen on; client: port to connect to")
    tls: TlsConfig | None = Field(None, description="speak TLS (see reference/tls.md): a server needs cert and key, and with client_auth "
                                  "takes only clients with a certificate from ca; a client verifies the server")


class TcpOnramp(StreamOnramp):
    name = "tcp"
    Config = TcpOnrampConfig
    summary = ("read TCP connections (server, or client with reconnect), TLS optional; each connection framed on its own; "
               "meta tcp_peer (and tls_client_cn)")
    example = "{type: tcp, codec: json, config: {port: 9000}}"

    def __init__(self, config: TcpOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config

        self.ssl: ssl.SSLContext | None = None

    def check(self) -> None:
        check_tls(self.cfg.tls, self.cfg.mode == "server")

    def where(self) -> str:
        return f"{'tls://' if self.cfg.tls else ''}{self.cfg.host}:{self.cfg.port}"

    async def listen(self, handler: Handler) -> asyncio.AbstractServer:
        if self.cfg.tls is not None:
            self.ssl = server_context(self.cfg.tls, self.context.base_dir)
        return await asyncio.start_server(handler, self.cfg.host, self.cfg.port, reuse_address=True, ssl=self.ssl)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        tls = self.cfg.tls
        if tls is None:
            return await asyncio.open_connection(self.cfg.host, self.cfg.port)
        if self.ssl is None:
            self.ssl = client_context(tls, self.context.base_dir)
        return await asyncio.open_connection(self.cfg.host, self.cfg.port, ssl=self.ssl, server_hostname=tls.server_name or self.cfg.host)

    def peer_meta(self, writer: asyncio.StreamWriter) -> Meta:
        peer = writer.get_extra_info("peername")
        meta: Meta = {"tcp_peer": f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)}
        if self.cfg.tls is not None and self.cfg.mode == "server":
            cn = client_cn(writer.get_extra_info("peercert"))
            if cn is not None:
                meta["tls_client_cn"] = cn
        return meta
