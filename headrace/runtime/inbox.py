"""The one bounded queue: bounded in events and in bytes; ``put`` waits while full.

A batch is admitted into an empty inbox whatever its size, so a single large batch
cannot deadlock the graph. The inbox closes when every producer has closed it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from headrace.runtime.batch import Batch


class Inbox:
    def __init__(self, name: str, max_events: int, max_bytes: int, producers: int = 1, gauges: tuple[Any, Any] | None = None) -> None:
        self.name = name
        self.gauges = gauges  # (events, bytes) gauges of this edge
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bounds = (max_events, max_bytes)  # as configured (``scale`` shrinks them under memory pressure)
        self.producers = producers
        self.items: deque[Batch] = deque()
        self.retired = False  # a reload replaced this edge: routers send to its successor instead
        self.putters = 0  # puts waiting for space: the inbox is not drained until they land
        self.events = 0
        self.bytes = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.listener: asyncio.Event | None = None  # set on every put, close and change of bounds (a reader waiting for the queue to grow)

    def scale(self, factor: float) -> None:
        """Bounds of ``factor`` times the configured ones (memory pressure); 1.0 restores them."""
        self.max_events = max(1, int(self.bounds[0] * factor))
        self.max_bytes = max(1, int(self.bounds[1] * factor))
        if not self.full():
            self._writable.set()
        self._listened()

    def full(self) -> bool:
        return bool(self.items) and (self.events >= self.max_events or self.bytes >= self.max_bytes)

    async def put(self, batch: Batch) -> None:
        self.putters += 1
        try:
            while self.full():
                self._writable.clear()
                await self._writable.wait()
        finally:
            self.putters -= 1
        self.items.append(batch)
        self.events += len(batch)
        self.bytes += batch.nbytes
        self._readable.set()
        self._listened()
        if self.gauges is not None:
            self.gauges[0].set(self.events)
            self.gauges[1].set(self.bytes)

    async def get(self) -> Batch | None:
        """The next batch, or None once closed and drained."""
        while not self.items:
            if self.producers <= 0 and not self.putters:
                return None
            self._readable.clear()
            await self._readable.wait()
        return self.take()

    def peek(self) -> Batch | None:
        return self.items[0] if self.items else None

    def take(self) -> Batch:
        """The next batch, which must be there (see ``peek``)."""
        batch = self.items.popleft()
        self.events -= len(batch)
        self.bytes -= batch.nbytes
        if not self.full():
            self._writable.set()
        if self.gauges is not None:  # every way out of the queue updates the gauges (take joins batches too)
            self.gauges[0].set(self.events)
            self.gauges[1].set(self.bytes)
        return batch

    def close(self) -> None:
        """One producer is finished."""
        self.producers -= 1
        self._readable.set()
        self._listened()

    def retire(self) -> None:
        """No producer will write again (reload): the reader drains and ends."""
        self.retired = True
        self.producers = 0
        self._readable.set()
        self._listened()

    def _listened(self) -> None:
        """A put, a close, new bounds: the reader waiting for the queue to grow looks again."""
        if self.listener is not None:
            self.listener.set()
