"""``op: batch``: collect events and emit them as one event whose value is the list of their values.

A batch is emitted when it holds ``count`` events, when its oldest event has waited
``timeout`` (checked as batches arrive and on the runner's tick), and at the end of
input. The emitted event's meta is ``{"batch_size": n}``; its ingest time is the
oldest event's. The source acks of the collected events complete when the batch
event is delivered (see ``HeldAcks``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import Field

from headrace.config.units import Duration
from headrace.plugins.base import PluginConfig, PluginContext
from headrace.runtime.events import HeldAcks
from headrace.runtime.stage import Emit, Ev, Operator


class BatchConfig(PluginConfig):
    count: int = Field(100, ge=1, le=1_000_000, description="events per emitted batch")
    timeout: Duration | None = Field(None, gt=0, description="emit a smaller batch once its oldest event has waited this long")


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

    def _due(self, now_ns: int) -> bool:
        return bool(self.held) and self.timeout_ns is not None and now_ns - self.since >= self.timeout_ns

    def _take(self) -> Ev:
        held, self.held = self.held, []
        return Ev([ev.value for ev in held], {"batch_size": len(held)}, 0, None, min(ev.ingest for ev in held), self.acks.merge())

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        if not evs:
            return []
        now = self.clock()
        out = [self._take()] if self._due(now) else []
        count = self.cfg.count
        for ev in evs:
            if not self.held:
                self.since = now
            self.held.append(ev)
            self.acks.hold(ev)
            if len(self.held) >= count:
                out.append(self._take())
        return out

    def tick(self, now_ns: int, emit: Emit) -> list[Ev]:
        return [self._take()] if self._due(now_ns) else []

    def flush(self, emit: Emit) -> list[Ev]:
        return [self._take()] if self.held else []
