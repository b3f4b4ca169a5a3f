"""The Kafka offramp's refusals and partial sends (issue 12: item 5's class and the "Also" list)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from headrace.contract.context import PluginContext
from headrace.contract.sink import PartialWrite
from headrace.plugins.offramps.kafka import KafkaOfframp, KafkaOfframpConfig, topic_problem
from tests.support.daemon import Daemon
from tests.support.kafka_broker import KafkaBroker

TOPIC_STAGE = '''
def topic(event, meta):
    meta["t"] = event["t"]
    return event
'''


def test_records_whose_topic_expr_gives_an_invalid_name_go_to_err(tmp_path: Path, write: Any, kafka_broker: KafkaBroker,
                                                                  kafka_topic: Any) -> None:  # fmt: skip
    """A topic_expr giving an invalid name stalled the offramp forever (the client waits for metadata
    of a topic the broker will never have). Such records go to err; the others are produced."""
    good = kafka_topic(1, prefix="valid")
    bad = {1: "bad topic!", 3: "", 5: "x" * 250, 7: "..", 9: None}
    write("stage.py", TOPIC_STAGE)
    write("in.ndjson", "".join(json.dumps({"id": i, "t": bad.get(i, good)}) + "\n" for i in range(10)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
pipelines: {{main: [{{op: python, fn: "stage:topic"}}]}}
offramps:
  out: {{type: kafka, config: {{brokers: "{kafka_broker.bootstrap}", topic_expr: "meta['t']", request_timeout: 5s}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], main: [out], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    try:
        assert d.wait(30) == 0, d.stderr()
    finally:
        d.stop()
    got = sorted(json.loads(r.value)["id"] for r in kafka_broker.consume_all(good, 5, timeout=30, to_end=True))
    assert got == [0, 2, 4, 6, 8]
    dead = {json.loads(x)["event"]["id"]: json.loads(x)["meta"]["error"]["message"] for x in (tmp_path / "dlq.ndjson").read_text().splitlines()}
    assert sorted(dead) == sorted(bad), dead
    assert "not a valid Kafka topic name" in dead[1] and "None, not a string" in dead[9]


@pytest.mark.parametrize(("topic", "ok"), [("orders", True), ("a.b_c-1", True), ("", False), (".", False), ("..", False),
                                           ("a" * 249, True), ("a" * 250, False), ("a b", False), ("ü", False), (3, False)])  # fmt: skip
def test_topic_names_follow_kafka_rules(topic: Any, ok: bool) -> None:
    assert (topic_problem(topic) is None) == ok


def test_an_invalid_fixed_topic_is_a_config_error(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: stdin}}
offramps: {out: {type: kafka, config: {brokers: "127.0.0.1:9", topic: "no spaces"}}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78 and "not a valid Kafka topic name" in res.stderr.decode()


class FailingPartitionProducer:
    """The producer surface the offramp uses, with partition 1 failing: tansu accepts a produce to
    any partition and any size, so a real broker here cannot refuse one partition and not another."""

    def __init__(self) -> None:
        self.sent: dict[int, list[bytes]] = {}

    def create_batch(self) -> Any:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if partition == 1:
            fut.set_exception(ConnectionError("partition 1 leader unreachable"))
        else:
            self.sent.setdefault(partition, []).extend(batch.values)
            fut.set_result(object())
        return fut

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}


class _Batch:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any) -> object:
        self.values.append(value)
        return object()

    def record_count(self) -> int:
        return len(self.values)


def test_one_partition_failing_does_not_send_the_others_again() -> None:
    """Issue 12 item 5's class in the Kafka offramp: one partition's send failed while the others were
    acknowledged, and the write raised, so the runtime sent the whole batch again."""
    off = KafkaOfframp(KafkaOfframpConfig(brokers="127.0.0.1:9", topic="t", key="meta['k']"), PluginContext("out", Path(".")))
    off.producer = FailingPartitionProducer()
    off._partition = lambda parts, key, keyless: int(key) % 3  # type: ignore[method-assign]
    chunks = [f"r{i}".encode() for i in range(9)]
    metas = [{"k": str(i)} for i in range(9)]
    with pytest.raises(PartialWrite) as info:
        asyncio.run(off.write(chunks, 9, [0] * 9, metas))
    assert info.value.delivered == [0, 2, 3, 5, 6, 8], "partitions 0 and 2 are done: the retry must not send them again"
    assert info.value.rejected == [] and isinstance(info.value.cause, ConnectionError)


def test_keys_go_where_kafkas_default_partitioner_puts_them_and_the_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from headrace.plugins.offramps import kafka as kafka_offramp

    monkeypatch.setattr(kafka_offramp, "KEY_MEMO", 100)
    off = KafkaOfframp(KafkaOfframpConfig(brokers="127.0.0.1:9", topic="t"), PluginContext("out", Path(".")))
    reference = DefaultPartitioner()
    for parts in ([0], [0, 1, 2, 3], list(range(16)), [0, 1, 2]):
        for i in range(300):
            key = f"key-{i % 150}".encode()
            assert off._partition(parts, key, 0) == reference(key, parts, parts)
    assert len(off._hashes) <= 100
    assert [off._partition([0, 1, 2], None, n) for n in range(4)] == [0, 1, 2, 0], "keyless batches round-robin"


def test_a_broker_without_idempotent_producers_is_a_clear_start_failure(tmp_path: Path, write: Any, kafka_broker: KafkaBroker,
                                                                        kafka_topic: Any) -> None:  # fmt: skip
    """``idempotence: true`` was impossible (hard-coded off, and refused in ``client:``); now the producer
    is asked for it. tansu grants no producer id (InitProducerId fails), so the client would wait
    forever: the daemon instead fails to start, naming the setting, and exits non-zero."""
    topic = kafka_topic(1, prefix="idem")
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(5)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
offramps: {{out: {{type: kafka, config: {{brokers: "{kafka_broker.bootstrap}", topic: {topic}, idempotence: true, request_timeout: 1s}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        code = d.wait(60)
    finally:
        d.stop()
    assert code not in (0, None), d.stderr()
    assert "granted no producer id" in d.stderr() and "idempotence: false" in d.stderr(), d.stderr()


def test_idempotence_needs_acks_all(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: stdin}}
offramps: {out: {type: kafka, config: {brokers: "127.0.0.1:9", topic: t, acks: 1, idempotence: true}}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode != 0
    err = res.stderr.decode()
    assert "idempotence" in err and "needs acks: all" in err and "c.yaml:4" in err, err
