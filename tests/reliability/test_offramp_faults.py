"""Rows 7, 8, 9 and 11: a slow offramp, an offramp that is down, one that refuses some records
for good, and a disk that fills up under a file offramp; all with a Kafka source."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.checker import EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import (
    OFFRAMP_SENT,
    ONRAMP_IN,
    HttpSink,
    Lines,
    LineSink,
    OffsetWatcher,
    count_lines,
    cpu_seconds,
    dead_ids,
    dead_letters,
    kafka_ids,
    kafka_onramp,
    produce,
    rss_mb,
    scrape_or_empty,
    stages,
    wait_until,
    write_config,
)
from tests.reliability.test_broker_faults import committed_holds_only_delivered
from tests.support.daemon import Daemon, free_port, scrape
from tests.support.kafka_broker import KafkaBroker

PARTS = (0, 1, 2, 3)


@pytest.mark.slow
def test_row07_slow_offramp_pauses_partitions_and_bounds_memory(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                                watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="slowoff")
    n = 10_000
    produce(kafka_broker, src, range(n), pad=4000)  # 40 MB: much more than the queues hold
    stages(tmp_path)
    hport, port = free_port(), free_port()
    sink = HttpSink(hport, delay=0.4)  # one offramp batch per 0.4 s
    batch, queue_events, workers = 50, 200, 2
    cfg = write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(kafka_broker, src, "g-slowoff", f"batch: {batch}")}
pipelines:
  main: [{{op: python, fn: "stages:work"}}]
offramps:
  out: {{type: http, config: {{url: "http://127.0.0.1:{hport}/ingest"}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
""", port=port, workers=workers, daemon_extra=f", queue_events: {queue_events}, queue_bytes: 2MiB")  # fmt: skip
    # What may sit between the onramp's intake and the offramp's accept, by the design: the two edge queues
    # (each admits a batch while below its bound), the jobs of the worker segment (2 slots per in-flight
    # job of each worker; a job merges what was queued, so up to a queue's worth) and the batches in hand.
    job = queue_events + batch
    bound = 2 * job + workers * 3 * 2 * job + 2 * batch
    d = Daemon(cfg)
    samples: list[tuple[float, float, float]] = []
    try:
        wait_until(lambda: sink.count() > 200, 60, "records reach the slow server", daemon=d)
        rss0 = rss_mb(d.pid)
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:
            m = scrape(port)
            received, accepted = m[ONRAMP_IN.format("in")], m[OFFRAMP_SENT.format("out")]
            samples.append((received, accepted, rss_mb(d.pid)))
            assert received - accepted <= bound, f"read {received - accepted} records ahead of the offramp (bound {bound})"
            time.sleep(0.25)
        assert samples[-1][0] < n * 0.75, f"the daemon read {samples[-1][0]} of {n} records while the offramp was slow: not paused"
        sink.delay = 0.0
        wait_until(lambda: watcher.total("g-slowoff", src, PARTS) >= n, 90, "everything committed once the server is fast", interval=0.2, daemon=d)
    finally:
        rc = d.stop()
        sink.stop()
    assert rc == 0, d.stderr()
    rss_max = max(s[2] for s in samples)
    assert rss_max - rss0 < 60, f"RSS grew from {rss0:.0f} MB to {rss_max:.0f} MB"
    report = conserve(range(n), sink.ids(), dead_ids(dead_letters(tmp_path / "dlq.ndjson")), guarantee=EXACTLY_ONCE, expect_dead=())
    assert report.ok, report.summary()
    figures(row=7, lost=len(report.lost), duplicates=report.duplicates, max_read_ahead=int(max(r - a for r, a, _ in samples)), bound=bound,
            rss_start_mb=round(rss0), rss_max_mb=round(rss_max))  # fmt: skip


@pytest.mark.slow
def test_row08_offramp_down_backs_off_cheaply_and_commits_nothing(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                                  watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="down")
    n = 10_000
    produce(kafka_broker, src, range(n), pad=100)
    stages(tmp_path)
    tport, port = free_port(), free_port()  # nothing listens on tport yet: connections are refused
    cfg = write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(kafka_broker, src, "g-down")}
