"""``type: tcp``: write records to a TCP server; reconnects after the peer went away.

**Confirmed** means: the peer's TCP acknowledged every byte of the write (our socket's send
queue, ``SIOCOUTQ``, is empty) and the connection was not reset meanwhile. A write to a
peer that closed or crashed is answered by a reset, not an acknowledgement, and a peer
that acknowledges nothing for ``ack_timeout`` counts as dead: in both cases the connection
is aborted and the batch is written again on a new one (at least once: a peer that had
read part of it gets that part again).

That is as far as TCP can see. Bytes the peer's TCP acknowledged but its process never
read (it crashed before reading them) are lost, as with any protocol without an
acknowledgement of its own; use the ``http`` or ``kafka`` offramp where that matters.
"""

from __future__ import annotations

import asyncio
import ssl

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.plugins.sockets import StreamOfframp, StreamOfframpConfig
from headrace.plugins.tls import TlsConfig, check_tls, client_context


class TcpOfframpConfig(StreamOfframpConfig):
    host: str = Field("127.0.0.1", description="address of the server")
    port: int = Field(ge=1, le=65535, description="port of the server")
    tls: TlsConfig | None = Field(None, description="speak TLS (see reference/tls.md): verify the server against ca (default: the "
                                  "system's CAs) and its name; cert and key present a client certificate")


class TcpOfframp(StreamOfframp):
    name = "tcp"
    Config = TcpOfframpConfig
    summary = "write records to a TCP server (lines by default); a failed write is retried on a new connection, unacked meanwhile"
    example = "{type: tcp, codec: json, config: {host: 127.0.0.1, port: 9000}}"

    def __init__(self, config: TcpOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config

        self.ssl: ssl.SSLContext | None = None

    def check(self) -> None:
        check_tls(self.cfg.tls, listening=False)

    def where(self) -> str:
        return f"{'tls://' if self.cfg.tls else ''}{self.cfg.host}:{self.cfg.port}"

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        tls = self.cfg.tls
        if tls is None:
            return await asyncio.open_connection(self.cfg.host, self.cfg.port)
        if self.ssl is None:
            self.ssl = client_context(tls, self.context.base_dir)
        return await asyncio.open_connection(self.cfg.host, self.cfg.port, ssl=self.ssl, server_hostname=tls.server_name or self.cfg.host)
