"""bucket (Tremor's grouper::bucket): per class and dimensions, a sliding window admitting ``rate``.

The operator admits a whole call's events group by group (one window update per distinct
meta object); these tests hold it to the event-by-event model it replaces.
"""

from __future__ import annotations

import random
from typing import Any

from headrace.plugins.operators.bucket import SlidingWindow
from headrace.runtime.batch import share_equal
from tests.operators.support import Clock, make


class Reference:
    """Tremor's semantics, one event at a time (no LRU pressure in these tests)."""

    def __init__(self, slots: int = 100, window_ns: int = 1_000_000_000) -> None:
        self.windows: dict[Any, SlidingWindow] = {}
        self.slots, self.window_ns = slots, window_ns

    def route(self, metas: list[dict[str, Any]], now: int) -> dict[str, list[int]]:
        out, overflow = [], []
        for i, m in enumerate(metas):
            if m.get("class") is None or m.get("rate") is None:
                out.append(i)
                continue
            key = (m["class"], m.get("dimensions"))
            win = self.windows.get(key)
            if win is None:
                win = self.windows[key] = SlidingWindow(self.slots, self.window_ns, int(m["rate"]), now)
            (out if win.admit(now) else overflow).append(i)
        return {"out": out, "overflow": overflow}


def _metas(rng: random.Random, n: int) -> list[dict[str, Any]]:
    classes = [("applog_app1", 5), ("syslog_tag1", 3), ("default", 2)]
    metas: list[dict[str, Any]] = []
    for _ in range(n):
        if rng.random() < 0.05:
            metas.append({})  # no class: passes
            continue
        cls, rate = rng.choice(classes)
        metas.append({"class": cls, "rate": rate, "dimensions": rng.choice(["a", "b", "c"])})
    return metas


def test_groupwise_admission_equals_event_by_event_over_time() -> None:
    rng = random.Random(7)
    clock = Clock()
    op = make("bucket", clock=clock)
    ref = Reference()
    for step in range(60):
        metas = _metas(rng, rng.randint(1, 80))
        if step % 2:
            metas = share_equal(metas)  # as they come back from a worker: equal metas are one object
        want = ref.route(metas, clock.now)
        got = op.route_metas(metas)
        assert got == want, f"step {step}"
        clock.advance(rng.choice([0.0, 0.004, 0.03, 0.3, 1.2]))


def test_rate_per_group_and_overflow_in_arrival_order() -> None:
    clock = Clock()
    op = make("bucket", clock=clock)
    shared = {"class": "c", "rate": 3, "dimensions": "x"}
    metas = [shared, {"class": "c", "rate": 3, "dimensions": "y"}, shared, dict(shared), shared, {}]
    assert op.route_metas(metas) == {"out": [0, 1, 2, 3, 5], "overflow": [4]}
    clock.advance(1.01)  # the window slid past: admitted again
    assert op.route_metas([shared] * 4) == {"out": [0, 1, 2], "overflow": [3]}


def test_share_equal_keeps_types_and_order_apart() -> None:
    kinds = [{"a": 1}, {"a": 1}, {"a": 1.0}, {"a": True}, {"b": 1, "a": 1}, {"a": 1, "b": 1}, {"a": [1]}, {"a": [1]},
             {"a": {"b": 1}}, {"a": {"b": 1}}, {"a": {1, 2}}, {"a": {1, 2}}]
    metas = [dict(m) for _ in range(20) for m in kinds] + [{"filler": 0} for _ in range(200)]
    metas = metas[-100:] + metas[:-100]  # equal ones first: sharing pays, so it is kept up
    out = share_equal(metas)[100:]
    metas = metas[100:]
    assert out == metas
    assert out[0] is out[1] and out[2] is not out[0] and out[3] is not out[0], "1, 1.0 and True are kept apart"
    assert out[4] is not out[5] and out[6] is not out[7], "other key order, nested lists: not shared"
    assert out[8] is not out[9] and out[10] is not out[11], "nested dicts, values JSON cannot carry: not shared"
    assert out[12] is out[0] and out[16] is out[4], "repeats further on are the first object"


def test_share_equal_gives_up_on_distinct_metas() -> None:
    metas = [{"offset": i} for i in range(1000)]
    assert share_equal(metas) is metas
