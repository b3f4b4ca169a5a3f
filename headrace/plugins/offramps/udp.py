"""``type: udp``: send each record as one datagram.

**Confirmed** means: the kernel took the whole datagram (``send`` returned its length) and
reported no error for it. UDP itself confirms nothing: a datagram lost on the way, or
dropped by a busy receiver, is not seen (at most once). An error the kernel does report
fails the write from that datagram on, and the rest is retried with backoff: an ICMP "port
unreachable" (nobody listens at the address) arrives as an error on the *next* send, so
the datagram before the one that failed is sent again too, and the end of each batch
checks for such an error left by its last datagram. A record longer than
``max_datagram_bytes``, or than the kernel can send in one datagram, goes to ``err``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import NoReturn

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.units import Size
from headrace.plugins.onramps.udp import MAX_UDP

log = logging.getLogger("headrace.plugins.udp")


class UdpOfframpConfig(PluginConfig):
    host: str = Field("127.0.0.1", description="address to send to")
    port: int = Field(ge=1, le=65535, description="port to send to")
    max_datagram_bytes: Size = Field(MAX_UDP, ge=1, le=MAX_UDP, description="larger records are not sent: they go to the err port")


class UdpOfframp(Offramp):
    name = "udp"
    Config = UdpOfframpConfig
    summary = "send each record as one UDP datagram (no postprocessors by default); oversized records go to err"
    example = "{type: udp, codec: json, config: {host: 127.0.0.1, port: 9001}}"

    def __init__(self, config: UdpOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.sock: socket.socket | None = None

    async def start(self) -> None:
        # a connected socket of our own, not a DatagramTransport: the transport hands send errors
        # to error_received() after the write returned, so a failed datagram counted as sent
        loop = asyncio.get_running_loop()
        family, kind, proto, _, addr = (await loop.getaddrinfo(self.cfg.host, self.cfg.port, type=socket.SOCK_DGRAM))[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    async def _send(self, data: bytes) -> None:
        assert self.sock is not None, "start() was not called"
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):  # the send buffer is full: wait until it is not
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
            return
        if sent != len(data):
            raise OSError(errno.EMSGSIZE, f"the kernel sent {sent} of {len(data)} bytes")

    def _pending_error(self) -> OSError | None:
        """An error the kernel reported after the last send (ICMP port unreachable), taken off the socket."""
        assert self.sock is not None
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return OSError(code, os.strerror(code)) if code else None

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        limit = self.cfg.max_datagram_bytes
        over = [i for i, c in enumerate(chunks) if len(c) > limit]
        rejections = [(i, f"record of {len(chunks[i])} bytes is over max_datagram_bytes ({limit})") for i in over]
        if over and len(chunks) != events:
            # postprocessors joined records: a chunk is not one event, so none of them can be sent alone
            return [(i, f"a datagram of this batch is over max_datagram_bytes ({limit})") for i in range(events)]
        skip = set(over)
        sent: list[int] = []
        for i, c in enumerate(chunks):
            if i in skip:
                continue
            try:
                await self._send(c)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:  # cannot be sent in one datagram, ever
                    rejections.append((i, f"record of {len(c)} bytes cannot be sent as one datagram: {exc.strerror}"))
                    continue
                self._fail(exc, sent, rejections, events, len(chunks), bounced=isinstance(exc, ConnectionRefusedError))
            sent.append(i)
        error = self._pending_error()
        if error is not None:
            self._fail(error, sent, rejections, events, len(chunks), bounced=True)
        return rejections or None

    def _fail(self, exc: OSError, sent: list[int], rejections: list[tuple[int, str]], events: int, chunks: int, bounced: bool) -> NoReturn:
        """Raise for a send error: the datagrams sent before it count as delivered, except the last
        one when the error reports that a datagram bounced (it is most likely that one)."""
        if bounced and sent:
            sent = sent[:-1]
        if chunks != events:  # a chunk holds several events: the batch is retried whole
            raise exc
        raise PartialWrite(exc, sent, rejections)

    async def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
