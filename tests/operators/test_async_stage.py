"""An ``async def`` python stage on one batch: at most ``concurrency`` events in flight (and that
many reached), each in a context of its own, results in input order, a timeout or an exception
failing only its event."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from headrace.contract.context import PluginContext
from headrace.contract.stage import Ev
from headrace.plugins.operators.python import PythonOperator

STAGES = '''
import asyncio, contextvars

seen = contextvars.ContextVar("seen", default=None)
state = {"now": 0, "peak": 0, "leaked": 0}

async def slow(event, meta):
    state["now"] += 1
    state["peak"] = max(state["peak"], state["now"])
    if seen.get() is not None:  # set by an earlier event: contexts shared between events
        state["leaked"] += 1
    seen.set(event["id"])
    try:
        if event["id"] == 7:
            raise ValueError("seven")
        await asyncio.sleep(5 if event["id"] == 11 else 0.002 * (event["id"] % 3))
    finally:
        state["now"] -= 1
    event["done"] = True
    return event
'''


def test_async_stage_bounds_concurrency_isolates_events_and_fails_only_the_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "asyncstages.py").write_text(STAGES)
    cfg = PythonOperator.Config.model_validate({"fn": "asyncstages:slow", "concurrency": 4, "timeout": "300ms"})
    op = PythonOperator("s", cfg, PluginContext("s", tmp_path))
    op.setup()
    assert op.is_async
    evs = [Ev({"id": i}, {}, i, b'{"id": %d}' % i, 0) for i in range(40)]
    errs: list[tuple[str, Any]] = []
    started = time.monotonic()
    out = asyncio.run(op.process_async(evs, lambda port, ev: errs.append((port, ev))))
    assert time.monotonic() - started < 2, "the event past its timeout was cancelled, not waited for (5 s)"
    import asyncstages  # type: ignore[import-not-found]

    assert asyncstages.state["peak"] == 4, "at most (and up to) concurrency events in flight"
    assert asyncstages.state["leaked"] == 0, "each event runs in a context of its own"
    assert [ev.value["id"] for ev in out] == [i for i in range(40) if i not in (7, 11)], "in input order"
    assert all(ev.value["done"] and ev.raw is None for ev in out), "written events lose their bytes"
    failures = {ev.value["id"]: str(ev.meta["error"]["message"]) for port, ev in errs if port == "err"}
    assert set(failures) == {7, 11}
    assert "seven" in failures[7] and "timeout (0.3s)" in failures[11]


def test_cancelling_an_async_batch_cancels_it_and_its_events(tmp_path: Path) -> None:
    """A stop (the batch's task cancelled) is not an event's timeout: it propagates, no event goes to err."""
    (tmp_path / "asyncstages2.py").write_text("import asyncio\n\nasync def wait(event, meta):\n    await asyncio.sleep(10)\n    return event\n")
    cfg = PythonOperator.Config.model_validate({"fn": "asyncstages2:wait", "concurrency": 3, "timeout": "20s"})
    op = PythonOperator("s", cfg, PluginContext("s", tmp_path))
    op.setup()
    errs: list[Any] = []

    async def scenario() -> None:
        task = asyncio.ensure_future(op.process_async([Ev({"id": i}, {}, i, None, 0) for i in range(5)], lambda *a: errs.append(a)))
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return
        raise AssertionError("the batch was cancelled: its task must end cancelled")

    asyncio.run(scenario())
    assert errs == []
