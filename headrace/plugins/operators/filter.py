"""``op: filter``: keep events for which ``where`` is true; the rest are dropped and counted."""

from __future__ import annotations

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr import compile_expr
from headrace.contract.stage import Emit, Ev, Operator


class FilterConfig(PluginConfig):
    where: str = Field(description="Python expression over event and meta; false -> dropped")


class FilterOperator(Operator):
    name = "filter"
    Config = FilterConfig
    summary = "drop events for which the expression is false (counted as discarded, reason filtered)"
    example = "{op: filter, where: \"event['level'] != 'debug'\"}"

    def __init__(self, node_id: str, config: FilterConfig, context: PluginContext) -> None:
        super().__init__(node_id, config, context)
        self.pred = compile_expr(config.where)

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        pred, out = self.pred, []
        for ev in evs:
            try:
                if pred(ev.value, ev.meta):
                    out.append(ev)
            except Exception as exc:
                emit("err", ev.fail(self.id, exc))
        return out
