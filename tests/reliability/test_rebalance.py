"""Row 32: a clean join and leave with a slow stage duplicates at most what was in flight.

With eager rebalancing every partition is revoked and assigned again. An instance that gets
back a partition it was working on must not read its own in-flight records again (before the
fix it restarted from the committed offset: each record in flight came out twice from the
same instance). What the joining instance reads again is bounded by what the first had in
flight for the partitions that moved.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.checker import AT_LEAST_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import (
    ONRAMP_IN,
    Lines,
    OffsetWatcher,
    count_lines,
    kafka_onramp,
    produce,
    scrape,
    stages,
    wait_until,
    write_config,
)
from tests.support.daemon import Daemon, free_port
from tests.support.kafka_broker import KafkaBroker

PARTS = (0, 1, 2, 3)


@pytest.mark.slow
def test_row32_clean_join_and_leave_reread_nothing_of_their_own(tmp_path: Path, kafka_broker: KafkaBroker, kafka_topic: Any,
                                                                 watcher: OffsetWatcher, figures: Figures) -> None:  # fmt: skip
    src = kafka_topic(4, prefix="rejoin")
    n = 6000
    produce(kafka_broker, src, range(n), pad=50)
    dirs = [tmp_path / "a", tmp_path / "b"]
    ports = [free_port(), free_port()]
    cfgs = []
    for folder, port in zip(dirs, ports, strict=True):
        folder.mkdir()
        stages(folder, delay=0.002)  # a slow stage: with the default queues, thousands of records are in flight
        body = f"""
onramps: {{in: {kafka_onramp(kafka_broker, src, "g-rejoin", "revoke_timeout: 2s")}}}
pipelines: {{main: [{{op: python, fn: "stages:work"}}]}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{in: [main], main: [out]}}
"""
        cfgs.append(write_config(folder, body, port=port, workers=1))
    outs = [f / "out.ndjson" for f in dirs]
    a = Daemon(cfgs[0])
    b: Daemon | None = None
    try:
        wait_until(lambda: count_lines(outs[0]) > 300, 60, "A consumes", daemon=a)
        in_flight_at_join = int(scrape(ports[0])[ONRAMP_IN.format("in")]) - watcher.total("g-rejoin", src, PARTS)
        b = Daemon(cfgs[1])
        t0 = time.monotonic()
        wait_until(lambda: count_lines(outs[1]) > 200, 60, "B takes partitions", daemon=b)
        join_s = time.monotonic() - t0
        b.signal(signal.SIGTERM)
        assert b.wait(30) == 0, b.stderr()
        wait_until(lambda: watcher.total("g-rejoin", src, PARTS) >= n, 120, "everything committed", interval=0.2, daemon=a)
    finally:
        for x in (b, a):
            if x is not None:
                x.stop()
    assert a.proc.returncode == 0, a.stderr()
    ids_a, ids_b = Lines(outs[0]).ids, Lines(outs[1]).ids
    own_a = sum(c - 1 for c in Counter(ids_a).values() if c > 1)
    own_b = sum(c - 1 for c in Counter(ids_b).values() if c > 1)
    assert own_a == 0 and own_b == 0, f"an instance read its own in-flight records again: A {own_a}, B {own_b}"
    report = conserve(range(n), {"a": ids_a, "b": ids_b}, window=max(in_flight_at_join, 0) + 500, guarantee=AT_LEAST_ONCE)
    assert report.ok, report.summary()
    assert report.found["b"] > 0, "B took part"
    figures(row=32, lost=len(report.lost), duplicates=report.duplicates, in_flight_at_join=in_flight_at_join, own_rereads=own_a + own_b,
            join_s=round(join_s, 1))  # fmt: skip