pipelines:
  main: [{{op: python, fn: "stages:work"}}]
offramps:
  out: {{type: tcp, config: {{port: {tport}}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
""", port=port)  # fmt: skip
    outage = 8.0
    d = Daemon(cfg)
    sink = LineSink(tport)
    try:
        err_series = 'headrace_component_errors_total{component_id="out",component_kind="offramp",error_type="ConnectionError"}'
        wait_until(lambda: scrape_or_empty(port).get(err_series, 0) > 0, 60, "the offramp fails to connect", daemon=d)
        cpu0, t0 = cpu_seconds(d.pid), time.monotonic()
        while time.monotonic() - t0 < outage:
            assert watcher.total("g-down", src, PARTS) == 0, "committed records that were never delivered"
            time.sleep(0.5)
        cpu = cpu_seconds(d.pid) - cpu0
        wall = time.monotonic() - t0
        attempts = scrape(port)[err_series]
        sink.start()
        t_up = time.monotonic()
        wait_until(lambda: sink.count() > 0, 60, "delivery resumes", daemon=d)
        resumed = time.monotonic() - t_up
        wait_until(lambda: watcher.total("g-down", src, PARTS) >= n, 90, "everything committed", interval=0.2, daemon=d)
    finally:
        rc = d.stop()
        sink.stop()
    assert rc == 0, d.stderr()
    assert cpu < 0.15 * wall, f"the daemon used {cpu:.2f}s CPU over a {wall:.1f}s outage"
    report = conserve(range(n), sink.ids(), dead_ids(dead_letters(tmp_path / "dlq.ndjson")), guarantee=EXACTLY_ONCE, expect_dead=())
    assert report.ok, report.summary()
    figures(row=8, outage_s=outage, cpu_during_outage_s=round(cpu, 3), failed_write_events=int(attempts), resumed_after_s=round(resumed, 2),
            lost=len(report.lost), duplicates=report.duplicates)  # fmt: skip


def test_row09_offramp_rejects_some_records_for_good(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any, watcher: OffsetWatcher,
                                                    figures: Figures) -> None:  # fmt: skip
    src, dst = kafka_topic(4, prefix="rej-in"), kafka_topic(4, prefix="rej-out")
    n = 5_000
    big = {i for i in range(n) if i % 97 == 0}
    produce(kafka_broker, src, range(n), payload=lambda i: f'{{"id": {i}, "pad": "{"x" * (3000 if i in big else 50)}"}}'.encode())
    stages(tmp_path)
    port = free_port()
    cfg = write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(kafka_broker, src, "g-rej")}
pipelines:
  main: [{{op: python, fn: "stages:work"}}]
offramps:
  out: {{type: kafka, config: {{brokers: "{kafka_broker.bootstrap}", topic: {dst}, max_message_bytes: 2000}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
""", port=port)  # fmt: skip
    d = Daemon(cfg)
    try:
        wait_until(lambda: watcher.total("g-rej", src, PARTS) >= n, 60, "everything committed, rejected records included", interval=0.2, daemon=d)
    finally:
        assert d.stop() == 0, d.stderr()
    dead = dead_letters(tmp_path / "dlq.ndjson")
    assert all("exceeds max_message_bytes 2000" in e["meta"]["error"]["message"] and e["meta"]["error"]["stage"] == "out" for e in dead), dead[:1]
    report = conserve(range(n), kafka_ids(kafka_broker, dst, n - len(big)), dead_ids(dead), guarantee=EXACTLY_ONCE, expect_dead=big)
    assert report.ok, report.summary()
    figures(row=9, lost=len(report.lost), duplicates=report.duplicates, rejected=report.dead, delivered=report.found["out"])


@pytest.mark.slow
def test_row11_disk_full_under_a_file_offramp(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any, watcher: OffsetWatcher,
                                              figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="full")
    n = 20_000
    produce(kafka_broker, src, range(n), pad=200)
    stages(tmp_path, delay=0.0002)
    port = free_port()
    out = tmp_path / "out.ndjson"
    cfg = write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(kafka_broker, src, "g-full")}
pipelines:
  main: [{{op: python, fn: "stages:work"}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
""", port=port)  # fmt: skip
    d = Daemon(cfg)
    limits: tuple[int, int] | None = None
    try:
        wait_until(lambda: count_lines(out) > 2000, 60, "records flowing", daemon=d)
        # RLIMIT_FSIZE on the daemon (prlimit): a write that would grow a file past the limit fails with EFBIG,
        # as a full disk fails with ENOSPC; the soft limit only, so that it can be raised again
        limits = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (out.stat().st_size + 200_000, limits[1]))  # ahead: a batch is cut mid-record
        err_series = 'headrace_component_errors_total{component_id="out",component_kind="offramp",error_type="OSError"}'
        wait_until(lambda: scrape_or_empty(port).get(err_series, 0) > 0, 30, "writes fail", daemon=d)
        t_full = time.monotonic()
        c_full = watcher.total("g-full", src, PARTS)
        checks = 0
        while time.monotonic() - t_full < 3.0:
            assert committed_holds_only_delivered(watcher, "g-full", src, out) == []
            checks += 1
            time.sleep(0.3)
        c_after = watcher.total("g-full", src, PARTS)
        assert c_after < n, "the disk filled up under load"
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, limits)
        limits = None
        t0 = time.monotonic()
        wait_until(lambda: watcher.total("g-full", src, PARTS) > c_after, 60, "commits resume once space returns", daemon=d)
        recovery = time.monotonic() - t0
        wait_until(lambda: watcher.total("g-full", src, PARTS) >= n, 90, "everything committed", interval=0.2, daemon=d)
    finally:
        if limits is not None:
            try:
                resource.prlimit(d.pid, resource.RLIMIT_FSIZE, limits)
            except OSError:
                pass
        rc = d.stop()
    assert rc == 0, d.stderr()
    lines = Lines(out)
    assert not lines.corrupt and not lines.torn_tail, f"torn records in the output: {lines.corrupt[:3]}"
    report = conserve(range(n), lines.ids, dead_ids(dead_letters(tmp_path / "dlq.ndjson")), guarantee=EXACTLY_ONCE, expect_dead=())
    assert report.ok, report.summary()
    figures(row=11, lost=len(report.lost), duplicates=report.duplicates, committed_during_full=c_after - c_full, checks=checks,
            recovery_s=round(recovery, 2))  # fmt: skip


def test_row09b_http_offramp_refuses_some_records_for_good(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                           watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(2, prefix="refuse")
    n = 300
    refused = {i for i in range(n) if i % 17 == 3}
    produce(kafka_broker, src, range(n))
    stages(tmp_path)
    hport, port = free_port(), free_port()
    # one record per request (batch: false); parsed, not matched as text: a record a stage only added
    # fields to leaves as its own bytes (spaced as produced) with the fields spliced in
    sink = HttpSink(hport, refuse=lambda body: json.loads(body)["id"] in refused)
    cfg = write_config(tmp_path, f"""
onramps:
  in: {kafka_onramp(kafka_broker, src, "g-refuse")}
pipelines:
  main: [{{op: python, fn: "stages:work"}}]
offramps:
  out: {{type: http, postprocessors: [], config: {{url: "http://127.0.0.1:{hport}/ingest", batch: false, concurrency: 8}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
""", port=port)  # fmt: skip
    d = Daemon(cfg)
    try:
        wait_until(lambda: watcher.total("g-refuse", src, (0, 1)) >= n, 60, "everything committed, refused records included", interval=0.2, daemon=d)
    finally:
        rc = d.stop()
        sink.stop()
    assert rc == 0, d.stderr()
    dead = dead_letters(tmp_path / "dlq.ndjson")
    assert all("400" in e["meta"]["error"]["message"] and e["meta"]["error"]["stage"] == "out" for e in dead), dead[:1]
    report = conserve(range(n), [json.loads(b)["id"] for b in sink.bodies], dead_ids(dead), guarantee=EXACTLY_ONCE, expect_dead=refused)
    assert report.ok, report.summary()
    figures(row=9, case="http 400", lost=len(report.lost), duplicates=report.duplicates, rejected=report.dead, delivered=report.found["out"])
