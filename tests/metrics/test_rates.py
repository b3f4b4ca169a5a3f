"""The sampler's arithmetic with an injected clock: busy ratio and per-component rates."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from headrace.metrics.defs import Metrics
from headrace.metrics.rates import RateTracker, read_totals, series
from headrace.metrics.sampler import BusyRatio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_busy_ratio_is_busy_time_over_wall_time() -> None:
    m = Metrics(CollectorRegistry())
    t = [0]
    busy = BusyRatio(m["headrace_worker_busy_ratio"], clock=lambda: t[0])
    assert busy.sample([0, 0]) == {"0": 0.0, "1": 0.0}  # a baseline first
    t[0] = 1_000_000_000
    assert busy.sample([250_000_000, 1_200_000_000]) == {"0": 0.25, "1": 1.0}  # clamped: results arrive in lumps
    t[0] = 2_000_000_000
    assert busy.sample([250_000_000, 1_700_000_000]) == {"0": 0.0, "1": 0.5}
    assert series(m, "headrace_worker_busy_ratio") == {("0",): 0.0, ("1",): 0.5}
    t[0] = 3_000_000_000
    assert busy.sample([1, 2, 3]) == {"0": 0.0, "1": 0.0, "2": 0.0}  # the pool changed size: a new baseline


def test_rates_over_the_last_interval_and_counter_resets() -> None:
    m = Metrics(CollectorRegistry())
    clock = Clock()
    tracker = RateTracker(interval=1.0, clock=clock)
    received = m["headrace_component_received_events_total"].labels("src", "onramp")
    sent = m["headrace_component_sent_events_total"]
    tracker.sample(m)
    assert tracker.rates(read_totals(m)) == (0.0, {"src": dict.fromkeys(("events_in", "events_out", "events_err", "bytes_in",
                                                                         "bytes_out", "errors", "discarded"), 0.0)})  # fmt: skip
    clock.now += 1.0
    received.inc(100)
    sent.labels("src", "onramp", "out").inc(90)
    sent.labels("src", "onramp", "err").inc(10)
    m["headrace_component_errors_total"].labels("src", "onramp", "framing").inc(10)
    tracker.sample(m)
    clock.now += 0.5
    received.inc(50)
    window, rates = tracker.rates(read_totals(m))
    assert window == 0.5  # against the sample half an interval old
    assert rates["src"]["events_in"] == 100.0
    clock.now += 0.5
    window, rates = tracker.rates(read_totals(m))
    assert window == 1.0
    assert rates["src"]["events_in"] == 50.0 and rates["src"]["events_out"] == 0.0
    totals = read_totals(m)["src"]
    assert (totals.events_in, totals.events_out, totals.events_err, totals.errors) == (150, 90, 10, 10)
    assert totals.ports == {"out": 90, "err": 10} and totals.error_types == {"framing": 10}
