"""The HTTP onramp's server: aiohttp's low-level server behind a cap on open connections.

A connection over ``max_connections`` is answered ``503`` with ``Retry-After`` and closed: the
answer is written, the write side shut (FIN), and what the client still sends is read and
dropped for a moment (so that its kernel does not discard the answer on a reset), never
parsed or kept. Those lingering refusals are capped too: beyond as many again, a connection
is closed at once.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

import orjson
from aiohttp import web

REFUSAL_LINGER = 1.0  # seconds a refused connection is read (and dropped) after its answer


class CappedServer(web.Server):
    """aiohttp's server, counting connections from the moment they are accepted (``opening``):
    aiohttp registers one only a loop iteration later, after a burst of accepts."""

    def __init__(self, handler: Any, *, max_connections: int, refused: Callable[[], bytes], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.refused = refused  # called for each refusal; returns the answer to write
        self.opening = 0
        self.lingering = 0

    def open_connections(self) -> int:
        return len(self.connections) + self.opening

    def accept(self) -> asyncio.Protocol:
        """The protocol factory given to ``loop.create_server``."""
        if self.open_connections() >= self.max_connections:
            return _Refusal(self, self.refused())
        self.opening += 1
        return self()

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        self.opening -= 1
        super().connection_made(handler, transport)


class _Refusal(asyncio.Protocol):
    def __init__(self, server: CappedServer, answer: bytes) -> None:
        self.server = server
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport instances
        self.transport = transport
        if self.server.lingering >= self.server.max_connections:
            transport.abort()  # a flood: no time for courtesy
            return
        self.server.lingering += 1
        transport.write(self.answer)
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request of a refused connection: dropped unread

    def eof_received(self) -> bool:
        return False  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.server.lingering -= 1


def busy_answer(message: str, retry_after: int) -> bytes:
    """A whole ``503`` HTTP/1.1 response that closes the connection."""
    body = orjson.dumps({"error": message})
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Retry-After: {retry_after}\r\nConnection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def listen(server: CappedServer, host: str, port: int, context: ssl.SSLContext | None = None) -> asyncio.AbstractServer:
    return await asyncio.get_running_loop().create_server(server.accept, host, port, reuse_address=True, ssl=context)
