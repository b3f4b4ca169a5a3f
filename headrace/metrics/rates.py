"""Per-component totals read back from the registry, and rates between samples of them.

The sampler records a sample every second; ``/status`` (and so ``headrace top``) reports
rates between the current totals and a sample at least half an interval old, so the pace
at which someone polls does not change what the rates mean. The registry stays the one
source: nothing on the hot path counts twice.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headrace.metrics.defs import Metrics

RATE_FIELDS = ("events_in", "events_out", "events_err", "bytes_in", "bytes_out", "errors", "discarded")


@dataclass
class ComponentTotals:
    """What one component counted since start. ``events_out`` is every port but ``err``."""

    events_in: float = 0.0
    events_out: float = 0.0
    events_err: float = 0.0
    bytes_in: float = 0.0
    bytes_out: float = 0.0
    errors: float = 0.0
    discarded: float = 0.0
    ports: dict[str, float] = field(default_factory=dict)
    error_types: dict[str, float] = field(default_factory=dict)
    discard_reasons: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f: getattr(self, f) for f in RATE_FIELDS}
        out["ports"] = dict(self.ports)
        out["error_types"] = dict(self.error_types)
        out["discard_reasons"] = dict(self.discard_reasons)
        return out


def series(metrics: Metrics, name: str) -> dict[tuple[str, ...], float]:
    """Current values of one declared counter or gauge: label values -> value.

    The declared name is also the exposed sample name (counters are declared with ``_total``).
    """
    out: dict[tuple[str, ...], float] = {}
    for family in metrics[name].collect():
        for s in family.samples:
            if s.name == name:
                out[tuple(s.labels.values())] = float(s.value)
    return out


def read_totals(metrics: Metrics) -> dict[str, ComponentTotals]:
    totals: dict[str, ComponentTotals] = {}

    def of(cid: str) -> ComponentTotals:
        t = totals.get(cid)
        if t is None:
            t = totals[cid] = ComponentTotals()
        return t

    for (cid, _kind), v in series(metrics, "headrace_component_received_events_total").items():
        of(cid).events_in += v
    for (cid, _kind, port), v in series(metrics, "headrace_component_sent_events_total").items():
        t = of(cid)
        t.ports[port] = t.ports.get(port, 0.0) + v
        if port == "err":
            t.events_err += v
        else:
            t.events_out += v
    for (cid, _kind), v in series(metrics, "headrace_component_received_bytes_total").items():
        of(cid).bytes_in += v
    for (cid, _kind), v in series(metrics, "headrace_component_sent_bytes_total").items():
        of(cid).bytes_out += v
    for (cid, _kind, etype), v in series(metrics, "headrace_component_errors_total").items():
        t = of(cid)
        t.errors += v
        t.error_types[etype] = t.error_types.get(etype, 0.0) + v
    for (cid, reason), v in series(metrics, "headrace_component_discarded_events_total").items():
        t = of(cid)
        t.discarded += v
        t.discard_reasons[reason] = t.discard_reasons.get(reason, 0.0) + v
    return totals


@dataclass
class Sample:
    at: float
    totals: dict[str, ComponentTotals]


class RateTracker:
    """Keeps the last few samples of the totals; answers rates over about one interval."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic, keep: int = 4) -> None:
        self.interval = interval
        self.clock = clock
        self.samples: deque[Sample] = deque(maxlen=keep)

    def sample(self, metrics: Metrics) -> dict[str, ComponentTotals]:
        """Record the current totals (at most one sample per half interval); returns them."""
        now = self.clock()
        totals = read_totals(metrics)
        if not self.samples or now - self.samples[-1].at >= self.interval / 2:
            self.samples.append(Sample(now, totals))
        return totals

    def rates(self, totals: dict[str, ComponentTotals]) -> tuple[float, dict[str, dict[str, float]]]:
        """(window in seconds, per component per field: change per second) from ``totals`` taken now."""
        now = self.clock()
        base = None
        for s in reversed(self.samples):
            if now - s.at >= self.interval / 2:
                base = s
                break
        if base is None and self.samples:
            base = self.samples[0]
        window = now - base.at if base is not None else 0.0
        out: dict[str, dict[str, float]] = {}
        for cid, cur in totals.items():
            prev = base.totals.get(cid) if base is not None else None
            out[cid] = {f: _rate(getattr(cur, f), getattr(prev, f) if prev else 0.0, window) for f in RATE_FIELDS}
        return window, out


def _rate(cur: float, prev: float, window: float) -> float:
    if window <= 0:
        return 0.0
    delta = cur - prev if cur >= prev else cur  # a counter that went back was reset: count from zero
    return delta / window


_trackers: weakref.WeakKeyDictionary[Any, RateTracker] = weakref.WeakKeyDictionary()


def tracker_for(daemon: object) -> RateTracker:
    """The rate tracker of one daemon (created on first use, dropped with the daemon)."""
    tracker = _trackers.get(daemon)
    if tracker is None:
        tracker = _trackers[daemon] = RateTracker()
    return tracker
