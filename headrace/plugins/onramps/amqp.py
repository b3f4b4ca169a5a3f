"""``type: amqp``: consume an AMQP 0-9-1 queue (RabbitMQ) with manual acknowledgements, at least once.

Each message's body is one record. The onramp consumes ``queue`` (declared durable when
``declare: true``; else it must exist) and acknowledges a message only once every event made
from it is done (delivered by every offramp, routed to ``err``, or filtered). The broker
delivers at most ``prefetch`` unacknowledged messages at a time (``basic.qos``): that is the
onramp's bound on what it holds in flight. Messages are handed on in batches of up to
``batch`` (a batch gathers for at most 5 ms). Acknowledgements are sent for the longest run of
done messages from the oldest on (one ``basic.ack`` with ``multiple`` for a run), so a message
is never acknowledged before it is done, even when later ones finish first.

What was in flight when the daemon died (or the connection was lost) is delivered again by
the broker, to this daemon after its restart or reconnection or to another consumer of the
queue: those are the duplicates, at most ``prefetch`` per connection lost. A broker that goes
away is reconnected to with backoff (the onramp is not ready meanwhile). Records that could
not be delivered (``fail``: the error budget tripped, the last-resort file could not be
written) are not acknowledged: the broker delivers them again once this channel closes (the
next start or reconnection). Several daemons consuming one queue share its messages.

Each event's meta: ``amqp_exchange`` (the exchange it was published to, "" for the default
one), ``amqp_routing_key`` and ``amqp_redelivered`` (the broker delivered it before). Needs the
``aio-pika`` package (``pip install headrace[amqp]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from pydantic import Field

from headrace.contract.backoff import Backoff
from headrace.contract.context import PluginContext
from headrace.contract.metas import COLUMN, CONST, MetaColumns
from headrace.contract.source import Onramp, OnrampSink
from headrace.plugins.amqp_client import AmqpConnection, import_aio_pika, where

log = logging.getLogger("headrace.amqp")

PENDING, DONE, FAILED = 0, 1, 2
LINGER = 0.005  # seconds a hand-over waits for a full batch once a message is there


class AmqpOnrampConfig(AmqpConnection):
    queue: str = Field(min_length=1, description="the queue to consume")
    declare: bool = Field(False, description="declare the queue (durable) when it does not exist; false: it must exist")
    prefetch: int = Field(8192, ge=1, le=65535, description="messages delivered and not yet acknowledged, at most (basic.qos "
                          "prefetch_count): the onramp's bound on what it holds in flight")  # fmt: skip
    batch: int = Field(512, ge=1, le=65535, description="messages handed on at most at once")


class _Handed:
    """One hand-over: the delivery tags of its messages on one channel, and what became of them."""

    __slots__ = ("session", "state", "tags")

    def __init__(self, session: _Session, tags: list[int]) -> None:
        self.session = session
        self.tags = tags
        self.state = PENDING


class _Session:
    """One channel's consumption: its hand-overs in delivery order, and the acknowledgements to send on it."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel  # aiormq's: acks go on the channel that delivered, never another
        self.handed: deque[_Handed] = deque()
        self.outbox: list[tuple[int, bool]] = []  # (delivery tag, multiple)
        self.failed_below = False  # a failed message stays unacknowledged: from then on no ack may cover it (multiple)
        self.last_tag = 0
        self.due = asyncio.Event()
        self.lock = asyncio.Lock()
        self.open = True

    def settle(self) -> None:
        """The done hand-overs from the oldest on become acknowledgements (one multiple ack while no failed one is below)."""
        handed = self.handed
        upto = 0
        while handed and handed[0].state != PENDING:
            h = handed.popleft()
            if h.state == FAILED:
                if upto:
                    self.outbox.append((upto, True))
                    upto = 0
                self.failed_below = True
            elif self.failed_below:
                self.outbox.extend((t, False) for t in h.tags)
            else:
                upto = h.tags[-1]
        if upto:
            self.outbox.append((upto, True))
        if self.outbox:
            self.due.set()

    async def flush(self) -> None:
        async with self.lock:  # one sender: an ack frame never overtakes an earlier one
            while self.outbox and self.open:
                todo, self.outbox = self.outbox, []
                for k, (tag, multiple) in enumerate(todo):
                    if multiple and k + 1 < len(todo) and todo[k + 1][1]:
                        continue  # the next one covers it (multiples only come before any single one)
                    try:
                        await self.channel.basic_ack(tag, multiple=multiple)  # awaits its write: at stop, written before the close
                    except BaseException:
                        self.outbox[:0] = todo[k + 1 :]  # not sent: still to send (a cancelled sender leaves them to the next)
                        raise


