"""``headrace top [URL]``: live per-component rates of a running daemon, in the terminal.

Reads ``/status`` (the graph, per-component rates and queue fill, loop lag) and
``/metrics`` (worker busy ratio, Kafka lag) of the daemon's admin endpoint every
``interval`` seconds. The rates are the daemon's own, over its last second, so they do
not depend on how often top polls. ``--once`` prints one snapshot and exits.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

TIMEOUT = 5.0


class Unreachable(Exception):
    """The daemon did not answer, or answered with something that is not a headrace /status."""


@dataclass
class Snapshot:
    status: dict[str, Any]
    busy: dict[str, float] = field(default_factory=dict)  # worker -> ratio
    kafka_lag: dict[tuple[str, str], float] = field(default_factory=dict)  # (topic, partition) -> records
    retrying: dict[str, float] = field(default_factory=dict)  # offramp -> backoff seconds, while its write fails
    over_budget: set[str] = field(default_factory=set)  # onramps paused by daemon.error_budget
    taken: float = field(default_factory=time.time)


def admin_headers(token_file: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` for an admin endpoint with ``daemon.metrics.token``: the content of
    ``token_file``, else ``$HEADRACE_TOKEN``; none when neither is given. ``OSError``: unreadable file."""
    import os

    if token_file is not None:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
    else:
        token = os.environ.get("HEADRACE_TOKEN", "").strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def base_url(url: str) -> str:
    """``host:port``, ``http://host:port`` or a full endpoint URL -> ``http://host:port``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    for suffix in ("/metrics", "/status", "/health", "/ready"):
        url = url.removesuffix(suffix)
    return url


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            body: bytes = resp.read()
            return body
    except urllib.error.HTTPError as exc:
        raise Unreachable(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"{url}: {reason}") from exc


def fetch(base: str) -> Snapshot:
    try:
        status = json.loads(_get(f"{base}/status"))
    except ValueError as exc:
        raise Unreachable(f"{base}/status is not JSON: {exc}") from exc
    if not isinstance(status, dict) or "components" not in status:
        raise Unreachable(f"{base}/status is not a headrace status document")
    snap = Snapshot(status)
    try:
        text = _get(f"{base}/metrics").decode("utf-8", "replace")
    except Unreachable:
        return snap  # the per-component view still works
    read_gauges(text, snap)
    return snap


def read_gauges(text: str, snap: Snapshot) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    backoff: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "headrace_worker_busy_ratio":
            snap.busy = {s.labels["worker"]: s.value for s in family.samples}
        elif family.name == "headrace_kafka_consumer_lag":
            snap.kafka_lag = {(s.labels["topic"], s.labels["partition"]): s.value for s in family.samples}
        elif family.name == "headrace_offramp_state":
            for s in family.samples:
                if s.labels.get("state") == "retrying" and s.value == 1:
                    snap.retrying.setdefault(s.labels["offramp"], 0.0)
        elif family.name == "headrace_offramp_backoff_seconds":
            backoff = {s.labels["offramp"]: s.value for s in family.samples}
        elif family.name == "headrace_error_budget_exceeded":
            snap.over_budget = {s.labels["component_id"] for s in family.samples if s.value == 1}
    for off in snap.retrying:
        snap.retrying[off] = backoff.get(off, 0.0)


def si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{prefix}{unit}"
    return f"{value:.0f}{unit}" if value == int(value) or abs(value) >= 10 else f"{value:.1f}{unit}"


def size(value: float | None) -> str:
    """Bytes, short: 512, 1.5K, 3.2M, 1.1G (binary multiples)."""
    if value is None:
        return "-"
    for factor, prefix in ((2**30, "G"), (2**20, "M"), (2**10, "K")):
        if value >= factor:
            return f"{value / factor:.1f}{prefix}"
    return f"{value:.0f}"


def render(base: str, snap: Snapshot, error: str | None = None) -> RenderableType:
    st = snap.status
    head = Text()
    head.append(f"headrace {st.get('version', '?')}", style="bold")
    head.append(f"  {base}  pid {st.get('pid', '?')}  ")
    head.append("ready" if st.get("ready") else "NOT READY", style="green" if st.get("ready") else "bold red")
    head.append(f"\nworkers {st.get('workers', 0)} (restarts {st.get('worker_restarts', 0)})")
    head.append(f"  loop lag p99 {st.get('loop_lag_p99_ms', 0.0):.1f} ms")
    head.append(f"  rates over {st.get('rates_window_s', 0.0):.1f} s  at {time.strftime('%H:%M:%S', time.localtime(snap.taken))}")
    parts: list[RenderableType] = [head]
    if error:
        parts.append(Text(f"daemon unreachable, showing the last snapshot: {error}", style="bold red"))
    parts.append(components_table(st, snap))
    busy = snap.busy or st.get("worker_busy") or {}
    if busy:
        parts.append(workers_table(busy, st.get("worker_pids") or [], st.get("worker_states") or {}))
    if snap.kafka_lag:
        parts.append(kafka_table(snap.kafka_lag))
    return Group(*parts)


def verdict(cid: str, c: dict[str, Any], st: dict[str, Any], snap: Snapshot) -> tuple[str, str]:
    """One line of words on what holds a component back, and its style: the first that applies
    of a paused onramp, a failing offramp write, a full queue (and why: busy workers, a lagging
    loop), errors; else ok or idle."""
    r = c.get("rates") or {}
    q = c.get("queue")
    if cid in snap.over_budget:
        return "paused: over its error budget", "bold red"
    if cid in snap.retrying:
        return f"retrying a failed write (next in {snap.retrying[cid]:.1f}s)", "bold red"
    if q and q["fill"] >= 0.9:
        busy = snap.busy or st.get("worker_busy") or {}
        mean = sum(busy.values()) / len(busy) if busy else 0.0
        lag = st.get("loop_lag_p99_ms", 0.0)
        if c.get("kind") == "offramp":
            why = "its writes are slower than its input"
        elif mean >= 0.9:
            why = f"workers {mean * 100:.0f}% busy: more cores or a cheaper stage"
        elif lag >= 50:
            why = f"the event loop lags {lag:.0f} ms"
        else:
            why = "slower than its input"
        return f"bottleneck: queue {q['fill'] * 100:.0f}% full, {why}", "bold yellow"
    if r.get("errors"):
        return f"{si(r.get('errors'))} errors/s", "red"
    if not r.get("events_in") and not r.get("events_out"):
        return "idle", "dim"
    return "ok", "green"


def components_table(st: dict[str, Any], snap: Snapshot | None = None) -> Table:
    comps: dict[str, Any] = st["components"]
    snap = snap if snap is not None else Snapshot(st)
    t = Table(title="components (per second; bytes in binary multiples)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False)
    t.add_column("component", min_width=min(max((len(c) for c in comps), default=9), 40), overflow="fold")
    t.add_column("kind", no_wrap=True)
    for col in ("in/s", "out/s", "err/s", "drop/s", "in B/s", "out B/s", "queue"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("state", overflow="fold")
    for cid, c in comps.items():
        r = c.get("rates") or {}
        q = c.get("queue")
        err = r.get("errors") or 0.0
        queue = Text(f"{si(q['events'])} {q['fill'] * 100:.0f}%", style=_fill_style(q["fill"])) if q else Text("")
        t.add_row(cid, c.get("kind", "?"), si(r.get("events_in")), si(r.get("events_out")),
                  Text(si(r.get("errors")), style="bold red" if err else ""), si(r.get("discarded")),
                  size(r.get("bytes_in")), size(r.get("bytes_out")), queue, Text(*verdict(cid, c, st, snap)))  # fmt: skip
    return t


def _fill_style(fill: float) -> str:
    return "bold red" if fill >= 0.9 else "yellow" if fill >= 0.5 else ""


def workers_table(busy: dict[str, float], pids: list[int], states: dict[str, Any] | None = None) -> Table:
    t = Table(title="workers", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False)
    t.add_column("worker")
    t.add_column("pid", justify="right")
    t.add_column("busy", justify="right")
    t.add_column("", min_width=20)
    for worker in sorted(busy, key=lambda w: int(w) if w.isdigit() else 0):
        ratio = busy[worker]
        idx = int(worker) if worker.isdigit() else -1
        bar = "#" * round(ratio * 20)
        if states and worker in states:  # the pid of a live worker, else what it is doing
            pid = str(states[worker]["pid"] or states[worker]["state"])
        else:
            pid = str(pids[idx]) if 0 <= idx < len(pids) else "-"
        t.add_row(worker, pid, f"{ratio * 100:.0f}%",
                  Text(bar, style="red" if ratio >= 0.9 else "green"))  # fmt: skip
    return t


def kafka_table(lag: dict[tuple[str, str], float]) -> Table:
    t = Table(title="kafka consumer lag (records)", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False)
    t.add_column("topic")
    t.add_column("partition", justify="right")
    t.add_column("lag", justify="right")
    for (topic, part), value in sorted(lag.items(), key=lambda kv: (kv[0][0], int(kv[0][1]) if kv[0][1].isdigit() else 0)):
        t.add_row(topic, part, si(value))
    return t


def run_top(url: str, interval: float, once: bool) -> int:
    base = base_url(url)
    try:
        snap = fetch(base)
    except Unreachable as exc:
        print(f"headrace top: cannot reach a headrace daemon at {base}: {exc}", file=sys.stderr)
        print("  is it running, with daemon.metrics.listen set to this address?", file=sys.stderr)
        return 1
    console = Console()
    if once:
        if not console.is_terminal:
            console = Console(width=200)  # a pipe or a file: do not cut component names at 80 columns
        console.print(render(base, snap))
        return 0
    interval = max(interval, 0.1)
    try:
        with Live(render(base, snap), console=console, auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                error = None
                try:
                    snap = fetch(base)
                except Unreachable as exc:
                    error = str(exc)
                live.update(render(base, snap, error), refresh=True)
    except KeyboardInterrupt:
        return 0
