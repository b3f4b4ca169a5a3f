"""``type: redis``: read Redis streams as a member of a consumer group, at least once.

Each entry's ``field`` (default ``data``) is one record; an entry without it goes to the
onramp's ``err`` port with the reason. The onramp reads with ``XREADGROUP`` as ``consumer``
of ``group`` (created at ``start_id`` when missing, the stream too) and acknowledges an entry
(``XACK``) only once every event made from it is done (delivered by every offramp, routed to
``err``, or filtered). What it read and could not deliver stays pending in the group:

- at start it first reads its own pending entries again (those in flight when it was killed);
- every ``claim_interval`` it claims (``XAUTOCLAIM``) entries pending longer than
  ``claim_idle`` with any consumer of the group (a dead one's) and hands them on; its own in
  flight are left alone;
- a Redis that goes away is retried with backoff (reads and acknowledgements alike), and
  while ``max_pending`` entries are in flight it reads no more.

Duplicates: entries in flight when the daemon died (read again at start), and entries claimed
from a consumer that was slow, not dead (set ``claim_idle`` above the longest delivery time).
Several daemons share a group's entries when each has its own ``consumer`` name; the default
(``<hostname>-<onramp id>``) is stable across restarts, so a restarted daemon finds its own
pending entries.

Each event's meta: ``redis_stream`` and ``redis_id`` (the entry id, a str such as
``1700000000000-0``). Needs the ``redis`` package (``pip install headrace[redis]``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Literal

from pydantic import Field

from headrace.contract.backoff import Backoff
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import COLUMN, CONST, MetaColumns
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration

log = logging.getLogger("headrace.redis")


class RedisOnrampConfig(PluginConfig):
    url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://", description="server (redis://, rediss:// for TLS, unix://)")
    streams: list[str] = Field(min_length=1, description="stream keys to read")
    group: str = Field(min_length=1, description="consumer group (created at start_id when missing)")
    consumer: str | None = Field(None, min_length=1, description="this reader's name in the group (default: <hostname>-<onramp id>; "
                                 "give each daemon reading the group its own)")
    start_id: Literal["0", "$"] = Field("0", description="where a group created here starts: 0 = the stream's first entry, $ = new ones")
    field: str = Field("data", min_length=1, description="the entry field holding the record")
    batch: int = Field(512, ge=1, le=100_000, description="entries per read")
    block: Duration = Field(1.0, gt=0, description="how long one read waits for new entries")
    max_pending: int = Field(8192, ge=1, description="entries read and not yet acknowledged; at this many, no more is read")
    claim_idle: Duration = Field(60.0, gt=0, description="entries pending this long with another consumer are claimed (a dead one's)")
    claim_interval: Duration = Field(10.0, gt=0, description="how often pending entries of other consumers are looked for")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class RedisOnramp(Onramp):
    name = "redis"
    Config = RedisOnrampConfig
    summary = "read Redis streams in a consumer group, XACK once delivered; pending entries of dead consumers reclaimed; meta redis_stream, redis_id"
    example = "{type: redis, codec: json, config: {url: 'redis://127.0.0.1:6379/0', streams: [events], group: headrace}}"

    def __init__(self, config: RedisOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.consumer = config.consumer or f"{socket.gethostname()}-{context.component_id}"
        self.client: Any = None
        self.inflight: set[tuple[str, str]] = set()  # (stream, id) handed on, not acknowledged yet
        self.room = asyncio.Event()
        self.room.set()
        self.to_ack: dict[str, list[str]] = {}
        self.acks_due = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the redis onramp needs the redis package: pip install 'headrace[redis]'") from exc
        self.client = aioredis.Redis.from_url(self.cfg.url, socket_connect_timeout=5, health_check_interval=30)
        self.ready = True

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        if self.client is not None:
            await self._flush_acks(once=True)
            await self.client.aclose()
            self.client = None

    async def run(self, sink: OnrampSink) -> None:
        if self.client is None:
            await self.start()
        self.tasks = [asyncio.create_task(self._ack_loop()), asyncio.create_task(self._claim_loop(sink))]
        backoff = Backoff(0.1, 5.0)
        await self._retrying(self._groups, backoff)
        for stream in self.cfg.streams:  # what this consumer had read and not acknowledged before (a kill): again, first
            last = "0"
            while True:
                got = await self._retrying(lambda s=stream, f=last: self.client.xreadgroup(self.cfg.group, self.consumer, {s: f},
                                                                                           count=self.cfg.batch), backoff)  # fmt: skip
                entries = got[0][1] if got else []
                if not entries:
                    break
                last = _text(entries[-1][0])
                fresh = [(i, f) for i, f in entries if (stream, _text(i)) not in self.inflight]
                if fresh:
                    log.info("redis onramp %s: %d entr(ies) of %s pending from before are read again", self.context.component_id, len(fresh), stream)
                    await self._hand_on(sink, stream, fresh)
        block_ms = int(self.cfg.block * 1000)
        while True:
            await self.room.wait()
            want = min(self.cfg.batch, self.cfg.max_pending - len(self.inflight))
            got = await self._retrying(lambda n=max(want, 1): self.client.xreadgroup(self.cfg.group, self.consumer, dict.fromkeys(self.cfg.streams, ">"),
                                                                                     count=n, block=block_ms), backoff)  # fmt: skip
            for stream, entries in got or ():
                if entries:
                    await self._hand_on(sink, _text(stream), entries)

    async def _retrying(self, call: Any, backoff: Backoff) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        while True:
            try:
                result = await call()
            except (RedisConnectionError, RedisTimeout, OSError) as exc:
                delay = backoff.next()
                log.warning("redis onramp %s: %s (%s); retrying in %.1fs", self.context.component_id, self.cfg.url, exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.attempt = 0
            return result

    async def _groups(self) -> None:
        from redis.exceptions import ResponseError

        for stream in self.cfg.streams:
            try:
                await self.client.xgroup_create(stream, self.cfg.group, id=self.cfg.start_id, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _hand_on(self, sink: OnrampSink, stream: str, entries: list[Any]) -> None:
        ids = [_text(i) for i, _ in entries]
        key = self.cfg.field.encode()
        payloads: list[bytes] = []
        refused: dict[int, str] = {}
        for k, (_i, fields) in enumerate(entries):
            value = fields.get(key) if fields else None
            if value is None:
                payloads.append(b"")
                refused[k] = f"entry has no field {self.cfg.field!r}" + (" (it was deleted)" if not fields else f" (fields: {', '.join(sorted(_text(f) for f in fields))})")
            else:
                payloads.append(value)
        for i in ids:
            self.inflight.add((stream, i))
        if len(self.inflight) >= self.cfg.max_pending:
            self.room.clear()
        metas = MetaColumns(len(ids), [("redis_stream", CONST, stream), ("redis_id", COLUMN, ids)])
        await sink.records(payloads, metas, ack=(stream, ids), refused=refused or None)

    def ack(self, token: Any) -> None:
        stream, ids = token
        self.to_ack.setdefault(stream, []).extend(ids)
        for i in ids:
            self.inflight.discard((stream, i))
        if len(self.inflight) < self.cfg.max_pending:
            self.room.set()
        self.acks_due.set()

    def fail(self, token: Any) -> None:
        stream, ids = token
        log.error("redis onramp %s: %d entr(ies) of %s were not delivered; they stay pending (claimed again after claim_idle, or read "
                  "again at the next start)", self.context.component_id, len(ids), stream)  # fmt: skip
        for i in ids:
            self.inflight.discard((stream, i))
        if len(self.inflight) < self.cfg.max_pending:
            self.room.set()

    async def _ack_loop(self) -> None:
        while True:
            await self.acks_due.wait()
            self.acks_due.clear()
            await self._flush_acks()

    async def _flush_acks(self, once: bool = False) -> None:
        from redis.exceptions import RedisError

        backoff = Backoff(0.1, 5.0)
        while self.to_ack:
            todo, self.to_ack = self.to_ack, {}
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for stream, ids in todo.items():
                        pipe.xack(stream, self.cfg.group, *ids)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                for stream, ids in todo.items():  # acknowledged later; until then they stay pending (a restart reads them again)
                    self.to_ack.setdefault(stream, [])[:0] = ids
                if once:
                    log.warning("redis onramp %s: cannot acknowledge %d entr(ies) at stop (%s): they are read again at the next start",
                                self.context.component_id, sum(map(len, todo.values())), exc)  # fmt: skip
                    return
                delay = backoff.next()
                log.warning("redis onramp %s: cannot acknowledge (%s); retrying in %.1fs", self.context.component_id, exc, delay)
                await asyncio.sleep(delay)

    async def _claim_loop(self, sink: OnrampSink) -> None:
        from redis.exceptions import RedisError

        idle_ms = int(self.cfg.claim_idle * 1000)
        while True:
            await asyncio.sleep(self.cfg.claim_interval)
            for stream in self.cfg.streams:
                start = "0-0"
                try:
                    while True:
                        await self.room.wait()
                        nxt, entries, *_ = await self.client.xautoclaim(stream, self.cfg.group, self.consumer, idle_ms, start_id=start,
                                                                        count=self.cfg.batch)  # fmt: skip
                        fresh = [(i, f) for i, f in entries if (stream, _text(i)) not in self.inflight]  # its own in flight: left alone
                        if fresh:
                            log.warning("redis onramp %s: claimed %d entr(ies) of %s pending longer than %gs with another consumer",
                                        self.context.component_id, len(fresh), stream, self.cfg.claim_idle)  # fmt: skip
                            await self._hand_on(sink, stream, fresh)
                        start = _text(nxt)
                        if start == "0-0":
                            break
                except (RedisError, OSError) as exc:
                    log.warning("redis onramp %s: cannot look for pending entries of %s (%s)", self.context.component_id, stream, exc)
