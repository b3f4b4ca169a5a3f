"""Every metric, declared once: name, type, help, labels. The reference doc is generated from this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

MetricType = Literal["counter", "gauge", "histogram"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(frozen=True)
class MetricDef:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


METRICS: tuple[MetricDef, ...] = (
    MetricDef("headrace_component_received_events_total", "counter", "Events received by a component.", ("component_id", "component_kind")),
    MetricDef("headrace_component_sent_events_total", "counter", "Events sent by a component, per output port.", ("component_id", "component_kind", "port")),
    MetricDef("headrace_component_received_bytes_total", "counter", "Bytes received by a component (encoded records).", ("component_id", "component_kind")),
    MetricDef("headrace_component_sent_bytes_total", "counter", "Bytes sent by a component (encoded records).", ("component_id", "component_kind")),
    MetricDef("headrace_component_errors_total", "counter", "Errors in a component, by type.", ("component_id", "component_kind", "error_type")),
    MetricDef("headrace_component_discarded_events_total", "counter", "Events discarded on purpose (filtered, unlinked port, dropped by a stage).", ("component_id", "reason")),
    MetricDef("headrace_onramp_refused_total", "counter", "Connections and requests an onramp refused or cut off (over a cap, too slow, too large, from a foreign origin, without credentials).", ("component_id", "reason")),
    MetricDef("headrace_component_buffered_bytes", "gauge", "Approximate bytes a component holds outside the edge queues: datagrams or request bodies an onramp read and did not hand on yet, an operator's open windows or remembered keys.", ("component_id",)),
    MetricDef("headrace_queue_events", "gauge", "Events waiting in an edge queue.", ("edge",)),
    MetricDef("headrace_queue_bytes", "gauge", "Bytes waiting in an edge queue.", ("edge",)),
    MetricDef("headrace_event_latency_seconds", "histogram", "Time from ingest to offramp accept.", ("offramp",), LATENCY_BUCKETS),
    MetricDef("headrace_offramp_state", "gauge", "1 for the offramp's current state, 0 for the other: `ok` (its writes succeed, or none is due) "
              "or `retrying` (a write failed and waits for its next attempt).", ("offramp", "state")),
    MetricDef("headrace_buffer_bytes", "gauge", "Bytes in a disk buffer: segment files not yet freed, and appended entries waiting in memory for the next sync.", ("component_id",)),
    MetricDef("headrace_buffer_events", "gauge", "Events in a disk buffer not yet done (an offramp's: written to its sink; an onramp's: "
              "delivered by the graph).", ("component_id",)),
    MetricDef("headrace_buffer_synced_events_total", "counter", "Events appended to a disk buffer and safe since start: covered by an fsync, or delivered before one was due.",
              ("component_id",)),
    MetricDef("headrace_buffer_dropped_events_total", "counter", "Events a disk buffer dropped (`when_full: drop_newest`).",
              ("component_id", "reason")),
    MetricDef("headrace_buffer_torn_total", "counter", "Torn or corrupt segment tails cut off when a disk buffer was opened "
              "(a crash during a write).", ("component_id",)),
    MetricDef("headrace_offramp_backoff_seconds", "gauge", "The wait before the next attempt of the offramp's failing write; 0 when none fails.", ("offramp",)),
    MetricDef("headrace_error_budget_exceeded", "gauge", "1 once more than daemon.error_budget.ratio of an onramp's records went to err "
              "ports within the window: the onramp is paused (or the daemon stops) and its err records fail instead of being acked.",
              ("component_id",)),
    MetricDef("headrace_memory_rss_bytes", "gauge", "Resident memory of a daemon process: the parent, or worker N.", ("process",)),
    MetricDef("headrace_memory_limit_bytes", "gauge", "The memory limit daemon.memory is a share of: the cgroup's memory.max, else the machine's memory.", ()),
    MetricDef("headrace_memory_paused", "gauge", "1 while every source is paused because resident memory went over daemon.memory.max.", ()),
    MetricDef("headrace_event_loop_lag_seconds", "histogram", "Delay of a periodic event-loop timer beyond its schedule.", (), LAG_BUCKETS),
    MetricDef("headrace_loop_blocked_seconds_total", "counter", "Time stages on the event loop held it beyond the threshold.", ("component_id",)),
    MetricDef("headrace_worker_busy_ratio", "gauge", "Share of the last second a worker spent running jobs (their CPU time over wall time).", ("worker",)),
    MetricDef("headrace_worker_occupied_ratio", "gauge", "Share of the last second a worker had a job in hand (wall time from reading a job to answering it).", ("worker",)),
    MetricDef("headrace_worker_busy_seconds_total", "counter", "CPU time a worker spent on the jobs it answered (the busy ratio's numerator).", ("worker",)),
    MetricDef("headrace_worker_occupied_seconds_total", "counter", "Wall time a worker had the jobs it answered in hand (the occupied ratio's numerator).", ("worker",)),
    MetricDef("headrace_worker_restarts_total", "counter", "Worker processes respawned after dying or being killed.", ("worker",)),
    MetricDef("headrace_worker_jobs_total", "counter", "Jobs (chunks of events) a worker completed.", ("worker",)),
    MetricDef("headrace_worker_job_events_total", "counter", "Events in the jobs a worker completed (over jobs: the mean job size).", ("worker",)),
    MetricDef("headrace_worker_redispatched_batches_total", "counter", "Batches dispatched again after their worker died.", ()),
    MetricDef("headrace_worker_up", "gauge", "1 while the worker is set up and takes jobs; 0 while it is dead, respawning, setting up or failing to.", ("worker",)),
    MetricDef("headrace_worker_start_failures_total", "counter", "Failed attempts to start or set up a worker (no file descriptor left, a stage's setup() "
              "raising, death while setting up); each is retried with backoff.", ("worker",)),
    MetricDef("headrace_worker_recycles_total", "counter", "Workers replaced on purpose after answering a job (no record blamed).", ("worker", "cause")),
    MetricDef("headrace_kafka_consumer_lag", "gauge", "High watermark minus position, per partition.", ("topic", "partition")),
    MetricDef("headrace_kafka_committed_offset", "gauge", "Last committed offset, per partition.", ("topic", "partition")),
    MetricDef("headrace_config_reloads_total", "counter", "Config reloads, by result.", ("result",)),
    MetricDef("headrace_config_last_reload_successful", "gauge", "1 if the last reload succeeded (or none happened), else 0.", ()),
    MetricDef("headrace_build_info", "gauge", "Always 1; the version label says which build runs.", ("version",)),
)

LABELS: dict[str, str] = {
    "component_id": "onramp or offramp id, or `pipeline.node` for a node (a list pipeline names its nodes `op_index`)",
    "component_kind": "`onramp`, `node` or `offramp`",
    "port": "output port: `out`, `err`, or a named port of an operator (`overflow`, a route name)",
    "error_type": "`decode` (counted at the onramp the record came from), `stage_exception`, `framing`, `encode`, `worker_crash`, "
    "`unlinked_err` (events on an err port with no link: they go to its last-resort file), `last_resort_failed` (writing them there "
    "failed too: they are failed, their source not acked), or the exception class an offramp raised on write",
    "reason": "discarded: `filtered` (a filter or other operator dropped it), `dropped` (a python stage returned None), `unlinked_port_<port>`; "
    "refused: `max_connections`, `idle_timeout` (tcp, unix), and for http `max_connections`, `max_inflight_bytes`, `max_pending_events`, "
    "`max_body_bytes`, `body_timeout`, `origin`",
    "edge": "the component at the receiving end of the queue: the first node of a chain, or an offramp",
    "process": "`parent`, or `worker N`",
    "state": "`ok` or `retrying` (see `headrace_offramp_state`)",
    "offramp": "offramp id",
    "worker": "worker index, `0` to `workers - 1` (stable across respawns)",
    "cause": "`memory_error` (a stage or the segment hit a MemoryError) or `max_rss` (resident memory over `daemon.worker_max_rss`)",
    "topic": "Kafka topic",
    "partition": "Kafka partition number",
    "result": "`success` or `failure`",
    "version": "the headrace version",
}


class Metrics:
    """The parent's registry: one object per declared metric, looked up by short name."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # no ``*_created`` series: they double the exposition, and Prometheus 2 stores them as series of their own
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.by_name: dict[str, Any] = {}
        for d in METRICS:
            name = d.name.removesuffix("_total") if d.type == "counter" else d.name
            if d.type == "counter":
                m: Any = Counter(name, d.help, d.labels, registry=self.registry)
            elif d.type == "gauge":
                m = Gauge(name, d.help, d.labels, registry=self.registry)
            else:
                m = Histogram(name, d.help, d.labels, registry=self.registry, buckets=d.buckets)
            self.by_name[d.name] = m
        from headrace import __version__

        self["headrace_build_info"].labels(__version__).set(1)
        self["headrace_config_last_reload_successful"].set(1)
        for result in ("success", "failure"):  # both series exist from the start: rate() and alerts see the first reload
            self["headrace_config_reloads_total"].labels(result)

    def __getitem__(self, name: str) -> Any:
        return self.by_name[name]


