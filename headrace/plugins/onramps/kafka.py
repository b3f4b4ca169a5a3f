"""``type: kafka``: consume a topic as a member of a consumer group, at least once.

Records are read in batches (``getmany``); each batch of one partition is one ack
token. Offsets are committed per partition as the low watermark of contiguous done
batches (on an interval, on revoke, and on stop) and never past an undelivered
record. When the graph is full the partitions are paused; on revoke the onramp stops
dispatching them, waits a bounded time for their in-flight events, commits what is
done, and forgets them (late acks of partitions no longer owned are dropped).

Each event's meta: ``kafka_topic`` (str), ``kafka_partition``, ``kafka_offset`` (int),
``kafka_timestamp`` (int, milliseconds since the epoch), ``kafka_key`` and
``kafka_headers`` (a dict of header name to value). **Keys and header values are bytes**
(``None`` for a record without a key), as Kafka carries them: compare them with bytes
(``meta['kafka_key'] == b'k1'``) or decode them (``meta['kafka_key'].decode()``). Written
as JSON (an offramp's ``with_meta: true``, or bytes a stage put into an event), bytes
become their text when they are valid UTF-8, else ``{"base64": "..."}`` (codec ``json``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

from pydantic import Field

from headrace.contract.backoff import Backoff
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import COLUMN, CONST, MetaColumns, Metas, header_dict
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration, Size

log = logging.getLogger("headrace.kafka")


# consumer options headrace sets itself: the group and its timing, where to start, and commits
CONSUMER_MANAGED = ("topics", "bootstrap_servers", "group_id", "enable_auto_commit", "auto_offset_reset", "session_timeout_ms",
                    "heartbeat_interval_ms", "key_deserializer", "value_deserializer")  # fmt: skip


class KafkaOnrampConfig(PluginConfig):
    brokers: list[str] | str = Field(description="bootstrap servers, host:port (a list or a comma-separated string)")
    topics: list[str] = Field(min_length=1, description="topics to consume")
    group_id: str = Field(min_length=1, description="consumer group; instances with the same group share the partitions")
    offset_reset: Literal["earliest", "latest"] = Field("earliest", description="where to start without a committed offset")
    batch: int = Field(500, ge=1, le=100_000, description="records per getmany call")
    max_record_bytes: Size = Field(
        8 * 2**20, ge=1, description="larger records go to err with a 4 KiB sample (the client still fetched them: Kafka sends a record whole)"
    )
    commit_interval: Duration = Field(1.0, gt=0, description="how often done offsets are committed")
    revoke_timeout: Duration = Field(10.0, ge=0, description="on rebalance: how long to wait for in-flight events of revoked partitions")
    session_timeout: Duration = Field(10.0, gt=0, description="group session timeout (failover time of a dead instance)")
    heartbeat_interval: Duration = Field(3.0, gt=0, description="group heartbeat interval")
    client: dict[str, Any] = Field(default_factory=dict, description="extra AIOKafkaConsumer options (TLS/SASL: security_protocol, sasl_mechanism, ...)")


_VALUE = attrgetter("value")
_KEY = attrgetter("key")
_HEADERS = attrgetter("headers")
_TIMESTAMP = attrgetter("timestamp")
_OFFSET = attrgetter("offset")


def columns(tp: Any, msgs: list[Any]) -> tuple[list[bytes], MetaColumns]:
    """The payloads of one partition's records and their metas as columns: topic and partition
    once, offsets as a range when consecutive; no Python step per record (``map`` of getters)."""
    payloads = list(map(_VALUE, msgs))
    if not all(payloads):  # a tombstone (no value) is an empty record (all(): 6 ns an item, `None in`: 22)
        payloads = [b"" if p is None else p for p in payloads]
    n = len(msgs)
    first, last = msgs[0].offset, msgs[-1].offset
    offsets = range(first, last + 1) if last - first + 1 == n else list(map(_OFFSET, msgs))
    metas = MetaColumns(n, [
        ("kafka_topic", CONST, tp.topic), ("kafka_partition", CONST, tp.partition), ("kafka_offset", COLUMN, offsets),
        ("kafka_key", COLUMN, list(map(_KEY, msgs))), ("kafka_headers", COLUMN, list(map(_HEADERS, msgs)), header_dict),
        ("kafka_timestamp", COLUMN, list(map(_TIMESTAMP, msgs))),
    ])  # fmt: skip
    return payloads, metas


@dataclass
class PartitionTrack:
    """Dispatched offset ranges of one partition, in order; the committable watermark."""

    epoch: int
    pending: deque[list[Any]] = field(default_factory=deque)  # [first, last, done]
    watermark: int | None = None  # next offset to commit (all before it are done)
    committed: int | None = None
    next_offset: int | None = None  # the offset after the last one dispatched

    def dispatched(self, first: int, last: int) -> list[Any]:
        entry = [first, last, False]
        if self.watermark is None:
            self.watermark = first
        self.pending.append(entry)
        self.next_offset = last + 1
        return entry

    def advance(self) -> None:
        while self.pending and self.pending[0][2]:
            self.watermark = self.pending.popleft()[1] + 1

    def settled_pending(self) -> int:
        """Ranges not done yet (advances first: acks of a revoked partition no longer advance its track)."""
        self.advance()
        return len(self.pending)


class KafkaOnramp(Onramp):
    name = "kafka"
    Config = KafkaOnrampConfig
    summary = "consume Kafka topics in a consumer group; commits the low watermark of delivered offsets"
    example = "{type: kafka, codec: json, config: {brokers: [127.0.0.1:9092], topics: [logs], group_id: headrace}}"

    def __init__(self, config: KafkaOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.consumer: Any = None
        self.read_factor = 1.0  # under memory pressure: a share of the usual getmany size and fetch sizes
        self._fetch_sizes: tuple[int, int] | None = None  # the fetcher's own (max, per partition), kept to restore them
        self.tracks: dict[Any, PartitionTrack] = {}
        self.revoked: dict[Any, PartitionTrack] = {}  # tracks of the rebalance under way
        self._committed_task: asyncio.Future[None] | None = None
        self.epoch = 0
        self.paused = False
        self._commit_task: asyncio.Task[None] | None = None
        self.metrics = context.metrics

    def check(self) -> None:
        from aiokafka import AIOKafkaConsumer  # a missing dependency is a config error, found by check

        from headrace.plugins.kafka_client import check_client_options

        check_client_options(AIOKafkaConsumer, self.cfg.client, CONSUMER_MANAGED)

    @property
    def brokers(self) -> list[str]:
        b = self.cfg.brokers
        return [x.strip() for x in b.split(",")] if isinstance(b, str) else list(b)

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        onramp = self

        from aiokafka.abc import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await onramp._revoked(set(revoked))

            async def on_partitions_assigned(self, assigned: Any) -> None:
                onramp._assigned(set(assigned))

        backoff = Backoff(0.5, 10.0)
        while True:
            self.consumer = AIOKafkaConsumer(
                bootstrap_servers=self.brokers,
                group_id=self.cfg.group_id,
                enable_auto_commit=False,
                auto_offset_reset=self.cfg.offset_reset,
                session_timeout_ms=int(self.cfg.session_timeout * 1000),
                heartbeat_interval_ms=int(self.cfg.heartbeat_interval * 1000),
                **self.cfg.client,
            )
            self.consumer.subscribe(self.cfg.topics, listener=Listener())
            try:
                await self.consumer.start()
                break
            except Exception as exc:  # broker absent: wait, not ready, try again
                delay = backoff.next()
                log.warning("kafka onramp %s: cannot connect to %s (%s); retrying in %.1fs", self.context.component_id, self.brokers, exc, delay)
                await self.consumer.stop()
                await asyncio.sleep(delay)
        self._commit_task = asyncio.create_task(self._commit_loop())
        self.ready = True

    # -- group membership ------------------------------------------------------------------------
    def _assigned(self, assigned: set[Any]) -> None:
        revoked, self.revoked = self.revoked, {}
        for tp in assigned:
            if tp in self.tracks:
                continue
            track = revoked.get(tp)
            if track is not None and track.next_offset is not None and self.consumer is not None:
                # back to us in the same rebalance: what we dispatched is still ours (its acks still
                # count); read on after it instead of again from the committed offset
                self.tracks[tp] = track
                self.consumer.seek(tp, track.next_offset)
                continue
            self.epoch += 1
            self.tracks[tp] = PartitionTrack(self.epoch)
        if self.metrics is not None and assigned:
            self._committed_task = asyncio.ensure_future(self._show_committed(assigned))
        log.info("kafka onramp %s: assigned %s", self.context.component_id, sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))

    async def _show_committed(self, assigned: set[Any]) -> None:
        """The group's committed offsets of newly assigned partitions, shown before this instance
        commits anything itself (after a restart the gauge would be absent until then)."""
        for tp in assigned:
            track = self.tracks.get(tp)
            if track is None or track.committed is not None or self.consumer is None:
                continue
            try:
                offset = await asyncio.wait_for(self.consumer.committed(tp), 5.0)
            except Exception:  # revoked meanwhile, or the broker is slow: the next commit shows it
                continue
            if offset is not None and tp in self.tracks and self.tracks[tp].committed is None and self.metrics is not None:
                self.metrics["headrace_kafka_committed_offset"].labels(tp.topic, str(tp.partition)).set(offset)

    async def _revoked(self, revoked: set[Any]) -> None:
        tracks = {tp: self.tracks[tp] for tp in revoked if tp in self.tracks}
        for tp in revoked:  # stop dispatching them; late acks find no track and are dropped
            self.tracks.pop(tp, None)
        self.revoked = dict(tracks)  # the assignment that ends this rebalance may give some of them back
        deadline = asyncio.get_running_loop().time() + self.cfg.revoke_timeout
        while any(t.settled_pending() for t in tracks.values()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await self._commit(tracks)
        self._forget_series(revoked)
        if revoked:
            log.info("kafka onramp %s: revoked %s", self.context.component_id, sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))

    def _forget_series(self, partitions: set[Any]) -> None:
        """Lag and committed offset of partitions this instance no longer owns leave /metrics."""
        if self.metrics is None:
            return
        for tp in partitions:
            for name in ("headrace_kafka_consumer_lag", "headrace_kafka_committed_offset"):
                try:
                    self.metrics[name].remove(tp.topic, str(tp.partition))
                except KeyError:
                    pass

    # -- intake --------------------------------------------------------------------------------
    async def run(self, sink: OnrampSink) -> None:
        consumer = self.consumer
        while True:
            data = await consumer.getmany(timeout_ms=200, max_records=max(1, int(self.cfg.batch * self.read_factor)))
            for tp, msgs in data.items():
                track = self.tracks.get(tp)
                if track is None or not msgs:
                    continue
                entry = track.dispatched(msgs[0].offset, msgs[-1].offset)
                payloads, metas = columns(tp, msgs)
                limit = self.cfg.max_record_bytes
                refused = None
                if max(map(len, payloads)) > limit:
                    refused = {i: f"record of {len(p)} bytes exceeds max_record_bytes {limit}" for i, p in enumerate(payloads) if len(p) > limit}
                await self._hand_over(sink, payloads, metas, (tp, track.epoch, entry), (tp.topic, tp.partition), refused)

    async def _hand_over(self, sink: OnrampSink, payloads: list[bytes], metas: Metas, token: Any, group: Any,
                         refused: dict[int, str] | None = None) -> None:  # fmt: skip
        """Give records to the graph; while it is full, the partitions are paused."""
        put = asyncio.ensure_future(sink.records(payloads, metas, ack=token, group=group, refused=refused or None))
        done, _ = await asyncio.wait({put}, timeout=0.05)
        if not done:
            parts = list(self.consumer.assignment())
            self.consumer.pause(*parts)
            self.paused = True
            try:
                await put
            finally:
                self.consumer.resume(*[tp for tp in parts if tp in self.consumer.assignment()])
                self.paused = False
        else:
            put.result()

    def read_less(self, factor: float) -> None:
        """Fewer records per getmany, and smaller fetches ahead (aiokafka's fetcher buffers one per partition)."""
        self.read_factor = factor
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is None or not hasattr(fetcher, "_fetch_max_bytes") or not hasattr(fetcher, "_max_partition_fetch_bytes"):
            return
        if self._fetch_sizes is None:
            self._fetch_sizes = (fetcher._fetch_max_bytes, fetcher._max_partition_fetch_bytes)
        whole, part = self._fetch_sizes
        fetcher._fetch_max_bytes = max(64 * 1024, int(whole * factor))
        fetcher._max_partition_fetch_bytes = max(64 * 1024, int(part * factor))

    def ack(self, token: Any) -> None:
        tp, epoch, entry = token
        track = self.tracks.get(tp)
        entry[2] = True
        if track is not None and track.epoch == epoch:
            track.advance()

    def fail(self, token: Any) -> None:
        tp, _epoch, entry = token
        log.error("kafka onramp %s: records %s/%d offsets %d..%d were not delivered; they will not be committed (redelivered after a restart or rebalance)",
                  self.context.component_id, tp.topic, tp.partition, entry[0], entry[1])  # fmt: skip

    # -- commits -------------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.commit_interval)
            await self._commit(dict(self.tracks))
            await self._lag()

    async def _commit(self, tracks: dict[Any, PartitionTrack]) -> None:
        from aiokafka.errors import CommitFailedError, KafkaError
        from aiokafka.structs import OffsetAndMetadata

        offsets = {}
        for tp, t in tracks.items():
            t.advance()
            if t.watermark is not None and t.watermark != t.committed:
                offsets[tp] = OffsetAndMetadata(t.watermark, "")
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError as exc:
            log.warning("kafka onramp %s: commit failed during a rebalance (%s); the records will be redelivered", self.context.component_id, exc)
            return
        except KafkaError as exc:
            log.warning("kafka onramp %s: commit failed: %s", self.context.component_id, exc)
            return
        for tp, om in offsets.items():
            tracks[tp].committed = om.offset
            if self.metrics is not None:
                self.metrics["headrace_kafka_committed_offset"].labels(tp.topic, str(tp.partition)).set(om.offset)

    async def _lag(self) -> None:
        """Lag per partition from the fetch high watermark (tansu's end offsets are unreliable)."""
        if self.metrics is None or self.consumer is None:
            return
        gauge = self.metrics["headrace_kafka_consumer_lag"]
        for tp in list(self.tracks):
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = await asyncio.wait_for(self.consumer.position(tp), 1.0)
            except Exception:  # partition revoked meanwhile, or no position yet
                continue
            if tp not in self.tracks:  # revoked while we asked
                continue
            gauge.labels(tp.topic, str(tp.partition)).set(max(high - pos, 0))

    async def stop(self) -> None:
        if self._committed_task is not None:
            self._committed_task.cancel()
        if self._commit_task is not None:
            self._commit_task.cancel()
        if self.consumer is not None:
            await self._commit(dict(self.tracks))
            await self.consumer.stop()
            self.consumer = None
        # a start after this (the runtime restarting a failed source) begins from the group's
        # committed offsets: ranges this consumer dispatched, failed ones included, are read again
        self.tracks.clear()
        self.revoked.clear()
