"""``op: sample``: one in ``rate``, by counter or by a stable key hash."""

from __future__ import annotations

import subprocess
import sys

from headrace.plugins.operators.sample import stable_hash
from tests.operators.support import Ports, evs, make, values


def test_counter_keeps_one_in_rate_across_batches() -> None:
    op = make("sample", rate=3)
    assert values(op.process(evs(*range(5)), Ports())) == [0, 3]
    assert values(op.process(evs(*range(5, 10)), Ports())) == [6, 9]


def test_rate_one_keeps_everything() -> None:
    op = make("sample", rate=1)
    assert values(op.process(evs(*range(4)), Ports())) == [0, 1, 2, 3]


def test_key_keeps_or_drops_a_key_always() -> None:
    op = make("sample", rate=4, key="event['user']")
    users = [{"user": f"u{i % 40}"} for i in range(400)]
    kept = values(op.process(evs(*users), Ports()))
    kept_users = {e["user"] for e in kept}
    assert 0 < len(kept_users) < 40
    assert len(kept) == 10 * len(kept_users)  # every event of a kept user, none of the others
    again = make("sample", rate=4, key="event['user']")
    assert values(again.process(evs(*users), Ports())) == kept


def test_hash_is_stable_across_processes() -> None:
    code = "from headrace.plugins.operators.sample import stable_hash; print(stable_hash({'b': [1, 'x'], 'a': None}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"})
    assert int(other.stdout) == stable_hash({"a": None, "b": [1, "x"]})


def test_key_errors_go_to_err() -> None:
    op = make("sample", rate=2, key="event['user']")
    ports = Ports()
    op.process(evs({}), ports)
    assert len(ports.got["err"]) == 1