class AmqpOnramp(Onramp):
    name = "amqp"
    Config = AmqpOnrampConfig
    summary = "consume an AMQP 0-9-1 queue (RabbitMQ) with manual acks, acked once delivered, prefetch bounded; meta amqp_routing_key"
    example = "{type: amqp, codec: json, config: {url: 'amqp://guest:guest@127.0.0.1:5672/', queue: events, declare: true}}"

    def __init__(self, config: AmqpOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.conn: Any = None
        self.session: _Session | None = None
        self.acker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import_aio_pika("onramp")

    async def stop(self) -> None:
        self.ready = False
        session, self.session = self.session, None
        if session is not None:
            try:  # what is done is acknowledged before the channel closes (the broker delivers the rest again)
                await asyncio.wait_for(session.flush(), 5)  # after the ack loop's own flush, if one is under way (the lock)
            except Exception as exc:
                log.warning("amqp onramp %s: cannot acknowledge at stop (%s): those messages are delivered again", self.context.component_id, exc)
            session.open = False
        if self.acker is not None:
            self.acker.cancel()
            await asyncio.gather(self.acker, return_exceptions=True)
            self.acker = None
        await self._close()

    async def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # a broker that is gone: nothing to hand back
                pass

    async def run(self, sink: OnrampSink) -> None:
        aio_pika = import_aio_pika("onramp")
        from aiormq.exceptions import ChannelNotFoundEntity

        backoff = Backoff(0.2, 5.0)
        cid = self.context.component_id
        while True:
            try:
                await self._consume(sink, backoff)
            except ChannelNotFoundEntity:
                raise RuntimeError(f"amqp onramp {cid}: the queue {self.cfg.queue!r} does not exist on {where(self.cfg.url)} "
                                   "(declare it, or set declare: true)") from None  # fmt: skip
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                self._lost()
                delay = backoff.next()
                log.warning("amqp onramp %s: %s: %s; reconnecting in %.1fs", cid, where(self.cfg.url), _describe(exc), delay)
                await self._close()
                await asyncio.sleep(delay)
            # cancelled (a stop): the session stays, so acks of what is still in flight go out before stop() closes it

    def _lost(self) -> None:
        """The channel is gone: the broker delivers its unacknowledged messages again; their acks must not go anywhere."""
        self.ready = False
        session, self.session = self.session, None
        if session is not None:
            session.open = False
        if self.acker is not None:
            self.acker.cancel()
            self.acker = None

    async def _consume(self, sink: OnrampSink, backoff: Backoff) -> None:
        aio_pika = import_aio_pika("onramp")
        cfg = self.cfg
        self.conn = conn = await aio_pika.connect(cfg.url, timeout=cfg.connect_timeout)
        channel = await conn.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=cfg.prefetch)
        queue = await channel.declare_queue(cfg.queue, durable=True, passive=not cfg.declare)
        arrived: list[Any] = []
        wake, full = asyncio.Event(), asyncio.Event()
        batch = min(cfg.batch, cfg.prefetch)  # no more can come before some are acknowledged

        async def delivered(message: Any) -> None:
            arrived.append(message)
            wake.set()
            if len(arrived) >= batch:
                full.set()

        def closed(f: asyncio.Future[Any]) -> None:
            if not f.cancelled():
                f.exception()  # retrieved: the reason is logged by the reconnect
            wake.set()
            full.set()

        for closing in (conn.closed(), channel.closed()):
            closing.add_done_callback(closed)
        underlay = await channel.get_underlay_channel()
        self.session = session = _Session(underlay)
        self.acker = asyncio.create_task(self._ack_loop(session))
        # aio-pika's own channel underneath: its messages as delivered (queue.consume wraps each in a message object
        # and a task of its own, a fifth of the CPU a message costs here)
        await underlay.basic_consume(queue.name, delivered, no_ack=False)
        if backoff.attempt:
            log.info("amqp onramp %s: consuming %s on %s again", self.context.component_id, cfg.queue, where(cfg.url))
        backoff.reset()
        self.ready = True
        while True:
            await wake.wait()
            if len(arrived) < batch:  # messages come one by one: a moment for a batch to gather (one hand-over and one ack per batch)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(full.wait(), LINGER)
            wake.clear()
            full.clear()
            if channel.is_closed or conn.is_closed:
                raise ConnectionError("the connection was closed")
            while arrived:
                msgs = arrived[:batch]
                del arrived[:batch]
                await self._hand_on(sink, session, msgs)

    async def _hand_on(self, sink: OnrampSink, session: _Session, msgs: list[Any]) -> None:
        exchanges = [m.exchange or "" for m in msgs]
        keys = [m.routing_key or "" for m in msgs]
        metas = MetaColumns(len(msgs), [
            ("amqp_exchange", CONST, exchanges[0]) if exchanges.count(exchanges[0]) == len(exchanges) else ("amqp_exchange", COLUMN, exchanges),
            ("amqp_routing_key", CONST, keys[0]) if keys.count(keys[0]) == len(keys) else ("amqp_routing_key", COLUMN, keys),
            ("amqp_redelivered", COLUMN, [bool(m.redelivered) for m in msgs]),
        ])  # fmt: skip
        handed = _Handed(session, [m.delivery_tag for m in msgs])
        if handed.tags != sorted(handed.tags) or handed.tags[0] <= session.last_tag:
            session.failed_below = True  # not in delivery order: a multiple ack could cover one not done; each is acked alone
        session.last_tag = max(session.last_tag, handed.tags[-1])
        session.handed.append(handed)
        await sink.records([m.body for m in msgs], metas, ack=handed)

    async def _ack_loop(self, session: _Session) -> None:
        while session.open:
            await session.due.wait()
            session.due.clear()
            try:
                await session.flush()
            except Exception as exc:  # the channel is going away: the broker delivers those messages again
                log.warning("amqp onramp %s: cannot acknowledge (%s): those messages are delivered again", self.context.component_id, exc)
                session.open = False

    def ack(self, token: Any) -> None:
        token.state = DONE
        if token.session.open:
            token.session.settle()

    def fail(self, token: Any) -> None:
        token.state = FAILED
        log.error("amqp onramp %s: %d message(s) were not delivered; not acknowledged, the broker delivers them again once this channel "
                  "closes (at the next start or reconnection)", self.context.component_id, len(token.tags))  # fmt: skip
        if token.session.open:
            token.session.settle()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
