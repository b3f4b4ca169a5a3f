"""``op: dedupe``: drop repeated keys within a window, with bounded memory."""

from __future__ import annotations

from typing import Any

from tests.operators.support import Clock, Ports, evs, make, values


def ids(*xs: Any) -> list[dict[str, Any]]:
    return [{"id": x} for x in xs]


def test_drops_keys_seen_within_the_window() -> None:
    clock = Clock()
    op = make("dedupe", clock, key="event['id']", window="10s")
    assert values(op.process(evs(*ids(1, 2, 1, 3, 2)), Ports())) == ids(1, 2, 3)
    clock.advance(5)
    assert values(op.process(evs(*ids(1, 4)), Ports())) == ids(4)
    clock.advance(5.5)  # 10.5 s after the first 1: forgotten; 4 is 5.5 s old: still known
    assert values(op.process(evs(*ids(1, 4)), Ports())) == ids(1)


def test_window_counts_from_the_first_event_not_the_duplicates() -> None:
    clock = Clock()
    op = make("dedupe", clock, key="event", window="1s")
    kept = [len(op.process(evs("a"), Ports()))]
    for _ in range(3):
        clock.advance(0.4)
        kept.append(len(op.process(evs("a"), Ports())))
    assert kept == [1, 0, 0, 1]  # at 1.2 s the first "a" is forgotten, though duplicates came since


def test_max_keys_bounds_memory_forgetting_the_oldest() -> None:
    op = make("dedupe", Clock(), key="event", window="1h", max_keys=2)
    assert values(op.process(evs("a", "b", "c"), Ports())) == ["a", "b", "c"]
    assert len(op.seen) == 2
    assert values(op.process(evs("b", "c", "a"), Ports())) == ["a"]  # a was forgotten


def test_structured_keys_and_key_errors() -> None:
    op = make("dedupe", Clock(), key="[event['user'], event.get('tags')]")
    ports = Ports()
    out = op.process(evs({"user": 1, "tags": {"x": 1}}, {"user": 1, "tags": {"x": 1}}, {"nouser": 1}), ports)
    assert len(out) == 1
    assert ports.got["err"][0].meta["error"]["type"] == "KeyError"
