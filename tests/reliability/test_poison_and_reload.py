"""Rows 10 and 13: records that crash or hang a worker every time (isolated to err, commits pass
them), and reloads under load (valid, invalid, twenty in a row) with a Kafka source."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.checker import EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import (
    Lines,
    OffsetWatcher,
    count_lines,
    dead_ids,
    dead_letters,
    family,
    fd_count,
    kafka_onramp,
    produce,
    scrape_or_empty,
    stages,
    status,
    wait_until,
    write_config,
)
from tests.support.daemon import Daemon, free_port
from tests.support.kafka_broker import KafkaBroker

PARTS = (0, 1, 2, 3)


@pytest.mark.slow
def test_row10_poison_records_are_isolated_and_committed_past(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                              watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="poison")
    n = 3_000
    crash, hang = 1234, 2345
    produce(kafka_broker, src, range(n))
    stages(tmp_path, crash=[crash], hang=[hang])
    port = free_port()
    cfg = write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(kafka_broker, src, "g-poison")}
pipelines:
  main: [{{op: python, fn: "stages:work"}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
""", port=port, daemon_extra=", stage_timeout: 500ms")  # fmt: skip
    d = Daemon(cfg)
    t0 = time.monotonic()
    try:
        wait_until(lambda: watcher.total("g-poison", src, PARTS) >= n, 90, "every offset committed, the poison ones included", interval=0.2, daemon=d)
        took = time.monotonic() - t0
        restarts = status(port)["worker_restarts"]
    finally:
        assert d.stop() == 0, d.stderr()
    dead = dead_letters(tmp_path / "dlq.ndjson")
    errors = {e["event"]["id"]: e["meta"]["error"] for e in dead}
    assert errors[crash]["type"] == "WorkerCrashed" and "killed by signal 9" in errors[crash]["message"], errors[crash]
    assert "3 times" in errors[crash]["message"]
    assert errors[hang]["type"] == "WorkerCrashed" and "stage_timeout" in errors[hang]["message"], errors[hang]
    for err in (errors[crash], errors[hang]):  # provenance: where each was read, and from which config
        assert err["origin"] == "in" and err["kafka"]["topic"] == src and err["kafka"]["partition"] in PARTS, err
        assert isinstance(err["kafka"]["offset"], int) and len(err["config"]) == 16
    report = conserve(range(n), Lines(tmp_path / "out.ndjson").ids, dead_ids(dead), guarantee=EXACTLY_ONCE, expect_dead={crash, hang})
    assert report.ok, report.summary()
    figures(row=10, lost=len(report.lost), duplicates=report.duplicates, isolated=report.dead, worker_restarts=restarts,
            seconds_to_commit_all=round(took, 1))  # fmt: skip


SLOW_STAGE = """
import time

def slow(event, meta):
    time.sleep(0.5)
    return event
"""


def test_row10b_stage_timeout_counts_execution_not_queueing(tmp_path: Path, figures: Figures) -> None:
    """Three jobs of 0.5 s each queue on a worker (3 in flight per worker); with stage_timeout 1.2 s the
    third one waits 1 s and runs 0.5 s: it must not be killed (the clock starts when the worker takes it)."""
    (tmp_path / "slowstage.py").write_text(SLOW_STAGE)
    src = tmp_path / "in.ndjson"
    src.write_text("")
    port = free_port()
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson, follow: true, poll_interval: 10ms}}}
pipelines: {main: [{op: python, fn: "slowstage:slow"}]}
offramps:
  out: {type: file, config: {path: out.ndjson}}
  dlq: {type: file, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], main: [out], main/err: [dlq]}
""", port=port, daemon_extra=", stage_timeout: 1200ms")  # fmt: skip
    n = 8
    d = Daemon(cfg)
    try:
        wait_until(lambda: status(port).get("ready"), 30, "ready", daemon=d)
        for i in range(n):  # one record per job: each arrives on its own
            with open(src, "a") as f:
                f.write(f'{{"id": {i}}}\n')
            time.sleep(0.04)
        wait_until(lambda: count_lines(tmp_path / "out.ndjson") + count_lines(tmp_path / "dlq.ndjson") >= n, 30, "every record", daemon=d)
        restarts = status(port)["worker_restarts"]
    finally:
        assert d.stop() == 0, d.stderr()
    assert restarts == 0, f"{restarts} worker(s) killed for a stage_timeout no job reached:\n{d.stderr()[-2000:]}"
    report = conserve(range(n), Lines(tmp_path / "out.ndjson").ids, dead_ids(dead_letters(tmp_path / "dlq.ndjson")),
                      guarantee=EXACTLY_ONCE, expect_dead=())  # fmt: skip
    assert report.ok, report.summary()
    figures(row=10, case="stage_timeout vs queueing", worker_restarts=restarts, lost=len(report.lost))


RELOAD_BODY = """
onramps:
  in: {onramp}
