"""``daemon.error_budget`` (issue 16, item 4): a stage that starts failing every record no longer
dead-letters a whole topic while the commits move on."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import file_ids, http_status, kafka_onramp, produce, write_config
from tests.support.daemon import Daemon, free_port, metric
from tests.support.kafka_broker import KafkaBroker

STAGE = """
def late(event, meta):
    if event["id"] >= FROM:
        raise ValueError(f"cannot handle record {event['id']}")
    return event
"""
N = 1000
FIRST_BAD = 100


def _config(tmp_path: Path, broker: KafkaBroker, topic: str, port: int, then: str | None) -> Path:
    budget = f", error_budget: {{ratio: 0.5, window: 30s, min_events: 50, then: {then}}}" if then else ""
    return write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(broker, topic, "g-budget", "batch: 20")}
pipelines:
  main: [{{op: python, fn: "budgetstage:late"}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], main: [out], main/err: [dlq]}}
""", port=port, workers=0, daemon_extra=budget)


def _committed(broker: KafkaBroker, topic: str) -> int:
    return broker.committed("g-budget", topic).get(0, 0)


@pytest.mark.parametrize("then", ["pause", "stop"])
def test_a_stage_failing_every_record_trips_the_budget_and_nothing_past_it_is_committed(tmp_path: Path, kafka_broker: KafkaBroker,
                                                                                        kafka_topic: Any, then: str) -> None:  # fmt: skip
    topic = kafka_topic(1, prefix=f"budget-{then}")
    produce(kafka_broker, topic, range(N))
    (tmp_path / "budgetstage.py").write_text(STAGE.replace("FROM", str(FIRST_BAD)))
    port = free_port()
    d = Daemon(_config(tmp_path, kafka_broker, topic, port, then))
    try:
        if then == "pause":
            d.wait_for(lambda: metric(port, 'headrace_error_budget_exceeded{component_id="in"}') == 1, timeout=60)
            assert http_status(port, "/ready") == 503
            d.wait_for(lambda: _committed(kafka_broker, topic) == FIRST_BAD, timeout=30)  # the good records before it are committed
            deadline = time.monotonic() + 1.5  # several commit intervals: the commit stays at the first failing record
            while time.monotonic() < deadline:
                assert _committed(kafka_broker, topic) == FIRST_BAD
                time.sleep(0.1)
            assert "error budget exceeded" in d.stderr()
        else:
            code = d.wait(60)
            assert code == 1, d.stderr()
            assert "error budget exceeded" in d.stderr()
            assert _committed(kafka_broker, topic) <= FIRST_BAD
    finally:
        d.stop()
    assert file_ids(tmp_path / "out.ndjson") == list(range(FIRST_BAD))
    dead = [json.loads(x) for x in (tmp_path / "dlq.ndjson").read_text().splitlines()] if (tmp_path / "dlq.ndjson").exists() else []
    assert len(dead) < N - FIRST_BAD  # the topic was not dead-lettered whole
    # the stage fixed, no budget: what was not committed is read again, nothing is lost
    (tmp_path / "budgetstage.py").write_text(STAGE.replace("FROM", str(N)))
    port = free_port()
    d = Daemon(_config(tmp_path, kafka_broker, topic, port, None))
    try:
        d.wait_for(lambda: len(file_ids(tmp_path / "out.ndjson")) >= N, timeout=60)
    finally:
        d.stop()
    assert sorted(set(file_ids(tmp_path / "out.ndjson"))) == list(range(N))


def test_a_bad_error_budget_is_a_config_error(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    cfg = write("c.yaml", """
version: 1
daemon: {error_budget: {ratio: 1.5}}
onramps: {src: {type: stdin}}
offramps: {out: {type: stdout}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    err = res.stderr.decode()
    assert res.returncode == 78 and "ratio" in err and "c.yaml:3" in err, err
