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


def test_max_bytes_bounds_the_keys_by_size_not_only_by_count() -> None:
    """The fault: 100 000 keys of 1 MB each were 100 GB; now the keys take max_bytes at most."""
    op = make("dedupe", Clock(), key="event['k']", window="1h", max_bytes="1MiB")
    big = [{"k": str(i) * 100_000} for i in range(10, 60)]  # 50 keys of 200 KB
    assert len(op.process(evs(*big), Ports())) == 50
    assert op.bytes <= 1 << 20 and len(op.seen) == 5  # type: ignore[attr-defined]  # the 5 newest
    assert len(op.process(evs(*big[-5:]), Ports())) == 0  # still deduplicated
    assert len(op.process(evs(*big[:1]), Ports())) == 1  # forgotten: passes again
    small = op.process(evs(*({"k": i} for i in range(1000))), Ports())
    assert len(small) == 1000 and len(op.seen) > 1000 - 50  # type: ignore[attr-defined]  # small keys cost little


def test_a_key_larger_than_max_bytes_is_not_remembered() -> None:
    op = make("dedupe", Clock(), key="event", window="1h", max_bytes="64KiB")
    assert values(op.process(evs("a", "x" * 100_000, "x" * 100_000, "a"), Ports())) == ["a", "x" * 100_000, "x" * 100_000]
    assert list(op.seen) == ["a"]  # type: ignore[attr-defined]  # the huge key did not push the others out
    assert op.bytes <= 64 * 1024  # type: ignore[attr-defined]
