"""The parent's totals of the metrics stages declared (``headrace.metric``), exposed by a collector
on the daemon's registry: loop stages' updates are read at each scrape, workers' arrive with
their job answers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from headrace import metric


class StageTotals:
    def __init__(self) -> None:
        self.decl: dict[str, tuple[str, tuple[str, ...], str, tuple[float, ...]]] = {}
        self.counts: dict[metric.Key, float] = {}
        self.gauges: dict[metric.Key, float] = {}
        self.hists: dict[metric.Key, list[float]] = {}

    def merge(self, d: dict[str, Any] | None) -> None:
        """Add what a process drained (``headrace.metric.updates.drain()``)."""
        if not d:
            return
        self.decl.update(d["decl"])
        for key, n in d["counts"].items():
            self.counts[key] = self.counts.get(key, 0.0) + n
        for key, v in d["sets"].items():
            self.gauges[key] = v
        for key, n in d["adds"].items():
            self.gauges[key] = self.gauges.get(key, 0.0) + n
        for key, h in d["hists"].items():
            mine = self.hists.get(key)
            self.hists[key] = list(h) if mine is None else [a + b for a, b in zip(mine, h, strict=True)]

    def listing(self) -> dict[str, Any]:
        """What ``/status`` shows: each declared metric with its type, labels and help."""
        self.merge(metric.updates.drain())
        return {name: {"type": kind, "labels": ["component_id", *labels], "help": help} for name, (kind, labels, help, _) in sorted(self.decl.items())}

    def families(self) -> Iterator[Metric]:
        self.merge(metric.updates.drain())  # this process's own (loop) stages
        for name, (kind, labels, help, bounds) in sorted(self.decl.items()):
            names = ["component_id", *labels]
            text = help or f"declared by a stage (headrace.metric.{kind})"
            if kind == "counter":
                fam: Any = CounterMetricFamily(name, text, labels=names)
                for (n, cid, values), v in self.counts.items():
                    if n == name:
                        fam.add_metric([cid, *values], v)
            elif kind == "gauge":
                fam = GaugeMetricFamily(name, text, labels=names)
                for (n, cid, values), v in self.gauges.items():
                    if n == name:
                        fam.add_metric([cid, *values], v)
            else:
                fam = HistogramMetricFamily(name, text, labels=names)
                for (n, cid, values), h in self.hists.items():
                    if n == name:
                        cumulative, buckets = 0.0, []
                        for le, c in zip([*(f"{b:g}" for b in bounds), "+Inf"], h[:-1], strict=True):
                            cumulative += c
                            buckets.append((le, cumulative))
                        fam.add_metric([cid, *values], buckets, h[-1])
            yield fam


TOTALS = StageTotals()


class StageCollector:
    def collect(self) -> Iterator[Metric]:
        yield from TOTALS.families()

    def describe(self) -> list[Metric]:
        return []  # names come and go with the stages: never checked against the registry's
