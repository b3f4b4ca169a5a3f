"""``type: kafka``: produce records to Kafka in batches; delivery reports drive the acks.

Records are grouped per topic and partition into producer batches (``send_batch``).

The record key is ``meta['kafka_key']`` (what the Kafka onramp read: bytes) or what the
``key`` expression gives; ``headers`` gives a dict of name to value. Bytes are sent as
they are, ``None`` as no key (an empty header value), anything else as its text in UTF-8.

**Confirmed** means: the broker acknowledged the record's produce request with the
configured ``acks`` (``all`` by default: every in-sync replica has it; with ``acks: 0``
nothing is confirmed: the record counts once the client sent it). Per topic and
partition: a send that failed is retried with backoff, alone, while what other
partitions confirmed is done and never sent again; nothing upstream of a failed record
is acked (or committed) meanwhile.

To the ``err`` port, with the reason, go records that can never be produced: larger than
``max_message_bytes``; a ``topic_expr``, ``key`` or ``headers`` expression that fails; a
topic that is not a valid Kafka topic name (1 to 249 of ``a-z A-Z 0-9 . _ -``, not ``.``
or ``..``; ``None`` is not a topic); and records the broker refuses for good (too large
for it, corrupt, invalid topic).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr import compile_expr
from headrace.contract.metas import MetaColumns, Metas
from headrace.contract.paths import SettingError
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.units import Duration, Size

log = logging.getLogger("headrace.kafka")
PARTITIONS_TTL = 30.0
KEY_MEMO = 65_536  # keys whose partition hash is remembered
NO_HEADERS: list[tuple[str, bytes]] = []  # shared by records without headers (the producer only reads it)
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
# broker answers that sending the same records again cannot change
FINAL_ERRORS = frozenset({"MessageSizeTooLargeError", "RecordListTooLargeError", "InvalidTopicError", "CorruptRecordException",
                          "UnsupportedForMessageFormatError", "RecordTooLargeError"})  # fmt: skip

Record = tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]  # (event index, key, value, headers)
Groups = dict[tuple[str, int], list[Record]]  # records by (topic, partition), in the order written
_PLAIN_KEYS = frozenset({bytes, type(None)})  # keys the producer takes as they are


def topic_problem(topic: Any) -> str | None:
    """Why ``topic`` cannot be a Kafka topic name, or None when it can."""
    if not isinstance(topic, str):
        return f"the topic is {topic!r}, not a string"
    if not _TOPIC.fullmatch(topic) or topic in (".", ".."):
        return f"{topic[:300]!r} is not a valid Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, not . or ..)"
    return None


# producer options headrace sets itself from the offramp's settings
PRODUCER_MANAGED = ("bootstrap_servers", "acks", "linger_ms", "max_batch_size", "max_request_size", "compression_type",
                    "request_timeout_ms", "enable_idempotence", "key_serializer", "value_serializer", "partitioner")  # fmt: skip


class IdempotenceRefused(RuntimeError):
    """The broker does not give the idempotent producer what it needs to start."""


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
    max_in_flight: int = Field(4, ge=1, le=64, description="writes awaiting the broker's confirmation at once; records are handed to "
                                                          "the producer in order (order per partition holds; after a failed write "
                                                          "its retry may follow later records)")
    idempotence: bool = Field(False, description="the idempotent producer: the client's own retries can neither duplicate nor reorder "
                                                 "records of a partition (needs acks: all; headrace's retry of a failed write still "
                                                 "may duplicate: at least once)")
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
        self._hashes: dict[bytes, int] = {}  # key -> its murmur2 hash (pure Python, ~5 us a call): keys repeat
        self.max_in_flight = config.max_in_flight
        self.linger = config.linger  # while a produce is in flight, the next write gathers what arrives meanwhile
        self._handing = asyncio.Lock()  # writes hand their records to the producer one after the other, in call order

    def check(self) -> None:
        if (self.cfg.topic is None) == (self.cfg.topic_expr is None):
            raise ValueError("set exactly one of topic and topic_expr")
        problem = topic_problem(self.cfg.topic) if self.cfg.topic is not None else None
        if problem is not None:
            raise ValueError(problem)
        if self.cfg.idempotence and self.cfg.acks != "all":
            raise SettingError("idempotence", f"needs acks: all (the idempotent producer waits for every replica), not acks: {self.cfg.acks}")
        from aiokafka import AIOKafkaProducer

        from headrace.plugins.kafka_client import check_client_options

        check_client_options(AIOKafkaProducer, self.cfg.client, PRODUCER_MANAGED)

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        b = self.cfg.brokers
        brokers = [x.strip() for x in b.split(",")] if isinstance(b, str) else list(b)

        def make() -> AIOKafkaProducer:
            return AIOKafkaProducer(
                bootstrap_servers=brokers, acks=self.cfg.acks, linger_ms=int(self.cfg.linger * 1000),
                max_batch_size=self.cfg.batch_bytes, max_request_size=max(self.cfg.max_message_bytes * 2, self.cfg.batch_bytes * 2),
                compression_type=None if self.cfg.compression == "none" else self.cfg.compression,
                request_timeout_ms=int(self.cfg.request_timeout * 1000), enable_idempotence=self.cfg.idempotence, **self.cfg.client,
            )  # fmt: skip

        self.producer = make()
        backoff_s = 0.5
        while True:
            try:
                await self._start_producer()
                return
            except IdempotenceRefused:
                await self.producer.stop()
                raise
            except Exception as exc:
                log.warning("kafka offramp %s: cannot connect (%s); retrying", self.context.component_id, exc)
                await self.producer.stop()
                self.producer = make()  # the same options as the first one (a stopped producer cannot start again)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 10)

    async def _start_producer(self) -> None:
        """Start the producer; the idempotent one first asks the broker for a producer id, which the
        client would wait for forever from a broker that does not grant one."""
        if not self.cfg.idempotence:
            await self.producer.start()
            return
        from aiokafka.errors import KafkaConnectionError, KafkaError

        try:
            await asyncio.wait_for(self.producer.start(), self.cfg.request_timeout + 5)
        except TimeoutError:
            why = f"granted no producer id (InitProducerId) in {self.cfg.request_timeout + 5:g}s"
        except KafkaConnectionError:
            raise  # not reachable yet: retried
        except KafkaError as exc:  # the broker answered, and refused
            why = f"granted no producer id (InitProducerId: {type(exc).__name__}: {exc})"
        else:
            return
        raise IdempotenceRefused(f"idempotence: the broker {why}: it may not support idempotent producers; set idempotence: false")

    async def _partitions(self, topic: str) -> list[int]:
        """Partitions of ``topic``, cached for ``PARTITIONS_TTL`` seconds."""
        now = time.monotonic()
        cached = self._parts.get(topic)
        if cached is None or now - cached[0] > PARTITIONS_TTL:
            cached = self._parts[topic] = (now, sorted(await self.producer.partitions_for(topic)))
        return cached[1]

    def _partition(self, parts: list[int], key: bytes | None, keyless: int) -> int:
        """Kafka's default partitioner: murmur2 of the key (positive) modulo the partition count."""
        if key is None:  # keyless records of one batch go together, batches round-robin
            return parts[keyless % len(parts)]
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= KEY_MEMO:  # keys that never repeat (ids): bounded, not an ever-growing cache
                self._hashes.clear()
            from aiokafka.partitioner import murmur2

            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return parts[h % len(parts)]

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        assert self.producer is not None, "start() was not called"
        rejected: list[tuple[int, str]] = []
        async with self._handing:  # in call order: records reach the producer (and each partition) in the order written
            keyless = next(self._rr)
            if self.topic_fn is None and self.key_fn is None and self.headers_fn is None and self.cfg.topic is not None:
                groups = await self._group_plain(chunks, metas, keyless, rejected)
            else:
                groups = await self._group_by_meta(chunks, metas, keyless, rejected)
            sends, failure = await self._send(groups)
        results = await asyncio.gather(*(f for f, _ in sends), return_exceptions=True)
        delivered: list[int] = []
        for (_, idx), result in zip(sends, results, strict=True):
            if not isinstance(result, BaseException):
                delivered += idx
            elif type(result).__name__ in FINAL_ERRORS:
                rejected += [(i, f"the broker refused the record: {type(result).__name__}: {result}") for i in idx]
            else:
                failure = failure or result
        if failure is None:
            return rejected or None
        self._parts.clear()  # partitions may have changed (a topic recreated): the retry asks again
        if not delivered and not rejected:
            raise failure
        raise PartialWrite(failure, delivered, rejected)

    async def _group_plain(self, chunks: list[bytes], metas: Metas | None, keyless: int, rejected: list[tuple[int, str]]) -> Groups:
        """The common case, one topic and the key the source read: the keys as one column (no meta
        dict is built), a step per record only to place it in its partition's group."""
        topic = self.cfg.topic
        assert topic is not None
        parts = await self._partitions(topic)
        n = len(chunks)
        if metas is None:
            keys: Sequence[Any] = [None] * n
        elif isinstance(metas, MetaColumns):
            keys = metas.column("kafka_key") if "kafka_key" in metas.names else [None] * len(metas)
        else:
            keys = [m.get("kafka_key") for m in metas]
        if len(keys) < n:
            keys = [*keys, *[None] * (n - len(keys))]
        if not _PLAIN_KEYS.issuperset(map(type, keys)):
            keys = list(map(_to_bytes, keys))
        limit = self.cfg.max_message_bytes
        big = n > 0 and max(map(len, chunks)) > limit
        by_part: dict[int, list[Record]] = {}
        partition = self._partition
        for i, key, value in zip(range(n), keys, chunks):  # noqa: B905  (keys may be longer)
            if big and len(value) > limit:
                rejected.append((i, self._oversize(value)))
                continue
            p = partition(parts, key, keyless)
            g = by_part.get(p)
            if g is None:
                g = by_part[p] = []
            g.append((i, key, value, NO_HEADERS))
        return {(topic, p): g for p, g in by_part.items()}

    def _oversize(self, value: bytes) -> str:
        return f"record of {len(value)} bytes exceeds max_message_bytes {self.cfg.max_message_bytes}"

    async def _group_by_meta(self, chunks: list[bytes], metas: Metas | None, keyless: int, rejected: list[tuple[int, str]]) -> Groups:
        """Records by (topic, partition) when a topic, key or headers expression reads each meta."""
        groups: Groups = {}
        last_topic: str | None = None
        parts: list[int] = []
        for i, value in enumerate(chunks):
            meta = metas[i] if metas is not None and i < len(metas) else {}
            if len(value) > self.cfg.max_message_bytes:
                rejected.append((i, self._oversize(value)))
                continue
            try:
                topic = self.topic_fn(meta) if self.topic_fn else self.cfg.topic
                key = _to_bytes(self.key_fn(meta) if self.key_fn else meta.get("kafka_key"))
                hdrs = self.headers_fn(meta) if self.headers_fn else None
                headers = [(str(k), _to_bytes(v) or b"") for k, v in hdrs.items()] if hdrs else NO_HEADERS
            except Exception as exc:
                rejected.append((i, f"topic/key/headers expression failed: {type(exc).__name__}: {exc}"))
                continue
            if topic != last_topic or last_topic is None:  # a topic is checked once per run of records to it
                problem = topic_problem(topic)
                if problem is not None:  # the broker would refuse it for good; the client would wait for it forever
                    rejected.append((i, problem))
                    continue
                assert isinstance(topic, str)
                last_topic, parts = topic, await self._partitions(topic)
            assert last_topic is not None
            groups.setdefault((last_topic, self._partition(parts, key, keyless)), []).append((i, key, value, headers))
        return groups

    async def _send(self, groups: dict[tuple[str, int], list[Record]]) -> tuple[list[tuple[Any, list[int]]], BaseException | None]:
        """Hand each partition's records to the producer: (delivery future, event indexes) per
        producer batch, and why some partition's records could not be handed over (they are
        in no future)."""
        sends: list[tuple[Any, list[int]]] = []
        failure: BaseException | None = None
        for (topic, part), records in groups.items():
            batch = self.producer.create_batch()
            idx: list[int] = []
            try:
                for i, key, value, headers in records:
                    if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                        sends.append((await self.producer.send_batch(batch, topic, partition=part), idx))
                        batch, idx = self.producer.create_batch(), []
                        batch.append(key=key, value=value, timestamp=None, headers=headers)
                    idx.append(i)
                if batch.record_count():
                    sends.append((await self.producer.send_batch(batch, topic, partition=part), idx))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # this partition could not be sent to (metadata, unknown partition): the others still are
                failure = failure or exc
        return sends, failure

    async def flush(self) -> None:
        if self.producer is not None:
            await self.producer.flush()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
