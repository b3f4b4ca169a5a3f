"""Rows 1-4: Kafka -> worker stages -> offramps, with no fault, worker kills, daemon kills,
and out-of-order completion; conservation checked by identity."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.checker import AT_LEAST_ONCE, EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import (
    OFFRAMP_SENT,
    Lines,
    OffsetWatcher,
    count_lines,
    dead_ids,
    dead_letters,
    family,
    inflight_window,
    kafka_ids,
    kafka_onramp,
    produce,
    rss_mb,
    stages,
    status,
    wait_until,
    write_config,
)
from tests.support.daemon import Daemon, alive, free_port, scrape
from tests.support.kafka_broker import KafkaBroker

PARTS = (0, 1, 2, 3)


def file_pipeline(broker: KafkaBroker, src: str, group: str, *, extra_offramps: str = "", extra_links: str = "", onramp_extra: str = "",
                  top: str = "") -> str:  # fmt: skip
    return f"""
onramps:
  in: {kafka_onramp(broker, src, group, onramp_extra, top=top)}
pipelines:
  main: [{{op: python, fn: "stages:work"}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
{extra_offramps}
links: {{in: [main], in/err: [dlq], main: [out{extra_links}], main/err: [dlq], out/err: [dlq]}}
"""


def test_row01_baseline_kafka_workers_kafka_and_file(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any, watcher: OffsetWatcher,
                                                      figures: Figures) -> None:  # fmt: skip
    src, dst = kafka_topic(4, prefix="base-in"), kafka_topic(4, prefix="base-out")
    n = 20_000
    produce(kafka_broker, src, range(n), pad=100)
    stages(tmp_path)
    port = free_port()
    body = file_pipeline(kafka_broker, src, "g-base", extra_offramps=f'  kout: {{type: kafka, config: {{brokers: "{kafka_broker.bootstrap}", topic: {dst}}}}}',
                         extra_links=", kout").replace("out/err: [dlq]", "out/err: [dlq], kout/err: [dlq]")  # fmt: skip
    d = Daemon(write_config(tmp_path, body, port=port))
    t0 = time.monotonic()
    try:
        wait_until(lambda: watcher.total("g-base", src, PARTS) >= n, 90, "everything committed", interval=0.2, daemon=d)
        took = time.monotonic() - t0
        m = scrape(port)
        assert m[OFFRAMP_SENT.format("out")] == n and m[OFFRAMP_SENT.format("kout")] == n
        rss = rss_mb(d.pid)
    finally:
        assert d.stop() == 0, d.stderr()
    out = Lines(tmp_path / "out.ndjson")
    assert not out.corrupt
    report = conserve(range(n), {"file": out.ids, "kafka": kafka_ids(kafka_broker, dst, n)}, dead_ids(dead_letters(tmp_path / "dlq.ndjson")),
                      fanout=True, guarantee=EXACTLY_ONCE)  # fmt: skip
    assert report.ok, report.summary()
    committed = watcher.committed("g-base", src, PARTS)
    per_partition = Counter(e["p"] for e in out.events)
    assert committed == dict(per_partition), "committed offsets equal the records per partition"
    figures(row=1, lost=len(report.lost), duplicates=report.duplicates, records=n, seconds_to_commit_all=round(took, 1), rss_mb=round(rss))


@pytest.mark.slow
def test_row02_sigkill_a_worker_every_few_seconds(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any, watcher: OffsetWatcher,
                                                  figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="wkill")
    n = 24_000
    produce(kafka_broker, src, range(n), pad=100)
    stages(tmp_path, delay=0.00025)  # ~3-4 s of work on 2 workers
    port = free_port()
    d = Daemon(write_config(tmp_path, file_pipeline(kafka_broker, src, "g-wkill"), port=port))
    respawns: list[float] = []
    try:
        wait_until(lambda: len(status(port).get("worker_pids", [])) == 2 and count_lines(tmp_path / "out.ndjson") > 1000, 60,
                   "workers up and records flowing", daemon=d)  # fmt: skip
        k = 0
        while watcher.total("g-wkill", src, PARTS) < n and k < 5:
            st = status(port)
            victim = st["worker_pids"][k % 2]
            restarts = st["worker_restarts"]
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            wait_until(lambda v=victim, r=restarts: (s := status(port)) and s["worker_restarts"] > r and v not in s["worker_pids"]
                       and len(s["worker_pids"]) == 2, 10, "the worker respawned", interval=0.02, daemon=d)  # fmt: skip
            respawns.append(time.monotonic() - t0)
            k += 1
            time.sleep(0.7)
        assert k >= 3, f"only {k} kills happened under load: the load ended too soon"
        wait_until(lambda: watcher.total("g-wkill", src, PARTS) >= n, 90, "everything committed", interval=0.2, daemon=d)
    finally:
        assert d.stop() == 0, d.stderr()
    assert max(respawns) < 2.0, respawns
    report = conserve(range(n), Lines(tmp_path / "out.ndjson").ids, dead_ids(dead_letters(tmp_path / "dlq.ndjson")),
                      guarantee=EXACTLY_ONCE, expect_dead=())  # a worker death re-dispatches; Kafka redelivers nothing
    assert report.ok, report.summary()
    assert "killed by signal 9" in d.stderr()
    figures(row=2, kills=len(respawns), lost=len(report.lost), duplicates=report.duplicates, respawn_max_s=round(max(respawns), 2))


@pytest.mark.slow
def test_row03_sigkill_the_daemon_and_restart(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any, watcher: OffsetWatcher,
                                              figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="dkill")
    n = 30_000
    produce(kafka_broker, src, range(n), pad=100)
    stages(tmp_path, delay=0.0002)
    port = free_port()
    cfg = write_config(tmp_path, file_pipeline(kafka_broker, src, "g-dkill"), port=port)
    d = Daemon(cfg)
    try:
        wait_until(lambda: count_lines(tmp_path / "out.ndjson") > n // 4 and watcher.total("g-dkill", src, PARTS) > 0, 60,
                   "a quarter delivered and some committed", daemon=d)  # fmt: skip
        procs = family(d) | set(status(port)["worker_pids"])
        assert len(procs) >= 3, procs  # the fork server and two workers
        committed = watcher.total("g-dkill", src, PARTS)
        window = inflight_window(port, committed)
        os.kill(d.pid, signal.SIGKILL)
        d.wait(10)
    finally:
        d.stop()
    t_dead = time.monotonic()
    wait_until(lambda: not [p for p in procs if alive(p)], 5, "the fork server and the workers to exit")
    orphans_gone = time.monotonic() - t_dead
    before = count_lines(tmp_path / "out.ndjson")
    assert before < n, "killed under load"
    stages(tmp_path)  # the kill under load is done: the restart reads the rest at full speed (what it must show is the same)
    d2 = Daemon(cfg)
    t0 = time.monotonic()
    try:
        wait_until(lambda: count_lines(tmp_path / "out.ndjson") > before, 30, "the restarted daemon delivers", daemon=d2)
        recovery = time.monotonic() - t0
        wait_until(lambda: watcher.total("g-dkill", src, PARTS) >= n, 90, "everything committed", interval=0.2, daemon=d2)
    finally:
        assert d2.stop() == 0, d2.stderr()
    report = conserve(range(n), Lines(tmp_path / "out.ndjson").ids, dead_ids(dead_letters(tmp_path / "dlq.ndjson")),
                      window=window, guarantee=AT_LEAST_ONCE, expect_dead=())  # fmt: skip
    assert report.ok, report.summary()
    figures(row=3, lost=len(report.lost), duplicates=report.duplicates, window=window, recovery_s=round(recovery, 2),
            orphans_gone_s=round(orphans_gone, 2))  # fmt: skip


class WatermarkProbe:
    """Polls the committed offsets, then reads what the offramp holds: a committed offset must
    never be past a record the offramp does not hold (read in that order, the check is sound)."""

    def __init__(self, watcher: OffsetWatcher, group: str, topic: str, out: Path) -> None:
        self.watcher, self.group, self.topic, self.out = watcher, group, topic, out
        self.polls = 0
        self.violations: list[str] = []
        self.gaps_seen = 0  # polls where some partition had delivered records after an undelivered one
        self.held_back = 0  # polls where a commit stopped below delivered records (the watermark doing its job)

    def poll(self) -> int:
        committed = self.watcher.committed(self.group, self.topic, PARTS)
        delivered: dict[int, set[int]] = {}
        for ev in Lines(self.out).events:
            delivered.setdefault(ev["p"], set()).add(ev["o"])
        self.polls += 1
        gap = held = False
        for p in PARTS:
            have = delivered.get(p, set())
            first_missing = next(o for o in range(len(have) + 1) if o not in have)
            if have and max(have) > first_missing:
                gap = True
            c = committed.get(p, 0)
            if c > first_missing:
                self.violations.append(f"partition {p}: committed {c} but offset {first_missing} is not delivered")
            if have and c <= first_missing < max(have):
                held = True
        self.gaps_seen += gap
        self.held_back += held
        return sum(committed.values())


@pytest.mark.slow
def test_row04_out_of_order_completion_never_commits_past_an_undelivered_record(tmp_path: Path, kafka_broker: KafkaBroker,
                                                                                kafka_topic: Any, watcher: OffsetWatcher,
                                                                                figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="ooo")
    n = 16_000
    produce(kafka_broker, src, range(n), pad=50)
    # id i lands on partition i % 4 at offset i // 4 (round-robin): one slow record in the first and the
    # fifth chunk of 500 of every partition, so the chunks after it complete first
    slow = {4 * off + p for p in PARTS for off in (100, 2100)}
    stages(tmp_path, delay=0.0001, slow=slow, slow_s=1.0)
    port = free_port()
    cfg = write_config(tmp_path, file_pipeline(kafka_broker, src, "g-ooo", top=", ordered: false"), port=port)
    probe = WatermarkProbe(watcher, "g-ooo", src, tmp_path / "out.ndjson")
    d = Daemon(cfg)
    try:
        wait_until(lambda: (probe.poll() > 0 and probe.held_back >= 2) or probe.violations, 60, "a commit held back behind a slow record",
                   interval=0.1, daemon=d)  # fmt: skip
        assert not probe.violations, probe.violations[:5]
        committed = watcher.total("g-ooo", src, PARTS)
        window = inflight_window(port, committed)
        os.kill(d.pid, signal.SIGKILL)
        d.wait(10)
    finally:
        d.stop()
    d2 = Daemon(cfg)
    try:
        wait_until(lambda: probe.poll() >= n or probe.violations, 90, "everything committed after the restart", interval=0.1, daemon=d2)
        assert not probe.violations, probe.violations[:5]
    finally:
        assert d2.stop() == 0, d2.stderr()
    probe.poll()
    assert not probe.violations, probe.violations[:5]
    assert probe.gaps_seen and probe.held_back, "the test never saw out-of-order completion"
    report = conserve(range(n), Lines(tmp_path / "out.ndjson").ids, dead_ids(dead_letters(tmp_path / "dlq.ndjson")),
                      window=window, expect_dead=())  # fmt: skip
    assert report.ok, report.summary()
    figures(row=4, polls=probe.polls, held_back_polls=probe.held_back, violations=len(probe.violations), lost=len(report.lost),
            duplicates=report.duplicates, window=window)  # fmt: skip
