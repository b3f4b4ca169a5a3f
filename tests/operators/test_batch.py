"""``op: batch``: by count, by timeout (tick and late arrival), at the end of input, and its acks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from headrace.contract.acks import done_each
from tests.operators.support import AckLog, Clock, Ports, evs, make, values


def test_emits_one_event_per_count_with_the_values_and_batch_size() -> None:
    op = make("batch", count=3)
    ports = Ports()
    out = op.process(evs(*range(7)), ports)
    assert values(out) == [[0, 1, 2], [3, 4, 5]]
    assert [e.meta for e in out] == [{"batch_size": 3}, {"batch_size": 3}]
    assert out[0].raw is None
    assert values(op.flush(ports)) == [[6]]
    assert op.flush(ports) == []
    assert ports.got == {}


def test_counts_across_batches_and_ingest_is_the_oldest() -> None:
    op = make("batch", count=4)
    assert op.process(evs("a", "b", ingest=100), Ports()) == []
    out = op.process(evs("c", "d", "e", ingest=200), Ports())
    assert values(out) == [["a", "b", "c", "d"]]
    assert out[0].ingest == 100


def test_timeout_on_tick() -> None:
    clock = Clock()
    op = make("batch", clock, count=100, timeout="1s")
    op.process(evs(1, 2), Ports())
    assert op.tick(clock.advance(0.5), Ports()) == []
    out = op.tick(clock.advance(0.6), Ports())
    assert values(out) == [[1, 2]] and out[0].meta == {"batch_size": 2}
    assert op.tick(clock.advance(5), Ports()) == []  # nothing held: nothing to emit


def test_timeout_when_the_next_batch_arrives_late() -> None:
    clock = Clock()
    op = make("batch", clock, count=100, timeout="1s")
    op.process(evs(1, 2), Ports())
    clock.advance(2)
    out = op.process(evs(3), Ports())
    assert values(out) == [[1, 2]]  # the late event starts a new batch
    assert values(op.flush(Ports())) == [[3]]


def test_timeout_counts_from_the_oldest_held_event() -> None:
    clock = Clock()
    op = make("batch", clock, count=100, timeout="1s")
    op.process(evs(1), Ports())
    clock.advance(0.8)
    op.process(evs(2), Ports())
    assert values(op.tick(clock.advance(0.3), Ports())) == [[1, 2]]


def test_without_timeout_ticks_never_emit() -> None:
    clock = Clock()
    op = make("batch", clock, count=10)
    op.process(evs(1), Ports())
    assert op.tick(clock.advance(3600), Ports()) == []


def test_the_sources_are_acked_only_when_the_batch_event_is_delivered() -> None:
    log = AckLog()
    op = make("batch", count=4)
    a, b = log.ref(2, "a"), log.ref(2, "b")  # two source batches of two events each
    out1 = op.process(evs(1, 2, ack=a), Ports())
    done_each([a, a])  # the runner releases the input batch's shares
    assert log.acked == []  # held: still owed
    out2 = op.process(evs(3, 4, ack=b), Ports())
    done_each([b, b])
    assert out1 == [] and len(out2) == 1 and log.acked == []
    merged = out2[0].ack
    assert merged is not None
    merged.pending += 1  # the runner routes the new event (from_events) ...
    merged.done()  # ... and releases the first share, as for an input batch
    assert log.acked == []
    merged.done()  # the offramp accepted it
    assert sorted(log.acked) == ["a", "b"] and log.failed == []


def test_a_failed_batch_event_fails_its_sources() -> None:
    log = AckLog()
    op = make("batch", count=2)
    a = log.ref(2, "a")
    (out,) = op.process(evs(1, 2, ack=a), Ports())
    done_each([a, a])
    assert out.ack is not None
    out.ack.failed = True
    out.ack.done()
    assert log.failed == ["a"] and log.acked == []


@pytest.mark.parametrize("options", [{"count": 0}, {"timeout": "0s"}, {"count": 3, "size": 3}])
def test_bad_config(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        make("batch", **options)


def test_max_bytes_emits_a_batch_early() -> None:
    """count alone let a batch of 1 000 000 events of any size wait in memory."""
    op = make("batch", count=1_000_000, max_bytes="1MiB")
    big = {"pad": "x" * 100_000}
    out = op.process(evs(*[big] * 25), Ports())
    assert [len(e.value) for e in out] == [11, 11]  # each about 1 MiB (11 values of 100 kB, by the estimate)
    assert op.bytes < 1 << 20  # type: ignore[attr-defined]
    assert [len(e.value) for e in op.flush(Ports())] == [3]