pipelines:
  main: [{{op: python, fn: "stages:work"}}, {{op: set, set: {{gen: "{gen}"}}}}, {{op: throttle, rate: {rate}}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
"""


@pytest.mark.slow
def test_row13_reloads_under_load_lose_nothing_and_leak_nothing(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                                watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="reload")
    n = 40_000
    produce(kafka_broker, src, range(n), pad=100)
    stages(tmp_path, delay=0.0004)  # ~4000 records/s: the load outlasts the reloads
    port = free_port()
    onramp = kafka_onramp(kafka_broker, src, "g-reload")

    def write(gen: int, rate: int = 1_000_000) -> Path:
        # a changed pipeline segment drains what it holds before its replacement starts: small queues keep that short
        body = RELOAD_BODY.format(onramp=onramp, gen=gen, rate=rate)
        return write_config(tmp_path, body, port=port, daemon_extra=", queue_events: 500")

    cfg = write(0)
    good = cfg.read_text()
    out = tmp_path / "out.ndjson"
    d = Daemon(cfg)

    def reloads(result: str) -> float:
        return scrape_or_empty(port).get(f'headrace_config_reloads_total{{result="{result}"}}', 0.0)

    try:
        wait_until(lambda: count_lines(out) > 2000 and len(status(port).get("worker_pids", [])) == 2, 60, "records flowing", daemon=d)
        kids0, fds0 = family(d), fd_count(d.pid)
        # one valid reload that changes the worker segment (python + set); the Kafka onramp keeps its consumer
        write(1)
        d.signal(signal.SIGHUP)
        wait_until(lambda: reloads("success") >= 1, 20, "the valid reload", daemon=d)
        # one invalid reload: rejected, the running graph stays
        cfg.write_text(good.replace("op: set", "op: sett"))
        d.signal(signal.SIGHUP)
        wait_until(lambda: reloads("failure") >= 1, 20, "the invalid reload rejected", daemon=d)
        before = count_lines(out)
        wait_until(lambda: count_lines(out) > before + 500, 20, "records still flow after the rejected reload", daemon=d)
        # twenty in a row, each changing the throttle that runs on the loop after the worker segment
        t0 = time.monotonic()
        for i in range(20):
            write(1, rate=1_000_001 + i)
            d.signal(signal.SIGHUP)
            wait_until(lambda i=i: reloads("success") >= 2 + i, 20, f"reload {i + 2}", interval=0.02, daemon=d)
        twenty = time.monotonic() - t0
        assert watcher.total("g-reload", src, PARTS) < n, "the reloads happened under load"
        time.sleep(0.5)
        kids1, fds1 = family(d), fd_count(d.pid)
        wait_until(lambda: watcher.total("g-reload", src, PARTS) >= n, 90, "everything committed", interval=0.2, daemon=d)
    finally:
        assert d.stop() == 0, d.stderr()
    assert kids1 == kids0, f"processes changed across the reloads: {sorted(kids0)} -> {sorted(kids1)}"
    assert fds1 <= fds0 + 2, f"descriptors {fds0} -> {fds1}"
    lines = Lines(out)
    gens = {e.get("gen") for e in lines.events}
    assert gens == {0, 1}, gens
    report = conserve(range(n), lines.ids, dead_ids(dead_letters(tmp_path / "dlq.ndjson")), guarantee=EXACTLY_ONCE, expect_dead=())
    assert report.ok, report.summary()
    figures(row=13, lost=len(report.lost), duplicates=report.duplicates, reloads=22, twenty_reloads_s=round(twenty, 2),
            processes=f"{len(kids0)}->{len(kids1)}", fds=f"{fds0}->{fds1}")  # fmt: skip
