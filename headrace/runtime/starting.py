"""Starting components within a deadline, with one error naming the one that failed.

A component starts when its plugin has acquired what it needs (bound its port, opened its
file, connected to its broker) or, for a worker segment, when every worker has set up its
stages. Start-up and reload wait at most ``daemon.start_timeout`` for each, saying every few
seconds what they are waiting for, so an unreachable broker is a clear failure, not a hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from headrace.errors import safe_str

log = logging.getLogger("headrace.engine")

WAITING_LOG_INTERVAL = 5.0  # seconds between "still waiting for X" lines


class StartFailed(Exception):
    """A component could not start: ``component`` names it, ``cause`` says why."""

    def __init__(self, component: str, cause: str) -> None:
        super().__init__(f"{component}: {cause}")
        self.component = component
        self.cause = cause


def describe(exc: BaseException) -> str:
    """An exception as one line for an operator: its type and message, and its cause's when
    that says more (an event loop's "could not bind" wraps the "Address already in use")."""
    text = safe_str(exc)
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and safe_str(cause) not in text:
        line += f" ({safe_str(cause)})"
    return line


async def start_one(component: str, start: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Run ``start`` within ``timeout`` seconds; raise ``StartFailed`` naming ``component``."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(start())
    began = loop.time()
    try:
        while True:
            left = began + timeout - loop.time()
            done, _ = await asyncio.wait({task}, timeout=max(min(WAITING_LOG_INTERVAL, left), 0))
            if done:
                break
            waited = loop.time() - began
            if waited >= timeout:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise StartFailed(component, f"did not start within start_timeout ({timeout:g}s)")
            log.warning("waiting for %s to start (%.0fs of start_timeout %gs)", component, waited, timeout)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    exc = task.exception()
    if exc is not None:
        raise StartFailed(component, describe(exc)) from exc


async def start_all(starts: list[tuple[str, Callable[[], Awaitable[None]]]], timeout: float) -> None:
    """Start several components at once. All are awaited; if any failed, ``StartFailed`` for the
    first (in the given order) is raised after the others finished or were given up (the caller
    then stops them all: stopping a plugin that did not start is harmless)."""
    if not starts:
        return
    tasks = [asyncio.ensure_future(start_one(name, fn, timeout)) for name, fn in starts]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failures = [t.exception() for t in tasks if t.exception() is not None]
    if failures:
        first = failures[0]
        assert first is not None
        raise first
