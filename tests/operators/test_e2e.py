"""The stateful operators end to end through the real ``headrace run`` subprocess."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, json_lines

SLOW = """
import asyncio

async def slow(event, meta):
    await asyncio.sleep(0.005)
    return event

def double(event, meta):
    event["v"] = event["v"] * 2
    return event
"""


def lines(path: Path) -> list[Any]:
    return json_lines(path)


def records(values: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(v) + "\n" for v in values)


def run(write: Any, pipeline: str, data: list[dict[str, Any]] | None = None, onramp: str = "{type: file, config: {path: in.ndjson}}",
        daemon: str = "workers: 0", extra_links: str = "", timeout: float = 60) -> Daemon:  # fmt: skip
    if data is not None:
        write("in.ndjson", records(data))
    over = "  over: {type: file, config: {path: overflow.ndjson}}\n" if "[over]" in extra_links else ""
    cfg = write(
        "c.yaml",
        f"""
version: 1
daemon: {{{daemon}, metrics: {{listen: null}}}}
onramps: {{src: {onramp}}}
pipelines:
  main:
{pipeline}
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
{over}  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], main: [out], main/err: [dlq]{extra_links}}}
""",
    )
    d = Daemon(cfg)
    assert d.wait(timeout) == 0, d.stderr()
    return d


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_by_count_flushes_the_rest_at_the_end(tmp_path: Path, write: Any, workers: int) -> None:
    write("stages.py", SLOW)
    run(
        write,
        """    - {op: python, fn: "stages:double"}
    - {op: batch, count: 4}""",
        [{"v": i} for i in range(10)],
        daemon=f"workers: {workers}",
    )
    got = lines(tmp_path / "out.ndjson")
    assert got == [[{"v": 0}, {"v": 2}, {"v": 4}, {"v": 6}], [{"v": 8}, {"v": 10}, {"v": 12}, {"v": 14}], [{"v": 16}, {"v": 18}]]


def test_batch_timeout_emits_partial_batches_from_ticks(tmp_path: Path, write: Any) -> None:
    t0 = time.monotonic()
    run(write, "    - {op: batch, count: 1000, timeout: 150ms}", onramp="{type: metronome, config: {interval: 50ms, iters: 12}}")
    got = lines(tmp_path / "out.ndjson")
    assert [e["id"] for b in got for e in b] == list(range(12))  # every event, in order, once
    assert len(got) >= 3, got  # ~600 ms of input in batches of at most ~150 ms: emitted by ticks, not only at the end
    assert all(len(b) <= 5 for b in got)
    assert time.monotonic() - t0 < 30


def test_window_tumbling_by_count_with_sum_mean_max(tmp_path: Path, write: Any) -> None:
    data = [{"host": "a" if i % 3 else "b", "ms": i} for i in range(1, 13)]
    run(
        write,
        """    - op: window
      size: 3
      group_by: "event['host']"
      aggregates:
        total: {fn: sum, field: "event['ms']"}
        avg: {fn: mean, field: "event['ms']"}
        top: {fn: max, field: "event['ms']"}
        n: {fn: count}""",
        data,
    )
    got = [{k: v for k, v in e.items() if not k.startswith("window_")} for e in lines(tmp_path / "out.ndjson")]
    # a: 1 2 4 | 5 7 8 | 10 11 ; b: 3 6 9 | 12
    assert got == [
        {"group": "a", "total": 7, "avg": 7 / 3, "top": 4, "n": 3},
        {"group": "a", "total": 20, "avg": 20 / 3, "top": 8, "n": 3},
        {"group": "b", "total": 18, "avg": 6.0, "top": 9, "n": 3},
        {"group": "a", "total": 21, "avg": 10.5, "top": 11, "n": 2},  # at the end of input: the open windows
        {"group": "b", "total": 12, "avg": 12.0, "top": 12, "n": 1},
    ]


def test_window_by_time(tmp_path: Path, write: Any) -> None:
    run(write, """    - {op: window, interval: 200ms, aggregates: {n: {fn: count}, first: {fn: min, field: "event['id']"}}}""",
        onramp="{type: metronome, config: {interval: 40ms, iters: 25}}")  # fmt: skip
    got = lines(tmp_path / "out.ndjson")
    assert sum(w["n"] for w in got) == 25
    assert len(got) >= 4, got  # about 1 s of input in 200 ms windows
    for w in got:
        assert w["window_end"] - w["window_start"] == 200_000_000 and w["window_start"] % 200_000_000 == 0
    starts = [w["window_start"] for w in got]
    assert starts == sorted(set(starts))
    assert [w["first"] for w in got] == sorted(w["first"] for w in got)


def test_throttle_sends_the_excess_to_overflow(tmp_path: Path, write: Any) -> None:
    run(write, "    - {op: throttle, rate: 10, interval: 1h}", [{"id": i} for i in range(100)], extra_links=", main/overflow: [over]")
    assert [e["id"] for e in lines(tmp_path / "out.ndjson")] == list(range(10))
    assert [e["id"] for e in lines(tmp_path / "overflow.ndjson")] == list(range(10, 100))


def test_throttle_without_overflow_link_drops(tmp_path: Path, write: Any) -> None:
    run(write, "    - {op: throttle, rate: 5, interval: 1h}", [{"id": i} for i in range(20)])
    assert len(lines(tmp_path / "out.ndjson")) == 5


def test_dedupe(tmp_path: Path, write: Any) -> None:
    data = [{"id": i % 7, "n": i} for i in range(30)]
    run(write, """    - {op: dedupe, key: "event['id']", window: 1h}""", data)
    assert lines(tmp_path / "out.ndjson") == [{"id": i, "n": i} for i in range(7)]


def test_sample_by_counter_and_by_key(tmp_path: Path, write: Any) -> None:
    run(write, "    - {op: sample, rate: 10}", [{"id": i} for i in range(100)])
    assert [e["id"] for e in lines(tmp_path / "out.ndjson")] == list(range(0, 100, 10))
    (tmp_path / "out.ndjson").unlink()
    data = [{"user": f"u{i % 20}", "n": i} for i in range(200)]
    run(write, """    - {op: sample, rate: 4, key: "event['user']"}""", data)
    got = lines(tmp_path / "out.ndjson")
    users = {e["user"] for e in got}
    assert 0 < len(users) < 20 and len(got) == 10 * len(users)


def test_backpressure_diverts_to_overflow_instead_of_blocking(tmp_path: Path, write: Any) -> None:
    write("stages.py", SLOW)
    n = 4000
    t0 = time.monotonic()
    run(write, """    - {op: backpressure, steps: [50ms, 100ms, 250ms]}
    - {op: python, fn: "stages:slow", concurrency: 1}""", [{"id": i} for i in range(n)],
        daemon="workers: 0, batch_size: 50, queue_events: 100", extra_links=", main/overflow: [over]")  # fmt: skip
    elapsed = time.monotonic() - t0
    out = [e["id"] for e in lines(tmp_path / "out.ndjson")]
    over = [e["id"] for e in lines(tmp_path / "overflow.ndjson")]
    assert sorted(out + over) == list(range(n))  # nothing lost, nothing twice
    assert over and out
    assert len(out) < n / 2, (len(out), len(over))
    # all of them through the slow stage would take n * 5 ms = 20 s
    assert elapsed < 15, elapsed
