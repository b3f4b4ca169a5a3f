"""Support for ``headrace.emit(port, event)`` from inside a python stage."""

from __future__ import annotations

import contextvars
from typing import Any

current: contextvars.ContextVar[tuple[Any, str] | None] = contextvars.ContextVar("headrace_emit", default=None)
current_event: contextvars.ContextVar[Any] = contextvars.ContextVar("headrace_event", default=None)


class _Sync:
    """The event a synchronous stage is processing (one thread per worker: no context var needed)."""

    ev: Any = None
    fused: Any = None  # a worker's fused chain: the event and stage it is on (see segment.FusedChain)


sync = _Sync()


def bind(emit: Any, stage_id: str) -> contextvars.Token[tuple[Any, str] | None]:
    return current.set((emit, stage_id))


def unbind(token: contextvars.Token[tuple[Any, str] | None]) -> None:
    current.reset(token)


def emit(port: str, event: Any, meta: dict[str, Any] | None = None) -> None:
    from headrace.contract.stage import Ev

    fused = sync.fused
    if fused is not None:
        fused.emit(port, event, meta)
        return
    bound = current.get()
    if bound is None:
        raise RuntimeError("headrace.emit() may only be called from inside a running stage")
    fn, _ = bound
    src: Ev | None = current_event.get() or sync.ev
    base_meta = dict(src.meta) if src is not None else {}
    if meta:
        base_meta.update(meta)
    fn(port, Ev(event, base_meta, src.src if src else 0, None, src.ingest if src else 0))
