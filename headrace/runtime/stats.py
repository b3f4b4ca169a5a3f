"""Labelled metric children of one component, resolved once (not per batch)."""

from __future__ import annotations

from typing import Any

from headrace.metrics.defs import Metrics, Tally


class ComponentStats:
    """Labelled metric children of one component, resolved once (not per batch)."""

    def __init__(self, metrics: Metrics, cid: str, kind: str) -> None:
        self.metrics = metrics
        self.cid = cid
        self.kind = kind
        self.received = Tally(metrics["headrace_component_received_events_total"].labels(cid, kind))
        self.received_bytes = Tally(metrics["headrace_component_received_bytes_total"].labels(cid, kind))
        self.sent_bytes = Tally(metrics["headrace_component_sent_bytes_total"].labels(cid, kind))
        self._sent: dict[str, Any] = {}
        self._errors: dict[str, Any] = {}
        self._discarded: dict[str, Any] = {}

    def sent(self, port: str) -> Any:
        c = self._sent.get(port)
        if c is None:
            c = self._sent[port] = Tally(self.metrics["headrace_component_sent_events_total"].labels(self.cid, self.kind, port))
        return c

    def error(self, error_type: str, n: int = 1) -> None:
        c = self._errors.get(error_type)
        if c is None:
            c = self._errors[error_type] = self.metrics["headrace_component_errors_total"].labels(self.cid, self.kind, error_type)
        c.inc(n)

    def forget(self) -> None:
        """Remove every series of this component (it was removed by a reload)."""
        m = self.metrics
        doomed: list[tuple[str, tuple[str, ...]]] = [
            ("headrace_component_received_events_total", (self.cid, self.kind)),
            ("headrace_component_received_bytes_total", (self.cid, self.kind)),
            ("headrace_component_sent_bytes_total", (self.cid, self.kind)),
            ("headrace_queue_events", (self.cid,)), ("headrace_queue_bytes", (self.cid,)),
            ("headrace_event_latency_seconds", (self.cid,)), ("headrace_loop_blocked_seconds_total", (self.cid,)),
            ("headrace_component_buffered_bytes", (self.cid,)),
        ]  # fmt: skip
        if self.kind == "offramp":
            doomed += [("headrace_offramp_state", (self.cid, "ok")), ("headrace_offramp_state", (self.cid, "retrying")),
                       ("headrace_offramp_backoff_seconds", (self.cid,))]  # fmt: skip
        doomed += [("headrace_component_sent_events_total", (self.cid, self.kind, p)) for p in self._sent]
        doomed += [("headrace_component_errors_total", (self.cid, self.kind, e)) for e in self._errors]
        doomed += [("headrace_component_discarded_events_total", (self.cid, r)) for r in self._discarded]
        for name, labels in doomed:
            try:
                m[name].remove(*labels)
            except KeyError:
                pass

    def discard(self, reason: str, n: int) -> None:
        c = self._discarded.get(reason)
        if c is None:
            c = self._discarded[reason] = self.metrics["headrace_component_discarded_events_total"].labels(self.cid, reason)
        c.inc(n)
