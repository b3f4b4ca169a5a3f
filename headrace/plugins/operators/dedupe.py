"""``op: dedupe``: drop events whose ``key`` was already seen within ``window``.

The first event of a key passes and starts the key's window; later events with that
key are dropped (counted as filtered) until the window has passed since that first
event. Memory is bounded: at most ``max_keys`` keys are remembered, the oldest are
forgotten first (so a flood of new keys can let an old duplicate through, never grow
without bound). An event whose key expression fails goes to err.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from pydantic import Field

from headrace.config.expr import compile_expr
from headrace.config.units import Duration
from headrace.plugins.base import PluginConfig, PluginContext
from headrace.plugins.operators.window import freeze
from headrace.runtime.stage import Emit, Ev, Operator


class DedupeConfig(PluginConfig):
    key: str = Field(description="expression over event and meta naming what makes two events duplicates")
    window: Duration = Field(60.0, gt=0, description="how long a key is remembered after its first event")
    max_keys: int = Field(100_000, ge=1, le=100_000_000, description="keys remembered at most (the oldest are forgotten first)")


class DedupeOperator(Operator):
    name = "dedupe"
    Config = DedupeConfig
    summary = "drop events whose key was seen within a time window (bounded memory: max_keys, oldest forgotten first)"
    example = "{op: dedupe, key: \"event['id']\", window: 5m}"
    default_placement = "loop"

    def __init__(self, node_id: str, config: DedupeConfig, context: PluginContext, clock: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(node_id, config, context)
        self.cfg = config
        self.clock = clock
        self.key = compile_expr(config.key)
        self.window_ns = int(config.window * 1e9)
        self.seen: OrderedDict[Hashable, int] = OrderedDict()  # key -> time of its first event, oldest first

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        now = self.clock()
        seen = self.seen
        horizon = now - self.window_ns
        while seen:
            first = next(iter(seen.values()))
            if first > horizon:
                break
            seen.popitem(last=False)
        out: list[Ev] = []
        key_of = self.key
        for ev in evs:
            try:
                key = freeze(key_of(ev.value, ev.meta))
                if key in seen:
                    continue
            except Exception as exc:
                emit("err", ev.fail(self.id, exc))
                continue
            seen[key] = now
            if len(seen) > self.cfg.max_keys:
                seen.popitem(last=False)
            out.append(ev)
        return out
