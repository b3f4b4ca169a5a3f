"""``op: route``: send each event to the first route whose predicate is true, else ``default``."""

from __future__ import annotations

from pydantic import Field, field_validator

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr import compile_expr
from headrace.contract.stage import Emit, Ev, Operator

RESERVED = {"out", "err", "in"}


class RouteConfig(PluginConfig):
    routes: dict[str, str] = Field(description="port name -> expression; first match wins, in order")

    @field_validator("routes")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if name in RESERVED or name == "default":
                raise ValueError(f"route name '{name}' is reserved")
        if not v:
            raise ValueError("at least one route is required")
        return v


class RouteOperator(Operator):
    name = "route"
    Config = RouteConfig
    summary = "route events to named ports by predicate; unmatched to 'default' (the 'out' port is unused)"
    example = "{op: route, routes: {errors: \"event['level'] == 'error'\"}}"
    uses_out = False

    def __init__(self, node_id: str, config: RouteConfig, context: PluginContext) -> None:
        super().__init__(node_id, config, context)
        self.preds = [(name, compile_expr(expr)) for name, expr in config.routes.items()]

    @classmethod
    def ports_for(cls, config: RouteConfig) -> tuple[str, ...]:
        return (*config.routes, "default")

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        for ev in evs:
            try:
                for name, pred in self.preds:
                    if pred(ev.value, ev.meta):
                        emit(name, ev)
                        break
                else:
                    emit("default", ev)
            except Exception as exc:
                emit("err", ev.fail(self.id, exc))
        return []
