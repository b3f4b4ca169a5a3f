"""The /status document: the graph, and per component its totals, rates and queue fill.

Everything is read from the registry (rates through ``rates.RateTracker``), so /status,
/metrics and ``headrace top`` cannot disagree. Rates are per second over ``rates_window_s``.
"""

from __future__ import annotations

import os
from typing import Any

from headrace import __version__
from headrace.metrics.rates import series, tracker_for


def build_status(daemon: Any) -> dict[str, Any]:
    g = daemon.graph
    metrics = daemon.metrics
    tracker = tracker_for(daemon)
    totals = tracker.sample(metrics)
    window, rates = tracker.rates(totals)
    q_events = series(metrics, "headrace_queue_events")
    q_bytes = series(metrics, "headrace_queue_bytes")
    max_events, max_bytes = g.daemon.queue_events, g.daemon.queue_bytes
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
        "chains": _chains(daemon),
        "rates_window_s": window,
        "queue_limits": {"events": max_events, "bytes": max_bytes},
        "workers": daemon.pool.size if daemon.pool else 0,
        "worker_pids": daemon.pool.pids() if daemon.pool else [],  # live workers only
        "workers_down": daemon.pool.down() if daemon.pool else [],  # indices of workers not taking jobs now
        "worker_states": {str(i): v for i, v in daemon.pool.states().items()} if daemon.pool else {},  # state, pid, error per worker
        "worker_restarts": daemon.pool.restarts if daemon.pool else 0,
        "worker_busy": {w: v for (w,), v in sorted(series(metrics, "headrace_worker_busy_ratio").items())},
        "loop_lag_p99_ms": daemon.loop_lag_p99() * 1000,
        "kafka": _kafka(series(metrics, "headrace_kafka_consumer_lag"), series(metrics, "headrace_kafka_committed_offset")),
    }


def _chains(daemon: Any) -> list[dict[str, Any]]:
    """How nodes were placed: each chain runs as one unit, on the workers or on the loop."""
    engine = daemon.engine
    if engine is None:
        return []
    out = []
    for runner in engine.chains.values():
        chain = getattr(runner, "chain", None)
        if chain is not None:  # a worker segment
            out.append({"nodes": list(chain.nodes), "placement": "workers" if chain.on_workers else "loop"})
        else:
            out.append({"nodes": [s.id for s in runner.stages], "placement": "loop"})
    return out


def _kafka(lag: dict[tuple[str, ...], float], committed: dict[tuple[str, ...], float]) -> list[dict[str, Any]]:
    keys = sorted(set(lag) | set(committed), key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else k[1]))
    return [{"topic": topic, "partition": part, "lag": lag.get((topic, part)), "committed_offset": committed.get((topic, part))}
            for topic, part in keys]  # fmt: skip
