"""Taps: live copies of the events passing one port of one component, for ``headrace tap``.

A router holds the taps of its component's ports (``Router.taps``: empty unless someone taps,
so sending a batch costs one truthiness check more). A tap looks at every ``every``-th event,
keeps those its ``where`` expression accepts, and puts them in a bounded queue: a tap that
is read slowly drops (and counts) what does not fit, it never slows the pipeline. At most
``max_rate`` sampled events a second are looked at (decoded, tested, shown; 200 by default, like
``vector tap``'s 100 per 500 ms interval): a 1/100 tap on a port passing 700 k events/s would
otherwise decode 7 k a second in the daemon's main process (at 1000 a second it cost bench 8
4.9-7 % of its throughput); the rest are counted as over the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from headrace import registry
from headrace.contract.codec import Codec
from headrace.runtime.batch import Batch

QUEUE = 1000  # events a tap holds for its reader
MAX_RATE = 200.0  # sampled events a second a tap looks at, by default (vector tap: 100 per 500 ms)


class Tap:
    def __init__(self, component: str, port: str, every: int = 1, where: Callable[..., Any] | None = None, with_meta: bool = False,
                 limit: int | None = None, codec_of: Callable[[str], Codec] = registry.make_codec, max_rate: float = MAX_RATE) -> None:  # fmt: skip
        self.component = component
        self.port = port
        self.every = max(int(every), 1)
        self.where = where
        self.with_meta = with_meta
        self.limit = limit
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self.seen = 0  # events that passed the port while tapped
        self.taken = 0  # events put in the queue
        self.dropped = 0  # events the queue had no room for
        self.failed = 0  # events the where expression raised on
        self.codec_of = codec_of  # the daemon's (cached) codec by name, with a component's own options
        self.max_rate = max_rate  # 0: no cap
        self.allowance = 0.0  # a token bucket holding up to one second's worth, filling at max_rate
        self.last = time.monotonic()
        self.over_rate = 0  # sampled events not looked at: over max_rate

    def offer(self, batch: Batch, passed: int | None = None, sampled_every: int = 1) -> None:
        """Look at the events of ``batch``. ``passed``: ``batch`` holds copies of every ``sampled_every``-th
        of ``passed`` events (a node inside a chain, sampled where it ran); then every
        ``every // sampled_every``-th of them is taken."""
        n = len(batch)
        if passed is None:
            step = self.every
            first = (-self.seen) % step  # the next sampled event's place in this batch
            self.seen += n
        else:
            step = max(self.every // sampled_every, 1)
            first = 0
            self.seen += passed
        if self.max_rate:
            now = time.monotonic()
            self.allowance = min(self.max_rate, self.allowance + (now - self.last) * self.max_rate)
            self.last = now
        for i in range(first, n, step):
            if self.limit is not None and self.taken >= self.limit:
                return
            if self.max_rate:
                if self.allowance < 1.0:
                    self.over_rate += len(range(i, n, step))
                    return
                self.allowance -= 1.0
            value = self._value(batch, i)
            meta = batch.meta(i)
            if self.where is not None:
                try:
                    if not self.where(value, meta):
                        continue
                except Exception:
                    self.failed += 1
                    continue
            item: dict[str, Any] = {"component": self.component, "port": self.port, "event": value}
            if self.with_meta:
                item["meta"] = meta
            try:
                self.queue.put_nowait(item)
                self.taken += 1
            except asyncio.QueueFull:
                self.dropped += 1

    def _value(self, batch: Batch, i: int) -> Any:
        if batch.values is not None:
            return batch.values[i]
        raw = batch.payloads[i] if batch.payloads is not None else None
        if raw is None:
            return None
        try:
            return self.codec_of(batch.codec or "binary").decode(raw)
        except Exception:  # no such codec here, or a record it refuses: shown as text
            return raw.decode("utf-8", "backslashreplace")


def sampling(interior: dict[str, list[Tap]]) -> dict[str, int]:
    """What a chain copies for the taps of its nodes inside it: per node, every n-th event of its
    out for the tap that samples most (``ChainExecutor.tap_every``)."""
    return {node: min(t.every for t in taps) for node, taps in interior.items() if taps}


def offer_sampled(taps: list[Tap], batch: Batch, passed: int) -> None:
    """Copies a chain made of a node's out (``sampling``) to that node's taps; ``passed`` events went out in all."""
    every = min(t.every for t in taps)
    for tap in taps:
        tap.offer(batch, passed=passed, sampled_every=every)


def feed(taps: dict[str, list[Tap]], port: str, batch: Batch) -> None:
    for tap in taps.get(port, ()):
        tap.offer(batch)
