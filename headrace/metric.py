"""Metrics from stages: ``headrace.metric.counter("orders_total", labels={"kind": "web"}).inc()``.

A stage declares a counter, gauge or histogram by name (once: the same name with another kind
or other label names raises ``ValueError``) and updates it from ``process`` / ``fn`` on the
loop or on a worker. Each update is kept in the process (a dict step, no lock, no I/O); a
worker's updates travel to the parent with the answer of the job that made them, and the
parent adds them up. ``/metrics`` shows each one under its name with the stage's
``component_id`` label (the node that made the update) and the declared labels; ``/status``
lists them under ``stage_metrics``.

- ``counter(...).inc(n=1)``: n >= 0; the parent sums over processes.
- ``gauge(...).set(v)`` / ``.inc(n)`` / ``.dec(n)``: ``set`` from several workers: the last
  answer the parent reads wins; ``inc``/``dec`` are summed over processes.
- ``histogram(..., buckets=...).observe(v)``: bucket counts, sum and count, summed.

Updates of a job whose worker died before answering are lost with it. Names follow
Prometheus (``[a-zA-Z_:][a-zA-Z0-9_:]*``) and may not start with ``headrace_``.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

__all__ = ["counter", "gauge", "histogram"]

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Key = tuple[str, str, tuple[str, ...]]  # (name, component_id, label values)


class Updates:
    """What this process's stages did since the last ``drain`` (deltas; gauges' last ``set``)."""

    def __init__(self) -> None:
        self.decl: dict[str, tuple[str, tuple[str, ...], str, tuple[float, ...]]] = {}  # name -> (kind, label names, help, buckets)
        self.counts: dict[Key, float] = {}
        self.sets: dict[Key, float] = {}
        self.adds: dict[Key, float] = {}
        self.hists: dict[Key, list[float]] = {}  # bucket counts (+Inf last), then the sum

    def drain(self) -> dict[str, Any] | None:
        if not (self.counts or self.sets or self.adds or self.hists):
            return None
        out = {"decl": dict(self.decl), "counts": self.counts, "sets": self.sets, "adds": self.adds, "hists": self.hists}
        self.counts, self.sets, self.adds, self.hists = {}, {}, {}, {}
        return out


updates = Updates()


def _stage() -> str:
    """The node running now (what the ``component_id`` label says)."""
    from headrace import _emit

    fused = _emit.sync.fused
    if fused is not None:
        return str(fused.ids[fused.stage])
    bound = _emit.current.get()
    return bound[1] if bound is not None else ""


def _declare(name: str, kind: str, labels: dict[str, Any] | None, help: str, buckets: tuple[float, ...] = ()) -> tuple[str, ...]:
    if not isinstance(name, str) or not NAME.fullmatch(name) or name.startswith("headrace_"):
        raise ValueError(f"metric name {name!r}: use [a-zA-Z_:][a-zA-Z0-9_:]*, not starting with headrace_")
    names = tuple(sorted(labels or {}))
    for label in names:
        if not LABEL.fullmatch(label) or label.startswith("__") or label == "component_id":
            raise ValueError(f"metric {name}: label name {label!r} is not allowed")
    seen = updates.decl.get(name)
    if seen is None:
        updates.decl[name] = (kind, names, help, buckets)
    elif seen[:2] != (kind, names) or (kind == "histogram" and seen[3] != buckets):
        raise ValueError(f"metric {name} was declared as a {seen[0]} with labels {list(seen[1])}; now as a {kind} with {list(names)}")
    return tuple(str((labels or {})[k]) for k in names)


class Counter:
    __slots__ = ("name", "values")

    def __init__(self, name: str, values: tuple[str, ...]) -> None:
        self.name, self.values = name, values

    def inc(self, n: float = 1.0) -> None:
        if n < 0:
            raise ValueError(f"counter {self.name} can only go up (inc({n}))")
        key = (self.name, _stage(), self.values)
        updates.counts[key] = updates.counts.get(key, 0.0) + n


class Gauge:
    __slots__ = ("name", "values")

    def __init__(self, name: str, values: tuple[str, ...]) -> None:
        self.name, self.values = name, values

    def set(self, v: float) -> None:
        key = (self.name, _stage(), self.values)
        updates.sets[key] = float(v)
        updates.adds.pop(key, None)  # what was added before this set is overwritten by it

    def inc(self, n: float = 1.0) -> None:
        key = (self.name, _stage(), self.values)
        updates.adds[key] = updates.adds.get(key, 0.0) + n

    def dec(self, n: float = 1.0) -> None:
        self.inc(-n)


class Histogram:
    __slots__ = ("bounds", "name", "values")

    def __init__(self, name: str, values: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.values, self.bounds = name, values, bounds

    def observe(self, v: float) -> None:
        key = (self.name, _stage(), self.values)
        h = updates.hists.get(key)
        if h is None:
            h = updates.hists[key] = [0.0] * (len(self.bounds) + 2)
        h[bisect.bisect_left(self.bounds, v)] += 1  # the first bucket whose upper bound is >= v (the last: +Inf)
        h[-1] += v


def counter(name: str, labels: dict[str, Any] | None = None, help: str = "") -> Counter:
    return Counter(name, _declare(name, "counter", labels, help))


def gauge(name: str, labels: dict[str, Any] | None = None, help: str = "") -> Gauge:
    return Gauge(name, _declare(name, "gauge", labels, help))


def histogram(name: str, labels: dict[str, Any] | None = None, help: str = "", buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> Histogram:
    bounds = tuple(sorted(float(b) for b in buckets))
    return Histogram(name, _declare(name, "histogram", labels, help, bounds), bounds)
