"""Bounded memory, fair access and exposure (issue 12, items 15-20): hostile input that made the
daemon's memory grow without bound, or let one client lock others out, measured on the real
daemon as its peak RSS or as what the clients saw."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.reliability.checker import EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import Lines, RssSampler, count_lines, dead_letters, status, wait_until, write_config
from tests.support.daemon import Daemon, free_port

HOSTILE_EXPRESSIONS = {  # id % 20 -> (what the record carries, the bound it hits)
    3: ({"n": "%300000000d"}, "format width or precision 300000000"),  # `event['n'] % 10` formats a string
    5: ({"width": 300_000_000}, "format width or precision 300000000"),  # an f-string width from the data
    9: ({"count": 10**18}, "range of 1000000000000000000 items"),  # range(10**18) looped for good
}


def test_row18b_event_data_cannot_blow_up_an_expression(tmp_path: Path, figures: Figures) -> None:
    n = 200
    events = []
    for i in range(n):
        e = {"id": i, "n": i, "name": "x", "width": 4, "count": 3}
        e.update(HOSTILE_EXPRESSIONS.get(i % 20, ({}, ""))[0])
        events.append(e)
    (tmp_path / "in.ndjson").write_text("")
    port = free_port()
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson, follow: true}}}
pipelines:
  main:
    - {op: filter, where: "event['n'] % 10 != 7"}
    - {op: set, set: {label: "f\\"{event['name']:>{event['width']}}\\"", ones: "sum(1 for i in range(event['count']))"}}
offramps:
  out: {type: file, config: {path: out.ndjson}}
  dlq: {type: file, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], src/err: [dlq], main: [out], main/err: [dlq]}
""", port=port, workers=0)  # fmt: skip
    hostile = {i for i in range(n) if i % 20 in HOSTILE_EXPRESSIONS}
    filtered = {i for i in range(n) if i % 10 == 7}
    d = Daemon(cfg)
    rss = RssSampler(d.pid)
    try:
        wait_until(lambda: status(port).get("ready"), 30, "ready", daemon=d)
        rss.start()
        t0 = time.monotonic()
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events))
        wait_until(lambda: count_lines(tmp_path / "out.ndjson") + count_lines(tmp_path / "dlq.ndjson") >= n - len(filtered), 60,
                   "every record out or dead-lettered", daemon=d)  # fmt: skip
        took = time.monotonic() - t0
        rss.stop()
    finally:
        rss.stop()
        rc = d.stop()
    assert rc == 0, d.stderr()
    peak = rss.growth()
    dead = dead_letters(tmp_path / "dlq.ndjson")
    reasons = {e["event"]["id"]: e["meta"]["error"] for e in dead}
    wrong = {i: r for i, r in reasons.items() if r["type"] != "OverflowError" or HOSTILE_EXPRESSIONS[i % 20][1] not in r["message"]}
    assert not wrong, wrong
    out = Lines(tmp_path / "out.ndjson")
    report = conserve([i for i in range(n) if i not in filtered], out.ids, list(reasons), guarantee=EXACTLY_ONCE, expect_dead=hostile)
    assert report.ok, report.summary()
    assert all(e["label"] == "   x" and e["ones"] == 3 for e in out.events)
    assert peak < 30, f"RSS grew by {peak:.0f} MB on {len(hostile)} hostile records"
    figures(row="18b", records=n, hostile=len(hostile), dead_lettered=len(dead), seconds_to_drain=round(took, 2), rss_growth_peak_mb=round(peak),
            lost=len(report.lost))  # fmt: skip
