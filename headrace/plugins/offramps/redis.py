"""``type: redis``: write records to Redis: ``XADD`` to a stream (default), ``LPUSH``/``RPUSH`` to a
list, or ``PUBLISH`` to a channel.

A batch is sent as one pipeline (no transaction); it is **confirmed** when Redis answered
every command of it. A batch that fails (Redis unreachable, a command refused) is retried
whole by the runtime with backoff, so entries of a batch Redis had partly taken before the
failure can appear twice (at least once). With ``mode: xadd``, ``maxlen`` trims the stream
approximately (``MAXLEN ~``); the record is the entry's ``field`` (default ``data``).

``mode: publish`` is at most once on Redis' side: a message published while no subscriber
listens is dropped by Redis, and it counts as confirmed here.

``key`` may name a meta key to choose the stream, list or channel per record:
``key_from_meta: redis_stream`` sends each record where its meta says (records without that
meta key go to ``key``). Needs the ``redis`` package (``pip install headrace[redis]``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas, destinations
from headrace.contract.sink import Offramp, Rejections


class RedisOfframpConfig(PluginConfig):
    url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^(redis|rediss|unix)://", description="server (redis://, rediss:// for TLS, unix://)")
    mode: Literal["xadd", "lpush", "rpush", "publish"] = Field("xadd", description="XADD to a stream, LPUSH/RPUSH to a list, PUBLISH to a channel")
    key: str = Field(min_length=1, description="the stream, list or channel")
    key_from_meta: str | None = Field(None, min_length=1, description="a meta key naming each record's stream, list or channel (else `key`)")
    field: str = Field("data", min_length=1, description="xadd: the entry field that holds the record")
    maxlen: int | None = Field(None, ge=1, description="xadd: trim the stream to about this many entries (MAXLEN ~)")


class RedisOfframp(Offramp):
    name = "redis"
    Config = RedisOfframpConfig
    summary = "write records to Redis (XADD to a stream, LPUSH/RPUSH to a list, PUBLISH); one pipeline per batch, retried whole"
    example = "{type: redis, codec: json, config: {url: 'redis://127.0.0.1:6379/0', key: events}}"
    coalesce_events = 4096

    def __init__(self, config: RedisOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.client: Any = None

    async def start(self) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the redis offramp needs the redis package: pip install 'headrace[redis]'") from exc
        self.client = aioredis.Redis.from_url(self.cfg.url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        if self.client is None:
            await self.start()
        cfg = self.cfg
        keys = destinations(self.cfg.key, self.cfg.key_from_meta, len(chunks), metas if len(chunks) == events else None)
        async with self.client.pipeline(transaction=False) as pipe:
            if cfg.mode == "xadd":
                field = cfg.field
                for key, data in zip(keys, chunks, strict=True):
                    pipe.xadd(key, {field: data}, maxlen=cfg.maxlen, approximate=True)
            elif cfg.mode == "publish":
                for key, data in zip(keys, chunks, strict=True):
                    pipe.publish(key, data)
            else:
                push = pipe.lpush if cfg.mode == "lpush" else pipe.rpush
                if cfg.key_from_meta is None:
                    push(cfg.key, *chunks)
                else:
                    for key, data in zip(keys, chunks, strict=True):
                        push(key, data)
            await pipe.execute()
        return None
