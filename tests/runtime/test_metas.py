"""Metas a stage writes come back to the parent as it wrote them: same values, same types.

``share_equal`` sends equal metas once; "equal" must mean interchangeable, or one record
leaves with another's meta (issue 12, item 7: ``NaN`` became ``None``, a ``datetime`` a string).
"""

from __future__ import annotations

import datetime
import enum
import json
import math
import pickle
from array import array
from pathlib import Path
from typing import Any

import pytest

from headrace.contract.metas import COLUMN, CONST, MetaColumns, header_dict
from headrace.plugins.operators.python import PythonOperator
from headrace.runtime.batch import share_equal, unshare
from headrace.runtime.workers.program import NodeDef, SegmentProgram, SegmentSpec
from headrace.runtime.workers.wire import Request


class Level(enum.IntEnum):
    ONE = 1


class Tag(str):
    pass


WHEN = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)

# pairs that some encoding or equality confuses, but that are different metas
LOOKALIKES = [
    ({"x": math.nan}, {"x": None}),
    ({"x": math.inf}, {"x": None}),
    ({"x": WHEN}, {"x": WHEN.isoformat()}),
    ({"x": 1}, {"x": True}),
    ({"x": 1}, {"x": 1.0}),
    ({"x": 0.0}, {"x": -0.0}),
    ({"x": 1}, {"x": Level.ONE}),
    ({"x": "a"}, {"x": Tag("a")}),
    ({"x": b"a"}, {"x": "a"}),
    ({1: "a"}, {True: "a"}),
    ({"x": (1, 2)}, {"x": [1, 2]}),
    ({"x": 2**70}, {"x": float(2**70)}),
]


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(k, j) for k, j in zip(a, b, strict=True)) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize(("first", "second"), LOOKALIKES, ids=[repr(p) for p in LOOKALIKES])
def test_lookalike_metas_are_not_shared(first: dict[str, Any], second: dict[str, Any]) -> None:
    metas = [first, second] * 40  # repeats, so that sharing pays and is tried
    got = pickle.loads(pickle.dumps(share_equal(metas), protocol=5))
    assert all(same(g, m) for g, m in zip(got, metas, strict=True))


def test_equal_flat_metas_are_still_sent_once() -> None:
    metas = [{"class": "a", "n": 1}, {"class": "b", "n": 1}] * 500
    shared = share_equal([dict(m) for m in metas])
    assert len({id(m) for m in shared}) == 2
    assert shared == metas
    assert len({id(m) for m in unshare(shared)}) == len(metas)


STAGE = '''
import datetime, math

WHEN = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.timezone.utc)
KINDS = [math.nan, None, WHEN, WHEN.isoformat(), 1, True, 1.0, -0.0, 0.0, b"a", "a", (1, 2), [1, 2], 2**70]

def tag(event, meta):
    meta["v"] = KINDS[event["id"] % len(KINDS)]
    return event
'''


def test_metas_written_on_a_worker_reach_the_parent_unchanged(tmp_path: Path) -> None:
    (tmp_path / "metastage.py").write_text(STAGE)
    cfg = PythonOperator.Config.model_validate({"fn": "metastage:tag", "readonly": True})
    prog = SegmentProgram(SegmentSpec("seg", [NodeDef("s0", "python", cfg, tmp_path)]))
    prog.setup()
    recs = [json.dumps({"id": i}).encode() for i in range(14 * 20)]
    req = Request(1, "seg", "json", array("I", map(len, recs)).tobytes(), b"".join(recs), None, array("q", [0] * len(recs)).tobytes())
    resp = pickle.loads(pickle.dumps(prog.execute(req), protocol=5))  # what the parent gets
    (out,) = resp.outputs
    import metastage  # type: ignore[import-not-found]

    expected = [{"v": metastage.KINDS[i % len(metastage.KINDS)]} for i in range(len(recs))]
    assert out.metas is not None and len(out.metas) == len(expected)
    wrong = [(i, m, e) for i, (m, e) in enumerate(zip(out.metas, expected, strict=True)) if not same(m, e)]
    assert not wrong, wrong[:5]


def test_a_classifier_with_a_few_dozen_distinct_metas_is_still_shared() -> None:
    """Tremor's classifier gives 17 distinct metas over its records, 10 of them in the first 16:
    sharing must not give up that early (an early bail-out cut bench 2 by half)."""
    kinds = [{"class": f"c{k % 17}", "rate": 1250, "dimensions": f"d{k % 17}"} for k in range(17)]
    metas = [dict(kinds[i % 17]) for i in range(1000)]
    shared = share_equal(metas)
    assert len({id(m) for m in shared}) == 17
    assert shared == metas


AS_SENT_STAGES = '''
import enum


class Level(enum.IntEnum):
    ONE = 1


def keep(event, meta):
    return event


def header(event, meta):
    if event["id"] == 3:
        meta["kafka_headers"]["seen"] = b"1"  # a nested write
    return event


def retype(event, meta):
    if event["id"] == 2:
        meta["kafka_partition"] = Level.ONE  # equal to 1, not the same value
    return event


def twice(event, meta):
    return [event, dict(event)]
'''


@pytest.mark.parametrize("form", ["dicts", "columns"])
@pytest.mark.parametrize(("stage", "as_sent"), [("keep", True), ("header", False), ("retype", False), ("twice", False)])
def test_metas_come_back_only_when_a_stage_changed_one(tmp_path: Path, stage: str, as_sent: bool, form: str) -> None:
    """Unchanged metas stay in the parent (none cross back); a nested write, a value of another type
    that compares equal, or an input leaving twice sends them back, as the stage left them. The
    same whether the parent sent dicts or a source's ``MetaColumns``."""
    (tmp_path / "assentstages.py").write_text(AS_SENT_STAGES)
    cfg = PythonOperator.Config.model_validate({"fn": f"assentstages:{stage}"})
    prog = SegmentProgram(SegmentSpec("seg", [NodeDef("s0", "python", cfg, tmp_path)]))
    prog.setup()
    recs = [json.dumps({"id": i}).encode() for i in range(5)]
    sent: Any = [{"kafka_partition": 1, "kafka_offset": 10 + i, "kafka_key": b"k", "kafka_headers": {}} for i in range(5)]
    if form == "columns":
        sent = MetaColumns(5, [("kafka_partition", CONST, 1), ("kafka_offset", COLUMN, range(10, 15)), ("kafka_key", COLUMN, [b"k"] * 5),
                               ("kafka_headers", COLUMN, [()] * 5, header_dict)])  # fmt: skip
    req = Request(1, "seg", "json", array("I", map(len, recs)).tobytes(), b"".join(recs), pickle.loads(pickle.dumps(sent)),
                  array("q", [0] * len(recs)).tobytes())  # fmt: skip
    resp = pickle.loads(pickle.dumps(prog.execute(req), protocol=5))
    outs = [o for o in resp.outputs if o.port == "out"]
    assert all(o.metas_as_sent == as_sent for o in outs)
    if as_sent:
        assert all(o.metas is None for o in outs)
        return
    got = [m for o in outs for m in o.metas]
    if stage == "header":
        assert got[3]["kafka_headers"] == {"seen": b"1"} and got[2]["kafka_headers"] == {}
    if stage == "retype":
        assert type(got[2]["kafka_partition"]).__name__ == "Level" and type(got[1]["kafka_partition"]) is int
    if stage == "twice":
        assert len(got) == 10
