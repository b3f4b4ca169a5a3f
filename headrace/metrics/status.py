"""The /status document: the graph, and per component its totals, rates and queue fill.

Everything is read from the registry (rates through ``rates.RateTracker``), so /status,
/metrics and ``headrace top`` cannot disagree. Rates are per second over ``rates_window_s``.
"""

from __future__ import annotations

import os
from typing import Any

from headrace import __version__
from headrace.metrics.rates import series, tracker_for
from headrace.metrics.source import DaemonView
from headrace.metrics.stagemetrics import TOTALS as STAGE_TOTALS


def build_status(daemon: DaemonView) -> dict[str, Any]:
    g = daemon.graph
    assert g is not None, "no status before the config is loaded"
    metrics = daemon.metrics
    tracker = tracker_for(daemon)
    totals = tracker.sample(metrics)
    window, rates = tracker.rates(totals)
    q_events = series(metrics, "headrace_queue_events")
    q_bytes = series(metrics, "headrace_queue_bytes")
    max_events, max_bytes = g.daemon.queue_events, g.daemon.queue_bytes
    pool = daemon.workers
    components: dict[str, Any] = {}
    for cid, c in g.components.items():
        entry: dict[str, Any] = {"kind": c.kind, "type": c.plugin}
        if c.pipeline:
            entry["pipeline"] = c.pipeline
        t = totals.get(cid)
        entry["totals"] = t.as_dict() if t is not None else None
        entry["rates"] = rates.get(cid)
        if (cid,) in q_events:
            ev, by = q_events[(cid,)], q_bytes.get((cid,), 0.0)
            entry["queue"] = {"events": ev, "bytes": by, "fill": max(ev / max_events, by / max_bytes)}
        else:
            entry["queue"] = None  # not the head of a queue: shares the queue of its chain
        components[cid] = entry
    return {
        "version": __version__,
        "pid": os.getpid(),
        "config": str(daemon.config_path),
        "ready": daemon.is_ready(),
        "components": components,
        "edges": [{"from": f"{s}/{p}", "to": t} for (s, p), t in g.edges.items()],
        "chains": [{"nodes": nodes, "placement": where} for nodes, where in daemon.placements()],
        "rates_window_s": window,
        "queue_limits": {"events": max_events, "bytes": max_bytes},
        "workers": pool.size if pool else 0,
        "worker_pids": pool.pids() if pool else [],  # live workers only
        "workers_down": pool.down() if pool else [],  # indices of workers not taking jobs now
        "worker_states": {str(i): v for i, v in pool.states().items()} if pool else {},  # state, pid, error per worker
        "worker_restarts": pool.restarts if pool else 0,
        "worker_busy": {w: v for (w,), v in sorted(series(metrics, "headrace_worker_busy_ratio").items())},
        "worker_occupied": {w: v for (w,), v in sorted(series(metrics, "headrace_worker_occupied_ratio").items())},
        "loop_lag_p99_ms": daemon.loop_lag_p99() * 1000,
        "kafka": _kafka(series(metrics, "headrace_kafka_consumer_lag"), series(metrics, "headrace_kafka_committed_offset")),
        "stage_metrics": STAGE_TOTALS.listing(),  # what stages declared with headrace.metric
    }


def _kafka(lag: dict[tuple[str, ...], float], committed: dict[tuple[str, ...], float]) -> list[dict[str, Any]]:
    keys = sorted(set(lag) | set(committed), key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else k[1]))
    return [{"topic": topic, "partition": part, "lag": lag.get((topic, part)), "committed_offset": committed.get((topic, part))}
            for topic, part in keys]  # fmt: skip
