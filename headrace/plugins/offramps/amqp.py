"""``type: amqp``: publish records to an AMQP 0-9-1 exchange (RabbitMQ) with publisher confirms.

Each record is one message, published to ``exchange`` ("" : the default exchange, which routes
by queue name) with ``routing_key`` (or, per record, the meta key ``routing_key_from_meta``
names), persistent (``delivery_mode`` 2) unless ``persistent: false``. A write is **confirmed**
once the broker confirmed (``basic.ack``) every message of the batch; the publishes of a batch
are in flight together. A batch with a message the broker refused (``basic.nack``), a lost
connection or no confirmation within ``timeout`` is retried whole by the runtime with backoff
(on a new connection), so messages the broker had taken before the failure can appear twice (at
least once).

With ``mandatory: true`` (default) a message no queue takes (nothing bound to its routing key)
is returned by the broker: it goes to the offramp's ``err`` port with the reason, the rest of
the batch is delivered. With ``mandatory: false`` the broker drops such a message and it counts
as confirmed. ``exchange_type`` declares the exchange (durable) when it does not exist; else it
must exist. Needs the ``aio-pika`` package (``pip install headrace[amqp]``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas, destinations
from headrace.contract.sink import Offramp, Rejections
from headrace.contract.units import Duration
from headrace.plugins.amqp_client import AmqpConnection, import_aio_pika, where


class AmqpOfframpConfig(AmqpConnection):
    exchange: str = Field("", description="the exchange to publish to ('': the default exchange, routing by queue name)")
    exchange_type: Literal["direct", "fanout", "topic", "headers"] | None = Field(
        None, description="declare the exchange (durable) of this type when it does not exist (none: it must exist)")
    routing_key: str = Field(description="each message's routing key (with the default exchange: the queue's name)")
    routing_key_from_meta: str | None = Field(None, min_length=1, description="a meta key naming each record's routing key (else `routing_key`)")
    mandatory: bool = Field(True, description="a message no queue takes goes to err (false: the broker drops it, counted as confirmed)")
    persistent: bool = Field(True, description="persistent messages (delivery_mode 2): a durable queue keeps them across a broker restart")
    timeout: Duration = Field(10.0, gt=0, description="how long a batch waits for the broker's confirmations")


class AmqpOfframp(Offramp):
    name = "amqp"
    Config = AmqpOfframpConfig
    summary = "publish records to an AMQP 0-9-1 exchange (RabbitMQ) with publisher confirms, persistent; unroutable ones to err; retried whole"
    example = "{type: amqp, codec: json, config: {url: 'amqp://guest:guest@127.0.0.1:5672/', exchange: '', routing_key: events}}"
    coalesce_events = 1024

    def __init__(self, config: AmqpOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.conn: Any = None
        self.channel: Any = None
        self.exchange: Any = None

    async def start(self) -> None:
        import_aio_pika("offramp")

    async def _connect(self) -> None:
        aio_pika = import_aio_pika("offramp")
        cfg = self.cfg
        await self._close()
        self.conn = await aio_pika.connect(cfg.url, timeout=cfg.connect_timeout)
        self.channel = await self.conn.channel(publisher_confirms=True, on_return_raises=True)
        if not cfg.exchange:
            self.exchange = self.channel.default_exchange
        elif cfg.exchange_type is not None:
            self.exchange = await self.channel.declare_exchange(cfg.exchange, cfg.exchange_type, durable=True)
        else:
            self.exchange = await self.channel.declare_exchange(cfg.exchange, passive=True)

    async def _close(self) -> None:
        conn, self.conn, self.channel, self.exchange = self.conn, None, None, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # a broker that is gone: nothing to hand back
                pass

    async def stop(self) -> None:
        await self._close()

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        aio_pika = import_aio_pika("offramp")
        from aiormq.exceptions import ChannelNotFoundEntity, DeliveryError, PublishError
        from pamqp.commands import Basic

        cfg = self.cfg
        try:
            if self.channel is None or self.channel.is_closed:
                await self._connect()
        except ChannelNotFoundEntity:
            await self._close()
            raise ConnectionError(f"the exchange {cfg.exchange!r} does not exist on {where(cfg.url)} (declare it, or set exchange_type)") from None
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
            await self._close()
            raise ConnectionError(f"cannot connect to {where(cfg.url)}: {type(exc).__name__}: {exc}") from exc
        keys = destinations(cfg.routing_key, cfg.routing_key_from_meta, len(chunks), metas if len(chunks) == events else None)
        # aio-pika's own channel underneath, publishing without waiting for each frame to be written (Exchange.publish
        # waits: one message per loop turn); the confirmations are awaited together
        channel = await self.channel.get_underlay_channel()
        mode = 2 if cfg.persistent else 1
        sends = [channel.basic_publish(d, exchange=self.exchange.name, routing_key=k, properties=Basic.Properties(delivery_mode=mode),
                                       mandatory=cfg.mandatory, wait=False) for d, k in zip(chunks, keys, strict=True)]  # fmt: skip
        try:
            results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), cfg.timeout)
        except TimeoutError:
            await self._close()  # what the broker makes of the unconfirmed ones is unknown: a new channel, the batch again
            raise ConnectionError(f"the broker {where(cfg.url)} did not confirm the batch within {cfg.timeout:g}s") from None
        rejected: list[tuple[int, str]] = []
        failed: BaseException | None = None
        for i, r in enumerate(results):
            if isinstance(r, PublishError):
                rejected.append((i, f"unroutable: no queue is bound to exchange {cfg.exchange or '(default)'!r} with routing key {keys[i]!r}"))
            elif isinstance(r, BaseException) and failed is None:
                failed = r
        if failed is not None:
            if not isinstance(failed, DeliveryError):
                await self._close()
            why = "the broker refused a message (basic.nack)" if isinstance(failed, DeliveryError) else f"{type(failed).__name__}: {failed}"
            raise ConnectionError(f"publishing to {where(cfg.url)} failed: {why}") from failed
        return rejected or None
