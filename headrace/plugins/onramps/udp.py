"""``type: udp``: one datagram is one record (unless preprocessors are configured).

UDP has no backpressure: while the graph is full, datagrams wait in a queue bounded by
``queue_datagrams`` and ``queue_bytes`` (the ``headrace_component_buffered_bytes`` gauge shows
its bytes); beyond either, they are dropped and counted. A datagram is framed (and
decompressed) a step at a time, each step handed to the graph before the next is made, so a
compressed datagram that expands to ``max_message_bytes`` costs about one step of memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Size
from headrace.metrics.defs import Tally
from headrace.metrics.refusals import LogEvery
from headrace.plugins.sockets import SAMPLE, Meta, framing_sink

log = logging.getLogger("headrace.plugins.udp")

MAX_UDP = 65507  # the largest IPv4 UDP payload
BATCH = 256  # records handed to the graph at once, at most
FLUSH_BYTES = 1 << 20  # records of about this many bytes are handed on even if more datagrams wait


class UdpOnrampConfig(PluginConfig):
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(ge=1, le=65535, description="port to listen on")
    max_datagram_bytes: Size = Field(MAX_UDP, ge=1, le=MAX_UDP, description="larger datagrams go to err (first 1 KiB kept)")
    queue_datagrams: int = Field(4096, ge=1, description="datagrams held while the graph is full; more are dropped (and counted)")
    queue_bytes: Size = Field(4 * 2**20, ge=1, description="bytes of datagrams held while the graph is full; more are dropped (and counted)")


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, onramp: UdpOnramp) -> None:
        self.onramp = onramp

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.onramp.received(data, addr)

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
        self.queue: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue(config.queue_datagrams)
        self.queued_bytes = 0
        self.dropped = 0
        self.drop_log_due = LogEvery()
        metrics = context.metrics
        self.drop_counter = (
            metrics["headrace_component_discarded_events_total"].labels(context.component_id, "queue_full") if metrics else None
        )
        self.gauge = Tally(metrics["headrace_component_buffered_bytes"].labels(context.component_id)) if metrics else None

    def received(self, data: bytes, addr: Any) -> None:
        if self.queued_bytes + len(data) > self.cfg.queue_bytes and not self.queue.empty():
            self._drop()
            return
        try:
            self.queue.put_nowait((data, addr))
        except asyncio.QueueFull:
            self._drop()  # UDP has no backpressure: the sender is not slowed down, so drop and count
            return
        self._queued(len(data))

    def _queued(self, n: int) -> None:
        self.queued_bytes += n
        if self.gauge is not None:
            self.gauge.set(self.queued_bytes)

    def _drop(self) -> None:
        self.dropped += 1
        if self.drop_counter is not None:
            self.drop_counter.inc()
        if self.drop_log_due():
            log.warning("%s: graph full, dropping datagrams (%d so far)", self.context.component_id, self.dropped)

    async def start(self) -> None:
        """Bind now: a port in use fails the start (naming this onramp), not a later moment. Ready once
        ``run`` hands datagrams on, not before."""
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(self), local_addr=(self.cfg.host, self.cfg.port))

    async def run(self, sink: OnrampSink) -> None:
        fsink = framing_sink(sink)
        if self.transport is None:  # run without start (the engine always starts first)
            await self.start()
        self.ready = True
        payloads: list[bytes] = []
        metas: list[Meta] = []
        nbytes = 0
        limit = self.cfg.max_datagram_bytes
        try:
            while True:
                data, addr = await self.queue.get()
                meta: Meta = {"udp_peer": f"{addr[0]}:{addr[1]}"}
                if len(data) > limit:
                    await fsink.reject([(data[:SAMPLE], f"datagram of {len(data)} bytes is over max_datagram_bytes ({limit})")], meta)
                else:
                    for records, rejected in fsink.frame(data):  # the next step once the last was handed on
                        if rejected:
                            await fsink.reject(rejected, meta)
                        payloads += records
                        metas += [dict(meta) for _ in records]
                        nbytes += sum(map(len, records))
                        if nbytes >= FLUSH_BYTES or len(payloads) >= BATCH:
                            await fsink.records(payloads, metas)
                            payloads, metas, nbytes = [], [], 0
                self._queued(-len(data))
                if payloads and self.queue.empty():
                    await fsink.records(payloads, metas)
                    payloads, metas, nbytes = [], [], 0
        finally:
            if self.transport is not None:
                self.transport.close()
                self.transport = None

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
