"""Kafka in and out through the real daemon against the real broker (tansu)."""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port, json_lines, lines_written, scrape
from tests.support.kafka_broker import KafkaBroker

STAGES = '''
import hashlib

def enrich(event, meta):
    event["h"] = hashlib.sha1(str(event["id"]).encode()).hexdigest()[:6]
    event["p"] = meta["kafka_partition"]
    event["o"] = meta["kafka_offset"]
    return event
'''

GROUP_TIMING = "session_timeout: 2s, heartbeat_interval: 200ms, commit_interval: 200ms"


def produce_ids(broker: KafkaBroker, topic: str, n: int, keys: int = 64) -> None:
    chunk = 5000
    for start in range(0, n, chunk):
        broker.produce(topic, [(f"k{i % keys}".encode(), json.dumps({"id": i, "k": i % keys}).encode()) for i in range(start, min(start + chunk, n))])


def kafka_config(write: Any, broker: KafkaBroker, src: str, dst: str, group: str, *, workers: int = 2, port: int | None = None,
                 extra: str = "") -> Path:  # fmt: skip
    write("stages.py", STAGES)
    listen = f'"127.0.0.1:{port}"' if port else "null"
    return write("c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: {listen}}}, shutdown_timeout: 30s}}
onramps:
  in: {{type: kafka, codec: json, config: {{brokers: "{broker.bootstrap}", topics: [{src}], group_id: {group}, {GROUP_TIMING}{extra}}}}}
pipelines:
  main: [{{op: python, fn: "stages:enrich"}}]
offramps:
  out: {{type: kafka, codec: json, config: {{brokers: "{broker.bootstrap}", topic: {dst}}}}}
links: {{in: [main], main: [out]}}
""")


def check_output(broker: KafkaBroker, topic: str, n: int, allow_dups: int = 0) -> list[Any]:
    records = broker.consume_all(topic, n, timeout=60, to_end=True)  # the writers stopped: every record, extras included
    events = [json.loads(r.value) for r in records]
    ids = [e["id"] for e in events]
    assert set(ids) == set(range(n)), f"lost: {sorted(set(range(n)) - set(ids))[:20]}"
    assert len(ids) - n <= allow_dups, f"{len(ids) - n} duplicates"
    # per-key order: within each output partition (keyed like the input), ids of a key ascend
    by_key: dict[Any, list[int]] = defaultdict(list)
    for r, e in zip(records, events, strict=True):
        by_key[(r.partition, r.key)].append(e["id"])
    for key, seq in by_key.items():
        dedup = list(dict.fromkeys(seq))
        assert dedup == sorted(dedup), f"order broken for {key}"
    return events


@pytest.mark.slow
def test_kafka_workers_kafka_100k_exactly(tmp_path: Path, write: Any, kafka_broker: KafkaBroker, kafka_topic: Any) -> None:
    src, dst = kafka_topic(4, prefix="in"), kafka_topic(4, prefix="out")
    n = 100_000
    produce_ids(kafka_broker, src, n)
    port = free_port()
    d = Daemon(kafka_config(write, kafka_broker, src, dst, "g100k", port=port))
    try:
        d.wait_for(lambda: _committed_total(kafka_broker, "g100k", src) >= n, timeout=120, interval=0.5)
        m = scrape(port)
        assert m['headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}'] == n
    finally:
        assert d.stop() == 0, d.stderr()
    events = check_output(kafka_broker, dst, n)
    assert len(events) == n, "nothing duplicated"
    committed = kafka_broker.committed("g100k", src)
    per_partition = defaultdict(int)
    for r in kafka_broker.consume_all(src, n, timeout=60):
        per_partition[r.partition] += 1
    assert committed == dict(per_partition), "committed offsets equal the records per partition"


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def _committed_total(broker: KafkaBroker, group: str, topic: str) -> int:
    try:
        return sum(broker.committed(group, topic).values())
    except Exception:
        return 0


def test_file_to_kafka_and_kafka_to_file_and_oversize_to_err(tmp_path: Path, write: Any, kafka_broker: KafkaBroker, kafka_topic: Any) -> None:
    topic = kafka_topic(2, prefix="f2k")
    big = json.dumps({"id": 999, "blob": "x" * 3000})
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(200)) + big + "\n")
    cfg = write("f2k.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
offramps:
  out: {{type: kafka, config: {{brokers: "{kafka_broker.bootstrap}", topic: {topic}, max_message_bytes: 2000}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [out], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    got = sorted(json.loads(r.value)["id"] for r in kafka_broker.consume_all(topic, 200, timeout=30, to_end=True))
    assert got == list(range(200))
    dlq = [json.loads(x) for x in (tmp_path / "dlq.ndjson").read_text().splitlines()]
    assert len(dlq) == 1 and dlq[0]["event"]["id"] == 999
    assert "exceeds max_message_bytes 2000" in dlq[0]["meta"]["error"]["message"]

    port = free_port()
    cfg2 = write("k2f.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: kafka, config: {{brokers: "{kafka_broker.bootstrap}", topics: [{topic}], group_id: k2f, {GROUP_TIMING}}}}}}}
offramps: {{out: {{type: file, config: {{path: k2f.ndjson}}}}}}
links: {{src: [out]}}
""")
    d2 = Daemon(cfg2)
    try:
        d2.wait_for(lambda: (tmp_path / "k2f.ndjson").exists() and len((tmp_path / "k2f.ndjson").read_text().splitlines()) >= 200, timeout=60)
        d2.wait_for(lambda: _committed_total(kafka_broker, "k2f", topic) == 200, timeout=30)
    finally:
        assert d2.stop() == 0, d2.stderr()
    assert sorted(json.loads(x)["id"] for x in (tmp_path / "k2f.ndjson").read_text().splitlines()) == list(range(200))


