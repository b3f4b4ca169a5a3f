"""``headrace top``'s state column: one line of words per component on what holds it back."""

from __future__ import annotations

from typing import Any

import pytest

from headrace.cli.top import Snapshot, read_gauges, verdict


def comp(kind: str = "node", fill: float | None = None, events_in: float = 10.0, errors: float = 0.0) -> dict[str, Any]:
    c: dict[str, Any] = {"kind": kind, "rates": {"events_in": events_in, "events_out": events_in, "errors": errors}}
    if fill is not None:
        c["queue"] = {"events": 1000 * fill, "fill": fill}
    return c


@pytest.mark.parametrize(("c", "st", "busy", "expect"), [
    (comp(), {}, {}, "ok"),
    (comp(events_in=0.0), {}, {}, "idle"),
    (comp(errors=3.0), {}, {}, "3 errors/s"),
    (comp(fill=0.95), {}, {"0": 0.97, "1": 0.95}, "bottleneck: queue 95% full, workers 96% busy"),
    (comp(fill=0.95), {"loop_lag_p99_ms": 120.0}, {"0": 0.2}, "the event loop lags 120 ms"),
    (comp(fill=0.92), {}, {"0": 0.2}, "slower than its input"),
    (comp("offramp", fill=1.0), {}, {}, "its writes are slower than its input"),
    (comp(fill=0.5), {}, {"0": 1.0}, "ok"),  # half full is not a bottleneck yet
])  # fmt: skip
def test_verdicts(c: dict[str, Any], st: dict[str, Any], busy: dict[str, float], expect: str) -> None:
    snap = Snapshot(st, busy=busy)
    words, _ = verdict("x", c, st, snap)
    assert expect in words, words


def test_a_retrying_offramp_and_a_paused_onramp_are_named_from_the_metrics() -> None:
    snap = Snapshot({})
    read_gauges("""
# TYPE headrace_offramp_state gauge
headrace_offramp_state{offramp="out",state="ok"} 0.0
headrace_offramp_state{offramp="out",state="retrying"} 1.0
headrace_offramp_state{offramp="dlq",state="ok"} 1.0
headrace_offramp_state{offramp="dlq",state="retrying"} 0.0
# TYPE headrace_offramp_backoff_seconds gauge
headrace_offramp_backoff_seconds{offramp="out"} 3.2
headrace_offramp_backoff_seconds{offramp="dlq"} 0.0
# TYPE headrace_error_budget_exceeded gauge
headrace_error_budget_exceeded{component_id="in"} 1.0
""", snap)
    assert verdict("out", comp("offramp", fill=1.0), {}, snap)[0] == "retrying a failed write (next in 3.2s)"
    assert verdict("dlq", comp("offramp"), {}, snap)[0] == "ok"
    assert verdict("in", comp("onramp"), {}, snap)[0] == "paused: over its error budget"
