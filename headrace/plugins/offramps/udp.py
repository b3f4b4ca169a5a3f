"""``type: udp``: send each record as one datagram."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import Field

from headrace.config.units import Size
from headrace.plugins.base import Offramp, PluginConfig, PluginContext, Rejections
from headrace.plugins.onramps.udp import MAX_UDP

log = logging.getLogger("headrace.plugins.udp")


class UdpOfframpConfig(PluginConfig):
    host: str = Field("127.0.0.1", description="address to send to")
    port: int = Field(ge=1, le=65535, description="port to send to")
    max_datagram_bytes: Size = Field(MAX_UDP, ge=1, le=MAX_UDP, description="larger records are not sent: they go to the err port")


class _Sender(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def error_received(self, exc: Exception) -> None:
        log.debug("udp send error: %s", exc)  # e.g. ICMP port unreachable: datagrams are fire and forget


class UdpOfframp(Offramp):
    name = "udp"
    Config = UdpOfframpConfig
    summary = "send each record as one UDP datagram (no postprocessors by default); oversized records go to err"
    example = "{type: udp, codec: json, config: {host: 127.0.0.1, port: 9001}}"

    def __init__(self, config: UdpOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.transport: asyncio.DatagramTransport | None = None
        self.proto: _Sender | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, self.proto = await loop.create_datagram_endpoint(_Sender, remote_addr=(self.cfg.host, self.cfg.port))

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        assert self.transport is not None and self.proto is not None, "start() was not called"
        limit = self.cfg.max_datagram_bytes
        over = [i for i, c in enumerate(chunks) if len(c) > limit]
        rejections = [(i, f"record of {len(chunks[i])} bytes is over max_datagram_bytes ({limit})") for i in over]
        if over and len(chunks) != events:
            # postprocessors joined records: a chunk is not one event, so none of them can be sent alone
            return [(i, f"a datagram of this batch is over max_datagram_bytes ({limit})") for i in range(events)]
        skip = set(over)
        for i, c in enumerate(chunks):
            if i not in skip:
                self.transport.sendto(c)
                await self.proto.writable.wait()
        return rejections or None

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
