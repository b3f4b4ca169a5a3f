"""``type: nats``: read a NATS JetStream stream through a durable pull consumer, at least once.

Each message's payload is one record. The onramp fetches in batches from the durable consumer
``durable`` of ``stream`` (created when missing: explicit acks, ``ack_wait``, at most
``max_ack_pending`` unacknowledged, delivering from ``deliver`` on) and acknowledges a message
only once every event made from it is done (delivered by every offramp, routed to ``err``, or
filtered). What it read and could not deliver, or what was in flight when the daemon died, is
delivered again by the server after ``ack_wait``: those are the duplicates. Several daemons
with the same ``durable`` share its messages. With ``subjects`` set, a missing stream is created
(file storage) for them.

A server that goes away is reconnected to with backoff (the client's own reconnect); the
fetches wait meanwhile. Each event's meta: ``nats_subject``, ``nats_stream_seq`` (the message's
sequence number in the stream) and ``nats_delivered`` (how many times the server delivered it,
1 the first time). Needs the ``nats-py`` package (``pip install headrace[nats]``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import COLUMN, CONST, MetaColumns
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration

log = logging.getLogger("headrace.nats")


class NatsOnrampConfig(PluginConfig):
    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1, description="NATS server URLs")
    stream: str = Field(min_length=1, description="the JetStream stream")
    subjects: list[str] | None = Field(None, min_length=1, description="create the stream for these subjects when it is missing (file storage)")
    durable: str = Field(min_length=1, description="the durable consumer (created when missing); daemons sharing it share the messages")
    filter_subject: str | None = Field(None, description="only messages of this subject (a new consumer)")
    deliver: Literal["all", "new"] = Field("all", description="where a consumer created here starts: all = the stream's first message")
    batch: int = Field(256, ge=1, le=10_000, description="messages per fetch")
    ack_wait: Duration = Field(30.0, gt=0, description="a message not acknowledged within this is delivered again (a new consumer)")
    max_ack_pending: int = Field(8192, ge=1, description="messages delivered and not yet acknowledged, at most (a new consumer)")


class NatsOnramp(Onramp):
    name = "nats"
    Config = NatsOnrampConfig
    summary = "read a NATS JetStream stream through a durable pull consumer, acked once delivered; meta nats_subject, nats_stream_seq"
    example = "{type: nats, codec: json, config: {servers: ['nats://127.0.0.1:4222'], stream: EVENTS, durable: headrace}}"

    def __init__(self, config: NatsOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.nc: Any = None
        self.sub: Any = None
        self.acking: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            import nats
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the nats onramp needs the nats-py package: pip install 'headrace[nats]'") from exc
        cid = self.context.component_id

        async def disconnected() -> None:
            if self.nc is not None:  # not our own stop
                log.warning("nats onramp %s: disconnected from %s; reconnecting", cid, ", ".join(self.cfg.servers))

        async def reconnected() -> None:
            log.info("nats onramp %s: reconnected", cid)

        async def error(exc: Exception) -> None:
            log.warning("nats onramp %s: %s", cid, exc)

        self.nc = await nats.connect(self.cfg.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5,
                                     disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error)  # fmt: skip
        self.ready = True

    async def _subscribe(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream()
        cfg = self.cfg
        try:
            info = await js.stream_info(cfg.stream)
        except NotFoundError:
            if cfg.subjects is None:
                raise RuntimeError(f"nats onramp {self.context.component_id}: stream {cfg.stream!r} does not exist (set subjects to create it)") from None
            info = await js.add_stream(StreamConfig(name=cfg.stream, subjects=cfg.subjects, storage=StorageType.FILE))
        subject = cfg.filter_subject or (info.config.subjects[0] if info.config.subjects and len(info.config.subjects) == 1 else "")
        consumer = ConsumerConfig(durable_name=cfg.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=cfg.ack_wait, max_ack_pending=cfg.max_ack_pending,
                                  deliver_policy=DeliverPolicy.ALL if cfg.deliver == "all" else DeliverPolicy.NEW,
                                  filter_subject=cfg.filter_subject)  # fmt: skip
        return await js.pull_subscribe(subject, durable=cfg.durable, stream=cfg.stream, config=consumer)

    async def stop(self) -> None:
        if self.acking:
            await asyncio.gather(*self.acking, return_exceptions=True)
        if self.nc is not None:
            nc, self.nc, self.sub = self.nc, None, None
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except Exception:  # a server that is gone: nothing to hand back
                await nc.close()

    async def run(self, sink: OnrampSink) -> None:
        from nats.errors import ConnectionClosedError
        from nats.errors import Error as NatsError
        from nats.errors import TimeoutError as NatsTimeout

        if self.nc is None:
            await self.start()
        while self.sub is None:
            try:
                self.sub = await self._subscribe()
            except (TimeoutError, NatsTimeout, ConnectionClosedError) as exc:
                log.warning("nats onramp %s: cannot reach the stream (%s); retrying", self.context.component_id, exc)
                await asyncio.sleep(1.0)
        while True:
            try:
                msgs = await self.sub.fetch(self.cfg.batch, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                continue  # nothing new within a second (or the server is away: the client reconnects)
            except NatsError as exc:  # reconnecting, or the server answered with an error: wait, fetch again
                log.warning("nats onramp %s: fetch failed (%s); fetching again in 1s", self.context.component_id, exc)
                await asyncio.sleep(1.0)
                continue
            if msgs:
                await self._hand_on(sink, msgs)

    async def _hand_on(self, sink: OnrampSink, msgs: list[Any]) -> None:
        seqs, delivered, subjects = [], [], []
        for m in msgs:
            md = m.metadata
            seqs.append(md.sequence.stream)
            delivered.append(md.num_delivered)
            subjects.append(m.subject)
        columns: list[Any] = [("nats_stream_seq", COLUMN, seqs), ("nats_delivered", COLUMN, delivered)]
        columns.insert(0, ("nats_subject", CONST, subjects[0]) if len(set(subjects)) == 1 else ("nats_subject", COLUMN, subjects))
        await sink.records([m.data for m in msgs], MetaColumns(len(msgs), columns), ack=msgs)

    def ack(self, token: Any) -> None:
        task = asyncio.ensure_future(self._ack(token))
        self.acking.add(task)
        task.add_done_callback(self.acking.discard)

    async def _ack(self, msgs: list[Any]) -> None:
        try:
            for m in msgs:
                await m.ack()
        except Exception as exc:  # the server is away: it delivers them again after ack_wait
            log.warning("nats onramp %s: cannot acknowledge %d message(s) (%s): delivered again after ack_wait", self.context.component_id,
                        len(msgs), exc)  # fmt: skip

    def fail(self, token: Any) -> None:
        log.error("nats onramp %s: %d message(s) were not delivered; the server delivers them again after ack_wait", self.context.component_id,
                  len(token))  # fmt: skip