class Tally:
    """A hot-path handle on one counter or gauge child: ``inc``/``set`` without the client's
    per-call lock and checks (about 0.6 us each, tens of times per job).

    Safe because only the event-loop thread writes these values; the exposition (on the loop,
    or in a thread when it is large) only reads them, and a read of a float attribute is
    atomic under the GIL.
    """

    __slots__ = ("_value",)

    def __init__(self, child: Any) -> None:
        self._value = child._value  # prometheus_client's MutexValue (single-process mode)

    def inc(self, amount: float = 1) -> None:
        self._value._value += amount

    def set(self, value: float) -> None:
        self._value._value = value


def exposed_series(d: MetricDef) -> list[str]:
    """The series names a scrape shows for one declaration."""
    if d.type == "histogram":
        return [f"{d.name}_bucket", f"{d.name}_sum", f"{d.name}_count"]
    return [d.name]


def reference_markdown() -> str:
    """docs/reference/metrics.md (written by ``python -m headrace.docs``)."""
    lines = [
        "# Metrics reference",
        "",
        "Generated from `headrace/metrics/defs.py` by `make docs`; do not edit by hand.",
        "",
        "Served by the daemon at `/metrics` on `daemon.metrics.listen` (default `127.0.0.1:9898`).",
        "Counters end in `_total`; histograms are exposed as `_bucket` (with `le`), `_sum` and `_count`.",
        "Counts made in worker processes reach the parent with the batch results: one scrape covers the instance.",
        "",
        "| metric | type | labels | help |",
        "| --- | --- | --- | --- |",
    ]
    for d in METRICS:
        labels = ", ".join(f"`{x}`" for x in d.labels) or "-"
        lines.append(f"| `{d.name}` | {d.type} | {labels} | {d.help} |")
    hist = [d for d in METRICS if d.type == "histogram"]
    if hist:
        lines += ["", "## Histogram buckets", "", "| metric | series | buckets (`le`, seconds) |", "| --- | --- | --- |"]
        for d in hist:
            series = ", ".join(f"`{x}`" for x in exposed_series(d))
            lines.append(f"| `{d.name}` | {series} | {', '.join(f'{b:g}' for b in d.buckets)}, +Inf |")
    used = [name for name in LABELS if any(name in d.labels for d in METRICS)]
    lines += ["", "## Labels", "", "| label | values |", "| --- | --- |"]
    lines += [f"| `{name}` | {LABELS[name]} |" for name in used]
    return "\n".join(lines) + "\n"
