"""``type: unix``: write records to a unix stream socket; reconnects after the peer went away.

**Confirmed** means: the peer process read every byte of the write (our socket's send
queue, ``SIOCOUTQ``, counts the bytes the peer has not read yet) and did not close the
connection on unread data. A peer that closed or crashed on unread data, or that reads
nothing for ``ack_timeout``, gets the batch again on a new connection (at least once: a
part it had read comes again). What the peer read and then lost (it crashed before
handling it) is not seen: there is no acknowledgement above the socket.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.contract.paths import check_file_path
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
        check_file_path("path", self.path)

    def where(self) -> str:
        return str(self.path)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self.path))
