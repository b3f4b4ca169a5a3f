"""``op: bucket``: Tremor's grouper::bucket rate limiter.

Events are grouped by ``meta['class']``; within a class, by ``meta['dimensions']``
(an LRU of ``max_groups`` values). Each group is a sliding window of ``slots`` slots
over ``window`` admitting ``meta['rate']`` events; admitted -> out, else -> overflow.
Events without a class or rate pass to out. State is global, so it runs on the loop.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from itertools import compress, islice
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.stage import Emit, Ev, Operator
from headrace.contract.units import Duration

_FLIP = bytes([1, 0]) + bytes(254)  # admitted flags -> overflow flags


class BucketConfig(PluginConfig):
    window: Duration = Field(1.0, gt=0, description="length of the sliding window")
    slots: int = Field(100, ge=1, le=10_000, description="slots the window is divided into")
    max_groups: int = Field(1000, ge=1, description="dimension values kept per class (LRU)")


class SlidingWindow:
    """Counts events in the last ``window`` seconds at ``window/slots`` granularity."""

    __slots__ = ("counts", "limit", "slot", "slot_ns", "total")

    def __init__(self, slots: int, window_ns: int, limit: int, now_ns: int) -> None:
        self.counts = [0] * slots
        self.total = 0
        self.slot_ns = max(window_ns // slots, 1)
        self.slot = now_ns // self.slot_ns
        self.limit = limit

    def admit(self, now_ns: int, k: int = 1) -> int:
        """Admit up to ``k`` events arriving at ``now_ns``; how many were admitted (the first ones)."""
        slot = now_ns // self.slot_ns
        if slot != self.slot:
            n = len(self.counts)
            if slot - self.slot >= n:
                self.counts = [0] * n
                self.total = 0
            else:
                for s in range(self.slot + 1, slot + 1):
                    i = s % n
                    self.total -= self.counts[i]
                    self.counts[i] = 0
            self.slot = slot
        took = min(k, self.limit - self.total)
        if took <= 0:
            return 0
        self.counts[slot % len(self.counts)] += took
        self.total += took
        return took


class BucketOperator(Operator):
    name = "bucket"
    Config = BucketConfig
    summary = "rate-limit per meta class and dimensions (Tremor grouper::bucket); excess -> overflow"
    example = "{op: bucket}"
    default_placement = "loop"
    needs_values = False

    def __init__(self, node_id: str, config: BucketConfig, context: PluginContext, clock: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(node_id, config, context)
        self.cfg = config
        self.clock = clock
        self.classes: dict[Any, OrderedDict[Any, SlidingWindow]] = {}

    @classmethod
    def ports_for(cls, config: BucketConfig) -> tuple[str, ...]:
        return ("overflow",)

    def _window(self, meta: dict[str, Any], now: int, window_ns: int) -> SlidingWindow | None:
        cls_name = meta.get("class")
        rate = meta.get("rate")
        if cls_name is None or rate is None:
            return None
        groups = self.classes.get(cls_name)
        if groups is None:
            groups = self.classes[cls_name] = OrderedDict()
        dims = meta.get("dimensions")
        key = tuple(dims) if isinstance(dims, list) else dims
        win = groups.get(key)
        if win is None:
            win = groups[key] = SlidingWindow(self.cfg.slots, window_ns, int(rate), now)
            if len(groups) > self.cfg.max_groups:
                groups.popitem(last=False)
        elif win.slot != now // win.slot_ns:  # refresh LRU order once per slot, not per event
            groups.move_to_end(key)
        return win

    def route_metas(self, metas: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
        """All events of a call arrive at one instant, so each window admits its share at once.

        The work is per distinct meta object (workers send equal metas as one object) plus a
        few C-level passes over the call; the result is what admitting event by event gives:
        in each window the first events, in arrival order, are admitted.
        """
        now = self.clock()
        window_ns = int(self.cfg.window * 1e9)
        n = len(metas)
        ids = list(map(id, metas))
        counts = Counter(ids)
        by_window: dict[int, tuple[SlidingWindow | None, list[int]]] = {}
        for x, meta in dict(zip(ids, metas, strict=True)).items():  # each distinct object once, in order of first arrival
            win = self._window(meta, now, window_ns)
            key = id(win) if win is not None else 0
            entry = by_window.get(key)
            if entry is None:
                by_window[key] = (win, [x])
            else:
                entry[1].append(x)
        decision: dict[int, int] = {}
        partial: list[int] = []
        for win, members in by_window.values():
            if win is None:
                decision.update(dict.fromkeys(members, 1))
                continue
            want = sum(counts[x] for x in members)
            took = win.admit(now, want)
            if took == want or took == 0:
                decision.update(dict.fromkeys(members, 1 if took else 0))
                continue
            # part of this window's events get in: the first ``took`` of them in arrival order
            decision.update(dict.fromkeys(members, 0))
            mine = set(members)
            partial.extend(islice((i for i, x in enumerate(ids) if x in mine), took))  # stops at the last one admitted
        flags = bytearray(map(decision.__getitem__, ids))
        for i in partial:
            flags[i] = 1
        out = list(compress(range(n), flags))
        overflow = list(compress(range(n), flags.translate(_FLIP))) if len(out) < n else []
        return {"out": out, "overflow": overflow}

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        routed = self.route_metas([ev.meta for ev in evs])
        for i in routed["overflow"]:
            emit("overflow", evs[i])
        return [evs[i] for i in routed["out"]]
