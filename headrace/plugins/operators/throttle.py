"""``op: throttle``: let at most ``rate`` events through per ``interval``; the excess goes to ``overflow``.

The limit is kept over a sliding window of ``slots`` slots (the one mechanism of
``op: bucket``). Excess events go to the ``overflow`` port; when it is not linked
they are dropped and counted (``unlinked_port_overflow``). The operator reads no
event values, so events stay undecoded bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.stage import Emit, Ev, Operator
from headrace.contract.units import Duration
from headrace.plugins.operators.bucket import SlidingWindow


class ThrottleConfig(PluginConfig):
    rate: int = Field(ge=1, description="events let through per interval")
    interval: Duration = Field(1.0, gt=0, description="the period the rate applies to")
    slots: int = Field(10, ge=1, le=10_000, description="slots the sliding interval is divided into (finer = smoother)")


class ThrottleOperator(Operator):
    name = "throttle"
    Config = ThrottleConfig
    summary = "at most `rate` events per `interval`; the excess to the overflow port (dropped and counted if unlinked)"
    example = "{op: throttle, rate: 1000, interval: 1s}"
    default_placement = "loop"
    needs_values = False

    def __init__(self, node_id: str, config: ThrottleConfig, context: PluginContext, clock: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(node_id, config, context)
        self.cfg = config
        self.clock = clock
        self.window: SlidingWindow | None = None

    @classmethod
    def ports_for(cls, config: ThrottleConfig) -> tuple[str, ...]:
        return ("overflow",)

    def route_metas(self, metas: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
        now = self.clock()
        if self.window is None:
            self.window = SlidingWindow(self.cfg.slots, int(self.cfg.interval * 1e9), self.cfg.rate, now)
        admit = self.window.admit
        out: list[int] = []
        overflow: list[int] = []
        for i in range(len(metas)):
            (out if admit(now) else overflow).append(i)
        return {"out": out, "overflow": overflow}

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        routed = self.route_metas([ev.meta for ev in evs])
        for i in routed["overflow"]:
            emit("overflow", evs[i])
        return [evs[i] for i in routed["out"]]
