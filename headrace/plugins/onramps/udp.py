"""``type: udp``: one datagram is one record (unless preprocessors are configured)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import Field

from headrace.config.units import Size
from headrace.plugins.base import Onramp, OnrampSink, PluginConfig, PluginContext
from headrace.plugins.sockets import SAMPLE, FramingSink, Meta, Rejected, framing_sink

log = logging.getLogger("headrace.plugins.udp")

MAX_UDP = 65507  # the largest IPv4 UDP payload
BATCH = 256  # datagrams handed to the graph at once


class UdpOnrampConfig(PluginConfig):
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(ge=1, le=65535, description="port to listen on")
    max_datagram_bytes: Size = Field(MAX_UDP, ge=1, le=MAX_UDP, description="larger datagrams go to err (first 1 KiB kept)")
    queue_datagrams: int = Field(4096, ge=1, description="datagrams held while the graph is full; more are dropped (and counted)")


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[tuple[bytes, Any]], on_drop: Any) -> None:
        self.queue = queue
        self.on_drop = on_drop

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.queue.put_nowait((data, addr))
        except asyncio.QueueFull:
            self.on_drop()  # UDP has no backpressure: the sender is not slowed down, so drop and count

    def error_received(self, exc: Exception) -> None:
        log.debug("udp receive error: %s", exc)


class UdpOnramp(Onramp):
    name = "udp"
    Config = UdpOnrampConfig
    summary = "receive UDP datagrams, one record each; oversized ones go to err, overflow while full is dropped and counted; meta udp_peer"
    example = "{type: udp, codec: json, config: {port: 9001}}"

    def __init__(self, config: UdpOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.transport: asyncio.DatagramTransport | None = None
        self.queue: asyncio.Queue[tuple[bytes, Any]] | None = None
        self.dropped = 0
        self._last_drop_log = 0.0
        metrics = context.extra.get("metrics")
        self.drop_counter = (
            metrics["headrace_component_discarded_events_total"].labels(context.component_id, "queue_full") if metrics else None
        )

    def _drop(self) -> None:
        self.dropped += 1
        if self.drop_counter is not None:
            self.drop_counter.inc()
        now = time.monotonic()
        if now - self._last_drop_log > 10:
            self._last_drop_log = now
            log.warning("%s: graph full, dropping datagrams (%d so far)", self.context.component_id, self.dropped)

    async def start(self) -> None:
        """Bind now: a port in use fails the start (naming this onramp), not a later moment."""
        self.queue = asyncio.Queue(self.cfg.queue_datagrams)
        queue = self.queue
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Receiver(queue, self._drop), local_addr=(self.cfg.host, self.cfg.port)
        )

    async def run(self, sink: OnrampSink) -> None:
        fsink = framing_sink(sink)
        if self.transport is None:  # run without start (the engine always starts first)
            await self.start()
        queue = self.queue
        assert queue is not None and self.transport is not None
        self.ready = True
        try:
            while True:
                items = [await queue.get()]
                while len(items) < BATCH and not queue.empty():
                    items.append(queue.get_nowait())
                await self._deliver(fsink, items)
        finally:
            self.transport.close()

    async def _deliver(self, sink: FramingSink, items: list[tuple[bytes, Any]]) -> None:
        payloads: list[bytes] = []
        metas: list[Meta] = []
        limit = self.cfg.max_datagram_bytes
        for data, addr in items:
            meta: Meta = {"udp_peer": f"{addr[0]}:{addr[1]}"}
            records: list[bytes]
            rejected: Rejected
            if len(data) > limit:
                records, rejected = [], [(data[:SAMPLE], f"datagram of {len(data)} bytes is over max_datagram_bytes ({limit})")]
            else:
                records, rejected = sink.frame(data)
            if rejected:
                await sink.reject(rejected, meta)
            payloads.extend(records)
            metas.extend(dict(meta) for _ in records)
        await sink.records(payloads, metas)

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
