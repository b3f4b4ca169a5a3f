"""``op: set``: assign fields of the event (``a.b``) or of the metadata (``meta.x``) from expressions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr import compile_expr
from headrace.contract.stage import Emit, Ev, Operator


class SetConfig(PluginConfig):
    set: dict[str, str] = Field(description="field path -> expression; 'meta.x' sets metadata")


class SetOperator(Operator):
    name = "set"
    Config = SetConfig
    summary = "set event fields (dotted paths) or meta keys from expressions"
    example = "{op: set, set: {host: \"meta.get('host', 'unknown')\", meta.seen: 'True'}}"
    modifies = True

    def __init__(self, node_id: str, config: SetConfig, context: PluginContext) -> None:
        super().__init__(node_id, config, context)
        self.assignments: list[tuple[bool, list[str], Callable[..., Any]]] = []
        for path, expr in config.set.items():
            parts = path.split(".")
            is_meta = parts[0] == "meta" and len(parts) > 1
            self.assignments.append((is_meta, parts[1:] if is_meta else parts, compile_expr(expr)))

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        out = []
        for ev in evs:
            try:
                for is_meta, parts, fn in self.assignments:
                    value = fn(ev.value, ev.meta)
                    target: Any = ev.meta if is_meta else ev.value
                    if not isinstance(target, dict):
                        raise TypeError(f"cannot set '{'.'.join(parts)}' on a {type(target).__name__}")
                    for p in parts[:-1]:
                        target = target.setdefault(p, {})
                        if not isinstance(target, dict):
                            raise TypeError(f"'{p}' is not an object")
                    target[parts[-1]] = value
                    if not is_meta:
                        ev.raw = None
                out.append(ev)
            except Exception as exc:
                emit("err", ev.fail(self.id, exc))
        return out