@pytest.mark.slow
def test_two_instances_split_partitions_and_survive_a_kill(tmp_path: Path, write: Any, kafka_broker: KafkaBroker, kafka_topic: Any) -> None:
    src, dst = kafka_topic(4, prefix="grp-in"), kafka_topic(4, prefix="grp-out")
    n = 40_000
    produce_ids(kafka_broker, src, n)
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    pa, pb = free_port(), free_port()

    def writer(folder: Path) -> Any:
        def w(name: str, text: str) -> Path:
            p = folder / name
            p.write_text(text)
            return p
        return w

    # a small batch and a slow pace keep both instances busy for the whole run
    slow = ", batch: 50"
    cfg_a = kafka_config(writer(a_dir), kafka_broker, src, dst, "gsplit", port=pa, workers=1, extra=slow)
    cfg_b = kafka_config(writer(b_dir), kafka_broker, src, dst, "gsplit", port=pb, workers=1, extra=slow)
    a = Daemon(cfg_a)
    b = Daemon(cfg_b)
    try:
        def owned(port: int) -> set[int]:
            try:
                m = scrape(port)
            except OSError:
                return set()
            return {int(k.split('partition="')[1].split('"')[0]) for k in m if k.startswith("headrace_kafka_consumer_lag")}

        # both take part: each owns some partitions and b has committed some of them
        a.wait_for(lambda: owned(pa) and owned(pb) and not owned(pa) & owned(pb) and _committed_total(kafka_broker, "gsplit", src) > 2000,
                   timeout=60, interval=0.2)  # fmt: skip
        b_parts = owned(pb)
        # freeze b, then read what it committed and what it delivered: the in-flight window at the kill
        b.signal(signal.SIGSTOP)
        time.sleep(1.0)  # produce requests already in the kernel's buffers land
        committed_at_kill = kafka_broker.committed("gsplit", src)
        delivered_at_kill = [json.loads(r.value) for r in kafka_broker.consume_all(dst, sum(committed_at_kill.values()), timeout=30, settle=2.0)]
        window = {(e["p"], e["o"]) for e in delivered_at_kill if e["p"] in b_parts and e["o"] >= committed_at_kill.get(e["p"], 0)}
        b.signal(signal.SIGKILL)
        b.wait(10)
        b2 = Daemon(cfg_b)
        try:
            b2.wait_for(lambda: _answers(pb), timeout=60, interval=0.1)  # up: its stop below is a drain, not a kill
            a.wait_for(lambda: _committed_total(kafka_broker, "gsplit", src) >= n, timeout=120, interval=0.5)
        finally:
            assert b2.stop() == 0, b2.stderr()
    finally:
        assert a.stop() == 0, a.stderr()
    events = check_output(kafka_broker, dst, n, allow_dups=len(window))
    seen: dict[tuple[int, int], int] = defaultdict(int)
    for e in events:
        seen[(e["p"], e["o"])] += 1
    dups = {po for po, c in seen.items() if c > 1}
    # every duplicate was delivered by b before the kill and not yet committed: b's in-flight window
    outside = sorted(dups - window)
    assert not outside, f"{len(outside)} duplicates outside the killed instance's window, e.g. {outside[:10]}; b owned {b_parts}, " \
                        f"committed at the kill {committed_at_kill}"  # fmt: skip
    assert all(seen[po] == 2 for po in dups), "a record of the window is delivered at most twice"


