"""The conservation checker itself: it must flag every way a delivery can go wrong."""

from __future__ import annotations

from tests.reliability.checker import AT_LEAST_ONCE, AT_MOST_ONCE, EXACTLY_ONCE, conserve


def test_everything_once_is_ok() -> None:
    r = conserve(range(10), list(range(10)))
    assert r.ok and not r.lost and not r.duplicated and not r.unexpected, r.summary()


def test_lost_duplicated_and_unexpected_are_named() -> None:
    r = conserve(range(10), [0, 1, 2, 2, 3, 4, 5, 6, 7, 99], guarantee=EXACTLY_ONCE)
    assert not r.ok
    assert r.lost == {8, 9} and r.duplicated == {2: 1} and r.unexpected == {99}
    assert "2 record(s) lost" in r.summary() and "never sent" in r.summary() and "exactly-once" in r.summary()


def test_duplicates_are_allowed_only_within_the_window_and_only_at_least_once() -> None:
    found = [*range(10), 1, 2, 3]
    assert conserve(range(10), found, window=3, guarantee=AT_LEAST_ONCE).ok
    assert not conserve(range(10), found, window=2, guarantee=AT_LEAST_ONCE).ok
    assert not conserve(range(10), found, window=100, guarantee=EXACTLY_ONCE).ok
    assert not conserve(range(10), found, window=100, guarantee=AT_MOST_ONCE).ok


def test_dead_letter_counts_and_must_match_expectations() -> None:
    assert conserve(range(5), [0, 1, 2], dead_letter=[3, 4], expect_dead={3, 4}).ok
    wrong = conserve(range(5), [0, 1, 2, 3], dead_letter=[4], expect_dead={3, 4})
    assert not wrong.ok and wrong.misrouted == {3}
    extra = conserve(range(5), [0, 1, 2, 3], dead_letter=[4], expect_dead=set())
    assert not extra.ok and extra.misrouted == {4}
    twice = conserve(range(5), [0, 1, 2, 3, 4], dead_letter=[4], guarantee=EXACTLY_ONCE)
    assert not twice.ok and twice.duplicated == {4: 1}, "in an output and in the dead letter: a duplicate"


def test_fanout_needs_every_record_at_every_output() -> None:
    ok = conserve(range(4), {"file": [0, 1, 2, 3], "kafka": [3, 2, 1, 0]}, fanout=True, guarantee=EXACTLY_ONCE)
    assert ok.ok, ok.summary()
    missing = conserve(range(4), {"file": [0, 1, 2, 3], "kafka": [0, 1, 2]}, fanout=True)
    assert missing.lost == {3}
    rejected_by_one = conserve(range(4), {"file": [0, 1, 2, 3], "kafka": [0, 1, 2]}, dead_letter=[3], fanout=True, expect_dead={3})
    assert rejected_by_one.ok, rejected_by_one.summary()


def test_ids_sent_twice_are_a_test_error() -> None:
    r = conserve([1, 1, 2], [1, 2])
    assert not r.ok and "ids must be unique" in r.summary()
