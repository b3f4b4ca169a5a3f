"""``type: kafka``: produce records to Kafka in batches; delivery reports drive the acks.

Records are grouped per topic and partition into producer batches (``send_batch``);
the batch is accepted when the broker acknowledged every record (``acks: all`` by
default). A record larger than ``max_message_bytes`` is rejected to the offramp's
``err`` port before it is sent. Failed sends raise, so the runtime retries the batch
with backoff and nothing upstream is acked (or committed) meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from headrace.config.expr import compile_expr
from headrace.config.units import Duration, Size
from headrace.plugins.base import Offramp, PluginConfig, PluginContext, Rejections

log = logging.getLogger("headrace.kafka")
PARTITIONS_TTL = 30.0


# producer options headrace sets itself from the offramp's settings
PRODUCER_MANAGED = ("bootstrap_servers", "acks", "linger_ms", "max_batch_size", "max_request_size", "compression_type",
                    "request_timeout_ms", "enable_idempotence", "key_serializer", "value_serializer", "partitioner")  # fmt: skip


class KafkaOfframpConfig(PluginConfig):
    brokers: list[str] | str = Field(description="bootstrap servers, host:port")
    topic: str | None = Field(None, description="fixed topic (or use topic_expr)")
    topic_expr: str | None = Field(None, description="expression over meta giving the topic per record")
    key: str | None = Field(None, description="expression over meta giving the key; default meta['kafka_key']")
    headers: str | None = Field(None, description="expression over meta giving a dict of headers")
    acks: Literal["all", 0, 1] = Field("all", description="broker acknowledgements required per record")
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = Field("none", description="gzip always; others need their Python library")
    linger: Duration = Field(0.005, description="producer linger time")
    batch_bytes: Size = Field(512 * 1024, ge=1024, description="producer batch size")
    max_message_bytes: Size = Field(1_000_000, ge=1, description="larger records go to err")
    request_timeout: Duration = Field(30.0, gt=0, description="per request")
    client: dict[str, Any] = Field(default_factory=dict, description="extra AIOKafkaProducer options (TLS/SASL)")


def _to_bytes(v: Any) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    return str(v).encode()


class KafkaOfframp(Offramp):
    name = "kafka"
    Config = KafkaOfframpConfig
    summary = "produce records to Kafka (batched, acks=all); too-large records go to err"
    example = "{type: kafka, codec: json, config: {brokers: [127.0.0.1:9092], topic: out}}"
    coalesce_events = 4096  # small batches (jobs of a slow stage) would each wait for a produce round trip

    def __init__(self, config: KafkaOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.producer: Any = None
        self.topic_fn: Callable[..., Any] | None = compile_expr(config.topic_expr, ("meta",)) if config.topic_expr else None
        self.key_fn: Callable[..., Any] | None = compile_expr(config.key, ("meta",)) if config.key else None
        self.headers_fn: Callable[..., Any] | None = compile_expr(config.headers, ("meta",)) if config.headers else None
        self._rr = itertools.count()
        self._parts: dict[str, tuple[float, list[int]]] = {}
        self.partitioner: Any = None

    def check(self) -> None:
        if (self.cfg.topic is None) == (self.cfg.topic_expr is None):
            raise ValueError("set exactly one of topic and topic_expr")
        from aiokafka import AIOKafkaProducer

        from headrace.plugins.kafka_client import check_client_options

        check_client_options(AIOKafkaProducer, self.cfg.client, PRODUCER_MANAGED)

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.partitioner import DefaultPartitioner

        b = self.cfg.brokers
        brokers = [x.strip() for x in b.split(",")] if isinstance(b, str) else list(b)

        def make() -> AIOKafkaProducer:
            return AIOKafkaProducer(
                bootstrap_servers=brokers, acks=self.cfg.acks, linger_ms=int(self.cfg.linger * 1000),
                max_batch_size=self.cfg.batch_bytes, max_request_size=max(self.cfg.max_message_bytes * 2, self.cfg.batch_bytes * 2),
                compression_type=None if self.cfg.compression == "none" else self.cfg.compression,
                request_timeout_ms=int(self.cfg.request_timeout * 1000), enable_idempotence=False, **self.cfg.client,
            )  # fmt: skip

        self.producer = make()
        self.partitioner = DefaultPartitioner()
        backoff_s = 0.5
        while True:
            try:
                await self.producer.start()
                return
            except Exception as exc:
                log.warning("kafka offramp %s: cannot connect (%s); retrying", self.context.component_id, exc)
                await self.producer.stop()
                self.producer = make()  # the same options as the first one (a stopped producer cannot start again)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 10)

    async def _partitions(self, topic: str) -> list[int]:
        """Partitions of ``topic``, cached for ``PARTITIONS_TTL`` seconds."""
        now = time.monotonic()
        cached = self._parts.get(topic)
        if cached is None or now - cached[0] > PARTITIONS_TTL:
            cached = self._parts[topic] = (now, sorted(await self.producer.partitions_for(topic)))
        return cached[1]

    def _partition(self, parts: list[int], key: bytes | None, keyless: int) -> int:
        if key is None:  # keyless records of one batch go together, batches round-robin
            return parts[keyless % len(parts)]
        return int(self.partitioner(key, parts, parts))

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        assert self.producer is not None, "start() was not called"
        rejected: list[tuple[int, str]] = []
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]] = {}
        keyless = next(self._rr)
        last_topic: str | None = None
        parts: list[int] = []
        for i, value in enumerate(chunks):
            meta = metas[i] if metas is not None and i < len(metas) else {}
            if len(value) > self.cfg.max_message_bytes:
                rejected.append((i, f"record of {len(value)} bytes exceeds max_message_bytes {self.cfg.max_message_bytes}"))
                continue
            try:
                topic = str(self.topic_fn(meta)) if self.topic_fn else str(self.cfg.topic)
                key = _to_bytes(self.key_fn(meta) if self.key_fn else meta.get("kafka_key"))
                hdrs = self.headers_fn(meta) if self.headers_fn else {}
                headers = [(str(k), _to_bytes(v) or b"") for k, v in (hdrs or {}).items()]
            except Exception as exc:
                rejected.append((i, f"topic/key/headers expression failed: {type(exc).__name__}: {exc}"))
                continue
            if topic != last_topic:
                last_topic, parts = topic, await self._partitions(topic)
            part = self._partition(parts, key, keyless)
            groups.setdefault((topic, part), []).append((key, value, headers))
        futures = []
        for (topic, part), records in groups.items():
            batch = self.producer.create_batch()
            for key, value, headers in records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await self.producer.send_batch(batch, topic, partition=part))
                    batch = self.producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
            if batch.record_count():
                futures.append(await self.producer.send_batch(batch, topic, partition=part))
        if futures:
            await asyncio.gather(*futures)  # raises on a failed delivery: the runtime retries the batch
        return rejected or None

    async def flush(self) -> None:
        if self.producer is not None:
            await self.producer.flush()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
