"""``add_each`` / ``done_each``: a batch's refs settled per ref (grouped) or per event give the same acks."""

from __future__ import annotations

from typing import Any

import pytest

from headrace.contract.acks import GROUPED, AckRef, add_each, done_each, fail_each


@pytest.mark.parametrize("n", [1, GROUPED - 1, GROUPED, 500])
def test_each_source_batch_is_acked_once_when_its_last_share_is_done(n: int) -> None:
    acked: list[Any] = []
    failed: list[Any] = []
    a = AckRef(n, "a", acked.append, failed.append)
    b = AckRef(n, "b", acked.append, failed.append)
    refs = [a] * n + [b] * n
    add_each(refs, 2)  # two more places each
    assert a.pending == b.pending == 3 * n
    done_each(refs)
    done_each(refs)
    assert acked == [] and a.pending == b.pending == n
    done_each(refs[:n])
    assert acked == ["a"] and b.pending == n
    b.failed = True
    done_each(refs[n:])
    assert acked == ["a"] and failed == ["b"]


def test_fail_each_fails_the_source_batch() -> None:
    acked: list[Any] = []
    failed: list[Any] = []
    a = AckRef(GROUPED * 2, "a", acked.append, failed.append)
    done_each([a] * GROUPED)
    fail_each([a] * GROUPED)
    assert acked == [] and failed == ["a"]
