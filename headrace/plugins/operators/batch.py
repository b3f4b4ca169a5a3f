"""``op: batch``: collect events and emit them as one event whose value is the list of their values.

A batch is emitted when it holds ``count`` events or about ``max_bytes`` of them (their
encoded size, or an estimate of their values'), when its oldest event has waited
``timeout`` (checked as batches arrive and on the runner's tick), and at the end of
input; the ``headrace_component_buffered_bytes`` gauge shows the bytes held. The emitted event's meta is ``{"batch_size": n}``; its ingest time is the
oldest event's. The source acks of the collected events complete when the batch
event is delivered (see ``HeldAcks``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import Field

from headrace.contract.acks import HeldAcks
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr_bounds import approx_bytes
from headrace.contract.stage import Emit, Ev, Operator
from headrace.contract.units import Duration, Size
from headrace.metrics.defs import Tally


class BatchConfig(PluginConfig):
    count: int = Field(100, ge=1, le=1_000_000, description="events per emitted batch")
    timeout: Duration | None = Field(None, gt=0, description="emit a smaller batch once its oldest event has waited this long")
    max_bytes: Size = Field(16 * 2**20, ge=1, description="emit a smaller batch once its events take this many bytes (encoded, or "
                            "an estimate of their values)")


class BatchOperator(Operator):
    name = "batch"
    Config = BatchConfig
    summary = "collect `count` events (or what arrived within `timeout`) into one event holding the list of their values"
    example = "{op: batch, count: 100, timeout: 1s}"
    default_placement = "loop"
    modifies = True

    def __init__(self, node_id: str, config: BatchConfig, context: PluginContext, clock: Callable[[], int] = time.time_ns) -> None:
        super().__init__(node_id, config, context)
        self.cfg = config
        self.clock = clock  # the wall clock, like the ticks the runner gives
        self.timeout_ns = int(config.timeout * 1e9) if config.timeout is not None else None
        self.held: list[Ev] = []
        self.acks = HeldAcks()
        self.since = 0  # when the oldest held event arrived
        self.bytes = 0  # of the held events
        metrics = context.metrics
        self.gauge = Tally(metrics["headrace_component_buffered_bytes"].labels(node_id)) if metrics is not None else None

    def _due(self, now_ns: int) -> bool:
        return bool(self.held) and self.timeout_ns is not None and now_ns - self.since >= self.timeout_ns

    def _take(self) -> Ev:
        held, self.held = self.held, []
        self.bytes = 0
        return Ev([ev.value for ev in held], {"batch_size": len(held)}, 0, None, min(ev.ingest for ev in held), self.acks.merge())

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        if not evs:
            return []
        now = self.clock()
        out = [self._take()] if self._due(now) else []
        count, max_bytes = self.cfg.count, self.cfg.max_bytes
        for ev in evs:
            if not self.held:
                self.since = now
            self.held.append(ev)
            self.acks.hold(ev)
            self.bytes += len(ev.raw) if ev.raw is not None else approx_bytes(ev.value)
            if len(self.held) >= count or self.bytes >= max_bytes:
                out.append(self._take())
        if self.gauge is not None:
            self.gauge.set(self.bytes)
        return out

    def tick(self, now_ns: int, emit: Emit) -> list[Ev]:
        return [self._take()] if self._due(now_ns) else []

    def flush(self, emit: Emit) -> list[Ev]:
        return [self._take()] if self.held else []