@pytest.mark.slow
def test_stalled_offramp_pauses_partitions_and_commits_nothing_undelivered(tmp_path: Path, write: Any, kafka_broker: KafkaBroker,
                                                                          kafka_topic: Any) -> None:  # fmt: skip
    src = kafka_topic(2, prefix="stall")
    n = 20_000
    produce_ids(kafka_broker, src, n)
    write("slow.py", '''
import asyncio

async def slow(event, meta):
    await asyncio.sleep(0.01)
    return event
''')
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}, queue_events: 500}}
onramps: {{in: {{type: kafka, config: {{brokers: "{kafka_broker.bootstrap}", topics: [{src}], group_id: gstall, {GROUP_TIMING}, batch: 100}}}}}}
pipelines: {{main: [{{op: python, fn: "slow:slow", concurrency: 10}}]}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{in: [main], main: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: (tmp_path / "out.ndjson").exists() and (tmp_path / "out.ndjson").stat().st_size > 0, timeout=60)
        for _ in range(6):
            time.sleep(0.5)
            m = scrape(port)
            received = m['headrace_component_sent_events_total{component_id="in",component_kind="onramp",port="out"}']
            delivered = len((tmp_path / "out.ndjson").read_text().splitlines())
            committed = _committed_total(kafka_broker, "gstall", src)
            assert received - delivered <= 500 + 2 * 100 + 10 * 2, (received, delivered)  # one queue + batches in hand
            assert committed <= delivered, (committed, delivered)
            assert received < n
    finally:
        assert d.stop() == 0, d.stderr()
    delivered_ids = [json.loads(x)["id"] for x in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert _committed_total(kafka_broker, "gstall", src) == len(delivered_ids)


@pytest.mark.slow
def test_sigterm_under_load_commits_exactly_what_was_delivered(tmp_path: Path, write: Any, kafka_broker: KafkaBroker,
                                                              kafka_topic: Any) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="term")
    n = 60_000
    produce_ids(kafka_broker, src, n)
    write("stages.py", STAGES)
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: null}}, shutdown_timeout: 30s}}
onramps: {{in: {{type: kafka, codec: json, config: {{brokers: "{kafka_broker.bootstrap}", topics: [{src}], group_id: gterm, {GROUP_TIMING}}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:enrich"}}]}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{in: [main], main: [out]}}
""")
    out = tmp_path / "out.ndjson"

    def delivered() -> list[int]:
        return [e["id"] for e in json_lines(out)]

    d = Daemon(cfg)
    d.wait_for(lambda: lines_written(out) > 5_000, timeout=60, interval=0.02)  # cheap: the daemon must still be busy at the SIGTERM
    d.signal(signal.SIGTERM)
    assert d.wait(60) == 0, d.stderr()
    first = delivered()
    assert len(first) < n, "stopped under load"
    assert _committed_total(kafka_broker, "gterm", src) == len(first), "committed offsets equal what the offramp received"
    d2 = Daemon(cfg)
    try:
        d2.wait_for(lambda: len(delivered()) >= n, timeout=120, interval=0.2)
        d2.wait_for(lambda: _committed_total(kafka_broker, "gterm", src) == n, timeout=30)
    finally:
        assert d2.stop() == 0, d2.stderr()
    everything = delivered()
    assert sorted(everything) == list(range(n)), "the restart re-delivered nothing that was committed, and lost nothing"


def test_metric_series_exist_from_the_start_even_after_a_restart(tmp_path: Path, write: Any, kafka_broker: KafkaBroker,
                                                                 kafka_topic: Any) -> None:  # fmt: skip
    """The committed-offset gauge shows the group's offsets as soon as partitions are assigned (it
    was absent after a restart until this instance committed); both reload counters exist at once."""
    src, dst = kafka_topic(2, prefix="seriesin"), kafka_topic(2, prefix="seriesout")
    produce_ids(kafka_broker, src, 200)
    port = free_port()
    cfg = kafka_config(write, kafka_broker, src, dst, "g-series", workers=0, port=port)
    def key(p: int) -> str:
        return f'headrace_kafka_committed_offset{{partition="{p}",topic="{src}"}}'

    def committed(m: dict[str, float]) -> dict[int, float]:
        return {p: m[key(p)] for p in (0, 1) if key(p) in m}

    def metrics() -> dict[str, float]:
        try:
            return scrape(port)
        except OSError:  # not listening yet
            return {}

    d = Daemon(cfg)
    try:
        first = d.wait_for(lambda: (c := committed(metrics())) and sum(c.values()) >= 200 and c, timeout=60)
    finally:
        assert d.stop() == 0, d.stderr()
    d = Daemon(cfg)  # nothing new to consume: this instance commits nothing itself
    try:
        m = d.wait_for(lambda: (s := metrics()) and committed(s) == first and s, timeout=60)
        assert m['headrace_config_reloads_total{result="success"}'] == 0
        assert m['headrace_config_reloads_total{result="failure"}'] == 0
    finally:
        assert d.stop() == 0, d.stderr()
