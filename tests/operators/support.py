"""Helpers for operator unit tests: build an operator from options, feed events, collect ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headrace import registry
from headrace.contract.acks import AckRef
from headrace.contract.context import PluginContext
from headrace.contract.stage import Ev, Operator


class Clock:
    """An injectable clock in nanoseconds, moved by hand."""

    def __init__(self, now: int = 1_000_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += int(seconds * 1e9)
        return self.now


def make(name: str, clock: Clock | None = None, **options: Any) -> Operator:
    cls = registry.load("operators", name)
    cfg = cls.Config.model_validate(options)
    ctx = PluginContext(f"p.{name}", Path("."))
    op: Operator = cls(f"p.{name}", cfg, ctx, clock=clock) if clock is not None else cls(f"p.{name}", cfg, ctx)
    op.setup()
    return op


def evs(*values: Any, meta: dict[str, Any] | None = None, ack: AckRef | None = None, ingest: int = 0) -> list[Ev]:
    return [Ev(v, dict(meta or {}), i, None, ingest + i, ack) for i, v in enumerate(values)]


class Ports:
    """The ``emit`` callable: collects events per port."""

    def __init__(self) -> None:
        self.got: dict[str, list[Ev]] = {}

    def __call__(self, port: str, ev: Ev) -> None:
        self.got.setdefault(port, []).append(ev)

    def values(self, port: str) -> list[Any]:
        return [e.value for e in self.got.get(port, [])]


def values(out: list[Ev]) -> list[Any]:
    return [e.value for e in out]


class AckLog:
    """Source acks: which tokens were acked or failed, for AckRef callbacks."""

    def __init__(self) -> None:
        self.acked: list[Any] = []
        self.failed: list[Any] = []

    def ref(self, n: int, token: Any) -> AckRef:
        return AckRef(n, token, self.acked.append, self.failed.append)
