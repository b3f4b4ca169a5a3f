"""``op: window``: tumbling and sliding windows by count and by time, groups, aggregates, acks."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from pydantic import ValidationError

from headrace.contract.acks import done_each
from tests.operators.support import AckLog, Clock, Ports, evs, make

AGGS: dict[str, Any] = {
    "n": {"fn": "count"},
    "total": {"fn": "sum", "field": "event['v']"},
    "avg": {"fn": "mean", "field": "event['v']"},
    "hi": {"fn": "max", "field": "event['v']"},
    "lo": {"fn": "min", "field": "event['v']"},
}


def strip(out: list[Any]) -> list[dict[str, Any]]:
    """Window results without their times."""
    return [{k: v for k, v in e.value.items() if not k.startswith("window_")} for e in out]


def test_tumbling_by_count() -> None:
    op = make("window", size=3, aggregates=AGGS)
    out = op.process(evs(*({"v": v} for v in [1, 2, 6, 10, 20, 30, 7])), Ports())
    assert strip(out) == [
        {"group": None, "n": 3, "total": 9, "avg": 3.0, "hi": 6, "lo": 1},
        {"group": None, "n": 3, "total": 60, "avg": 20.0, "hi": 30, "lo": 10},
    ]
    assert [e.meta for e in out] == [{"window_events": 3}] * 2
    assert strip(op.flush(Ports())) == [{"group": None, "n": 1, "total": 7, "avg": 7.0, "hi": 7, "lo": 7}]
    assert op.flush(Ports()) == []


def test_count_window_times_are_the_first_and_last_ingest() -> None:
    op = make("window", size=2, aggregates={"n": {"fn": "count"}})
    (out,) = op.process(evs({}, {}, ingest=500), Ports())
    assert (out.value["window_start"], out.value["window_end"]) == (500, 501)
    assert out.ingest == 500


def test_groups_have_their_own_windows() -> None:
    op = make("window", size=2, group_by="event['host']", aggregates={"total": {"fn": "sum", "field": "event['v']"}})
    data = [{"host": "a", "v": 1}, {"host": "b", "v": 10}, {"host": "a", "v": 2}, {"host": "b", "v": 20}, {"host": "a", "v": 3}]
    out = op.process(evs(*data), Ports())
    assert strip(out) == [{"group": "a", "total": 3}, {"group": "b", "total": 30}]
    assert strip(op.flush(Ports())) == [{"group": "a", "total": 3}]


def test_unhashable_group_values_are_keys_too() -> None:
    op = make("window", size=2, group_by="event['tags']", aggregates={"n": {"fn": "count"}})
    out = op.process(evs({"tags": ["x", {"k": 1}]}, {"tags": ["x", {"k": 1}]}), Ports())
    assert strip(out) == [{"group": ["x", {"k": 1}], "n": 2}]


def test_sliding_by_count() -> None:
    op = make("window", kind="sliding", size=3, slide=1, aggregates={"total": {"fn": "sum", "field": "event"}})
    out = op.process(evs(1, 2, 3, 4, 5), Ports())
    assert [e.value["total"] for e in out] == [6, 9, 12]
    assert op.flush(Ports()) == []  # every event is in an emitted window


def test_sliding_by_count_with_a_larger_slide_flushes_the_tail() -> None:
    op = make("window", kind="sliding", size=4, slide=2, aggregates={"all": {"fn": "sum", "field": "event"}})
    out = op.process(evs(1, 2, 3, 4, 5, 6, 7), Ports())
    assert [e.value["all"] for e in out] == [1 + 2 + 3 + 4, 3 + 4 + 5 + 6]
    assert [e.value["all"] for e in op.flush(Ports())] == [4 + 5 + 6 + 7]


def test_tumbling_by_time_closes_on_tick_and_on_late_batches() -> None:
    clock = Clock(10_000_000_000)  # 10 s: a window boundary for 1 s windows
    op = make("window", clock, interval="1s", aggregates={"n": {"fn": "count"}, "p50": {"fn": "percentile", "field": "event", "p": 0.5}})
    assert op.process(evs(5, 1, 3), Ports()) == []
    clock.advance(0.5)
    assert op.process(evs(4), Ports()) == []
    assert op.tick(clock.advance(0.4), Ports()) == []
    (out,) = op.tick(clock.advance(0.2), Ports())
    assert out.value == {"group": None, "window_start": 10_000_000_000, "window_end": 11_000_000_000, "n": 4, "p50": 3}
    op.process(evs(9), Ports())
    clock.advance(3)
    out2 = op.process(evs(8), Ports())  # the batch arriving late closes the old window first
    assert [e.value["n"] for e in out2] == [1]
    assert [e.value["window_start"] for e in op.flush(Ports())] == [14_000_000_000]


def test_sliding_by_time_puts_each_event_in_overlapping_windows() -> None:
    clock = Clock(10_000_000_000)
    op = make("window", clock, kind="sliding", interval="2s", slide="1s", aggregates={"n": {"fn": "count"}})
    op.process(evs("a"), Ports())  # t = 10.0: windows [9, 11) and [10, 12)
    clock.advance(1.0)
    op.process(evs("b"), Ports())  # t = 11.0: [10, 12) and [11, 13); closes [9, 11) first
    out = op.flush(Ports())
    got = {(e.value["window_start"] // 10**9, e.value["window_end"] // 10**9): e.value["n"] for e in out}
    assert got == {(10, 12): 2, (11, 13): 1}


def test_percentile_is_nearest_rank() -> None:
    op = make("window", size=100, aggregates={"p99": {"fn": "percentile", "field": "event", "p": 0.99},
                                              "p10": {"fn": "percentile", "field": "event", "p": 0.1}})  # fmt: skip
    (out,) = op.process(evs(*range(100, 0, -1)), Ports())
    assert (out.value["p99"], out.value["p10"]) == (99, 10)


def _exact(values: list[float], p: float) -> float:
    return sorted(values)[max(math.ceil(p * len(values)) - 1, 0)]


@pytest.mark.parametrize(
    "values",
    [
        [random.Random(1).lognormvariate(3, 2) for _ in range(50_000)],  # latencies: a long tail
        [random.Random(2).uniform(-1000, 1000) for _ in range(50_000)],  # both signs
        [0] * 10_000 + [random.Random(3).randint(1, 10**6) for _ in range(20_000)] + [-5] * 3_000,  # zeros and ints
    ],
    ids=["lognormal", "signed", "zeros-and-ints"],
)
def test_percentiles_are_within_one_percent_in_bounded_memory(values: list[float]) -> None:
    ps = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0)
    op = make("window", size=len(values), aggregates={f"p{p}": {"fn": "percentile", "field": "event", "p": p} for p in ps})
    largest, results = 0, []
    for start in range(0, len(values), 1000):
        largest = max(largest, op.bytes)  # type: ignore[attr-defined]
        results += op.process(evs(*values[start : start + 1000]), Ports())
    (out,) = results
    for p in ps:
        exact, got = _exact(values, p), out.value[f"p{p}"]
        assert abs(got - exact) <= 0.01 * abs(exact), (p, got, exact)
    assert largest < len(ps) * 2 * 2048 * 100 + 10_000, largest  # buckets, not values: the same for 10**4 or 10**9 values


def test_percentiles_are_exact_up_to_1024_values() -> None:
    values = [random.Random(4).random() for _ in range(1024)]
    op = make("window", size=1024, aggregates={"p": {"fn": "percentile", "field": "event", "p": 0.37}})
    (out,) = op.process(evs(*values), Ports())
    assert out.value["p"] == _exact(values, 0.37)


def test_percentile_memory_does_not_grow_with_the_number_of_values() -> None:
    """The fault: every value of a window was kept (+8 MB/s at 200k events/s)."""
    op = make("window", interval="1h", aggregates={"p99": {"fn": "percentile", "field": "event", "p": 0.99}})
    rnd = random.Random(5)
    sizes = []
    for _ in range(100):
        op.process(evs(*(rnd.expovariate(0.01) for _ in range(2000))), Ports())
        sizes.append(op.bytes)  # type: ignore[attr-defined]
    assert sizes[-1] == sizes[len(sizes) // 2] or sizes[-1] < 2 * sizes[len(sizes) // 2], sizes[::10]
    assert sizes[-1] < 200_000, sizes[-1]  # 200 000 values kept would be 6.4 MB


def test_max_bytes_emits_the_least_recent_groups_early() -> None:
    op = make("window", interval="1h", group_by="event['g']", max_bytes="64KiB",
              aggregates={"p50": {"fn": "percentile", "field": "event['v']", "p": 0.5}})  # fmt: skip
    ports = Ports()
    early = []
    for g in range(50):  # each group's window: 1000 exact values, about 32 KB
        early += op.process(evs(*({"g": g, "v": v} for v in range(1000))), ports)
        assert op.bytes <= 64 * 1024, op.bytes  # type: ignore[attr-defined]
    assert [e.value["group"] for e in early] == list(range(48))  # oldest first
    assert all(e.value["p50"] == 499 for e in early)
    assert sorted(e.value["group"] for e in op.flush(ports)) == [48, 49]
    assert op.bytes == 0  # type: ignore[attr-defined]


def test_sliding_count_windows_keep_no_event_values_and_count_their_bytes() -> None:
    op = make("window", kind="sliding", size=1000, slide=1000, group_by="event['g']", max_bytes="1MiB",
              aggregates={"n": {"fn": "count"}})  # fmt: skip
    big = "x" * 100_000
    early = []
    for g in range(20):
        early += op.process(evs(*({"g": g, "pad": big} for _ in range(999))), Ports())
    kept = [held for _, items, _ in op.recent.values() for held, _ in items]  # type: ignore[attr-defined]
    assert kept and not any(hasattr(h, "value") for h in kept)  # not the events: their 100 KB values are free
    assert 0 < op.bytes <= 1 << 20 and early  # type: ignore[attr-defined]


def test_null_values_are_skipped_and_non_numbers_go_to_err() -> None:
    op = make(
        "window", size=3, aggregates={"n": {"fn": "count", "field": "event.get('v')"}, "avg": {"fn": "mean", "field": "event.get('v')"}}
    )
    ports = Ports()
    out = op.process(evs({"v": 2}, {"v": "x"}, {}, {"v": 4}), ports)
    assert strip(out) == [{"group": None, "n": 2, "avg": 3.0}]
    (bad,) = ports.got["err"]
    assert bad.value == {"v": "x"} and bad.meta["error"]["type"] == "TypeError" and "'avg'" in bad.meta["error"]["message"]


def test_group_by_errors_go_to_err() -> None:
    op = make("window", size=2, group_by="event['host']", aggregates={"n": {"fn": "count"}})
    ports = Ports()
    assert op.process(evs({}), ports) == []
    assert ports.got["err"][0].meta["error"]["stage"] == "p.window"


def test_max_groups_evicts_the_least_recent_group_early() -> None:
    op = make("window", size=10, group_by="event", max_groups=2, aggregates={"n": {"fn": "count"}})
    out = op.process(evs("a", "b", "a", "c"), Ports())
    assert strip(out) == [{"group": "b", "n": 1}]
    assert sorted((e.value["group"], e.value["n"]) for e in op.flush(Ports())) == [("a", 2), ("c", 1)]


def test_window_acks_complete_when_the_result_is_delivered() -> None:
    log = AckLog()
    op = make("window", kind="sliding", size=2, slide=1, aggregates={"n": {"fn": "count"}})
    a = log.ref(3, "a")
    out = op.process(evs(1, 2, 3, ack=a), Ports())
    done_each([a, a, a])
    assert len(out) == 2 and log.acked == []
    for e in out:
        assert e.ack is not None
        e.ack.pending += 1
        e.ack.done()
    assert log.acked == []  # event 3 is still held by the open sliding window
    for e in out:
        assert e.ack is not None
        e.ack.done()
    assert op.flush(Ports()) == []  # 2 and 3 were in an emitted window: nothing new, the shares end
    assert log.acked == ["a"]


@pytest.mark.parametrize("options", [
    {"aggregates": {"n": {"fn": "count"}}},  # neither size nor interval
    {"size": 3, "interval": "1s", "aggregates": {"n": {"fn": "count"}}},
    {"size": 3, "aggregates": {}},
    {"size": 3, "aggregates": {"s": {"fn": "sum"}}},  # sum needs a field
    {"size": 3, "aggregates": {"group": {"fn": "count"}}},
    {"size": 3, "aggregates": {"n": {"fn": "median"}}},
    {"size": 3, "slide": 1, "aggregates": {"n": {"fn": "count"}}},  # slide on a tumbling window
    {"kind": "sliding", "size": 3, "aggregates": {"n": {"fn": "count"}}},  # sliding without slide
    {"kind": "sliding", "size": 3, "slide": 1.5, "aggregates": {"n": {"fn": "count"}}},
    {"kind": "sliding", "interval": "1s", "slide": "2s", "aggregates": {"n": {"fn": "count"}}},
    {"kind": "sliding", "interval": "1h", "slide": "1ms", "aggregates": {"n": {"fn": "count"}}},
    {"size": 3, "aggregates": {"p": {"fn": "percentile", "field": "event", "p": 1.5}}},
])  # fmt: skip
def test_bad_config(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make("window", **options)


def test_expression_errors_are_found_at_construction() -> None:
    from headrace.contract.expr import ExpressionError

    with pytest.raises(ExpressionError):
        make("window", size=2, group_by="__import__('os')", aggregates={"n": {"fn": "count"}})
