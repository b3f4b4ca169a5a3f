"""Row 23 (issue 12 item 1): Kafka records with keys and headers whose stage raises go to a
``with_meta`` JSON dead letter (the pattern of examples/kafka.yaml), and an ``err`` port
linked nowhere loses nothing quietly.

Keys and header values are bytes, some not UTF-8: the dead letter used to refuse them (its
codec could not encode bytes in meta), they went to its unlinked ``err`` port, counted as
done, and their offsets were committed: lost.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped, unused-ignore]

from tests.reliability.checker import AT_LEAST_ONCE, EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import OffsetWatcher, dead_ids, dead_letters, file_ids, kafka_onramp, run_async, wait_until, write_config
from tests.support.daemon import Daemon
from tests.support.kafka_broker import KafkaBroker

PARTS = (0, 1)
STAGE = '''
def judge(event, meta):
    if event["id"] % 4 == 3:
        raise ValueError(f"no multiples of 4: {event['id']}")
    return event
'''


def key(i: int) -> bytes:
    return b"\xff\x00" + str(i).encode() if i % 3 == 0 else f"k{i}".encode()  # a third are not UTF-8


async def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for i in range(n):
            headers = [("trace", f"t-{i}".encode()), ("bin", bytes([0x80 | i % 64, 0xFE]))]
            await producer.send(topic, json.dumps({"id": i}).encode(), key=key(i), headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


def as_json(raw: bytes) -> Any:
    """A key or header value as the json codec writes bytes (docs/reference/codecs/json.md)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def config(tmp_path: Path, broker: KafkaBroker, src: str, group: str, *, dead_letter: bool, state_dir: str = "") -> Path:
    (tmp_path / "stage.py").write_text(STAGE)
    dlq = "\n  dlq: {type: file, codec: json, with_meta: true, config: {path: dlq.ndjson}}" if dead_letter else ""
    links = "in: [main], in/err: [dlq], main: [out], main/err: [dlq]" if dead_letter else "in: [main], main: [out]"
    extra = f", state_dir: {state_dir}" if state_dir else ""
    return write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(broker, src, group)}
pipelines:
  main: [{{op: python, fn: "stage:judge"}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}{dlq}
links: {{{links}}}
""", port=None, workers=0, daemon_extra=extra)  # fmt: skip


def test_row33_kafka_keys_and_headers_reach_a_json_dead_letter(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                               watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(len(PARTS), prefix="keyed")
    n = 400
    run_async(_produce(kafka_broker.bootstrap, src, n))
    d = Daemon(config(tmp_path, kafka_broker, src, "g-keyed", dead_letter=True))
    try:
        wait_until(lambda: watcher.total("g-keyed", src, PARTS) >= n, 60, "everything committed", interval=0.2, daemon=d)
    finally:
        assert d.stop() == 0, d.stderr()
    failing = {i for i in range(n) if i % 4 == 3}
    dead = dead_letters(tmp_path / "dlq.ndjson")
    report = conserve(range(n), file_ids(tmp_path / "out.ndjson"), dead_ids(dead), guarantee=EXACTLY_ONCE, expect_dead=failing)
    assert report.ok, report.summary()
    for e in dead:
        i, meta = e["event"]["id"], e["meta"]
        assert meta["kafka_key"] == as_json(key(i)), meta
        assert meta["kafka_headers"] == {"trace": f"t-{i}", "bin": as_json(bytes([0x80 | i % 64, 0xFE]))}, meta
        assert meta["error"]["type"] == "ValueError" and meta["kafka_topic"] == src
    assert not (tmp_path / "headrace-state").exists(), "nothing needed the last-resort file"
    figures(row=33, lost=len(report.lost), duplicates=report.duplicates, dead=report.dead, delivered=report.found["out"])


def test_row33b_unlinked_err_goes_to_the_last_resort_file_or_is_not_committed(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                                             watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    """``main/err`` linked nowhere. First run: the state dir cannot be created (a file is put in the way once
    the daemon runs: `check` refuses a state dir under a file), so the failing records are failed, not acked: no
    offset past them is committed (acks are per batch). Second run, with the way clear: they are read again and
    land in the last-resort file; nothing is lost."""
    src = kafka_topic(len(PARTS), prefix="unlinked")
    n = 200
    d = Daemon(config(tmp_path, kafka_broker, src, "g-unlinked", dead_letter=False, state_dir="blocker/state"))
    try:
        wait_until(lambda: "headrace.daemon: running" in d.stderr(), 60, "the daemon running", daemon=d)
        (tmp_path / "blocker").write_text("a file where the state dir should be\n")
        run_async(_produce(kafka_broker.bootstrap, src, n))
        wait_until(lambda: len(file_ids(tmp_path / "out.ndjson")) >= n - n // 4, 60, "the good records written", daemon=d)
        wait_until(lambda: "they are failed, their source not acked" in d.stderr(), 30, "the failed write logged", daemon=d)
        committed_first = watcher.total("g-unlinked", src, PARTS)
    finally:
        assert d.stop() == 0, d.stderr()
    assert committed_first < n, "offsets of records that are nowhere were committed"
    (tmp_path / "blocker").unlink()
    d = Daemon(config(tmp_path, kafka_broker, src, "g-unlinked", dead_letter=False, state_dir="blocker/state"))
    try:
        wait_until(lambda: watcher.total("g-unlinked", src, PARTS) >= n, 60, "everything committed after the restart", interval=0.2, daemon=d)
    finally:
        assert d.stop() == 0, d.stderr()
    kept = [json.loads(x) for x in (tmp_path / "blocker" / "state" / "last-resort" / "main.judge.ndjson").read_text().splitlines()]
    assert all(k["meta"]["error"]["type"] == "ValueError" and k["component"] == "main.judge" for k in kept), kept[:1]
    kept_ids = [k["event"]["id"] for k in kept]
    failing = {i for i in range(n) if i % 4 == 3}
    report = conserve(range(n), file_ids(tmp_path / "out.ndjson"), kept_ids, window=n, guarantee=AT_LEAST_ONCE, expect_dead=failing)
    assert report.ok, report.summary()
    figures(row=33, case="unlinked err, last resort unwritable then writable", lost=len(report.lost), duplicates=report.duplicates,
            committed_while_unwritable=committed_first, kept=len(set(kept_ids)))  # fmt: skip
