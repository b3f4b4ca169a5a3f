"""``op: backpressure``: Tremor's qos::backpressure: divert to ``overflow`` while the downstream is slow.

Events pass to ``out`` while the inbox after this chain has room. When it is full
(the next send would wait), events go to ``overflow`` for a backoff period; if the
downstream is still full when the period ends, the next, longer step of ``steps``
applies; every batch that finds it with room again steps the backoff back down. So
a slow sink never stalls what is upstream: its share of the traffic is shed or sent
elsewhere (an unlinked overflow drops and counts). The runner tells the operator
about the downstream through ``context.downstream_full``.
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


class BackpressureConfig(PluginConfig):
    steps: list[Duration] = Field(default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0], min_length=1,
                                  description="backoff periods, each used while the downstream stays slow")  # fmt: skip


def _never_full() -> bool:
    return False


class BackpressureOperator(Operator):
    name = "backpressure"
    Config = BackpressureConfig
    summary = "pass to out; while the downstream is full, divert to overflow for a backoff that grows through `steps`"
    example = "{op: backpressure, steps: [50ms, 100ms, 250ms, 500ms, 1s]}"
    default_placement = "loop"
    needs_values = False

    def __init__(self, node_id: str, config: BackpressureConfig, context: PluginContext,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:  # fmt: skip
        super().__init__(node_id, config, context)
        self.steps_ns = [int(s * 1e9) for s in config.steps]
        self.clock = clock
        self.level = 0  # 0: no backoff; k: steps[k - 1] applies
        self.until = 0  # end of the current backoff period

    @classmethod
    def ports_for(cls, config: BackpressureConfig) -> tuple[str, ...]:
        return ("overflow",)

    def _port(self) -> str:
        now = self.clock()
        if now < self.until:
            return "overflow"
        full: Callable[[], bool] = self.context.downstream_full
        if full():
            self.level = min(self.level + 1, len(self.steps_ns))
            self.until = now + self.steps_ns[self.level - 1]
            return "overflow"
        if self.level:
            self.level -= 1
        return "out"

    def route_metas(self, metas: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
        return {self._port(): list(range(len(metas)))} if metas else {"out": []}

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        if not evs:
            return []
        if self._port() == "out":
            return evs
        for ev in evs:
            emit("overflow", ev)
        return []
