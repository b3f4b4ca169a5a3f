"""Spliced answers: a worker running one appender stage answers a job whose out events are all
records spliced with the same tail with where each is cut (``Output.cuts``) and the tail once;
the parent, which holds the records, splices them. Whatever the job holds (failures, drops, a
record that has the field, tails that differ), the parent must rebuild exactly the records the
answer with whole encodings gives. Pure logic: a SegmentProgram and the parent's ``rebuild``."""

from __future__ import annotations

import json
import pickle
from array import array
from pathlib import Path
from typing import Any

import orjson
import pytest

from headrace.plugins.operators.python import PythonOperator
from headrace.runtime.batch import Batch
from headrace.runtime.workers.program import NodeDef, SegmentProgram, SegmentSpec
from headrace.runtime.workers.segment import PooledChainRunner
from headrace.runtime.workers.wire import Request, Response

pytest.importorskip("simdjson")

STAGES = '''
def seen(event, meta):
    event["seen"] = True
    return event

def gate(event, meta):
    if event.get("drop"):
        return None
    event["seen"] = True
    return event

def flag(event, meta):
    event["big"] = event.get("k", 0) > 5
    return event
'''


def plain(n: int = 200) -> list[bytes]:
    return [orjson.dumps({"id": i, "k": i % 9, "pad": "x" * (i % 7)}) for i in range(n)]


def with_failures() -> list[bytes]:
    recs = plain()
    recs[50] = b'{"id": 50, "broken"'  # a decode failure
    recs[60] = b"[1, 2]"  # not an object: the stage raises, to err
    for i in (3, 70, 71, 199):
        recs[i] = orjson.dumps({"id": i, "drop": True})  # dropped by gate
    return recs


def has_field() -> list[bytes]:
    recs = plain()
    recs[100] = orjson.dumps({"id": 100, "seen": False})  # decoded whole: the field keeps its place
    return recs


def odd_shapes() -> list[bytes]:
    recs = plain()
    recs[10] = b"{}"
    recs[20] = b'{"id": 20}  '  # blanks after it
    recs[0] = b'{"id": 0, "s": "caf\\u00e9"}'  # a backslash in the job: names searched with escapes in mind
    return recs


CASES = {  # stage, records, whether the whole job can be spliced
    "uniform": ("seen", plain, True),
    "failures and drops": ("gate", with_failures, True),
    "a record has the field": ("seen", has_field, False),
    "odd shapes": ("seen", odd_shapes, False),
    "tails that differ": ("flag", plain, False),
}


def program(tmp_path: Path, fn: str) -> SegmentProgram:
    (tmp_path / "splicestages.py").write_text(STAGES)
    cfg = PythonOperator.Config.model_validate({"fn": f"splicestages:{fn}", "lazy": True})
    prog = SegmentProgram(SegmentSpec("seg", [NodeDef("s0", "python", cfg, tmp_path)]))
    prog.setup()
    return prog


def answer(prog: SegmentProgram, recs: list[bytes], metas: list[dict[str, Any]] | None, keeps: bool) -> Response:
    req = Request(1, "seg", "json", array("I", map(len, recs)).tobytes(), memoryview(b"".join(recs)), pickle.loads(pickle.dumps(metas)),
                  array("q", range(len(recs))).tobytes(), keeps_records=keeps)  # fmt: skip
    return prog.execute(req)


def rebuilt(resp: Response, recs: list[bytes], metas: list[dict[str, Any]] | None) -> dict[tuple[str, str], Any]:
    """What the parent makes of each output: records, ingest times (which input each is), metas."""
    got = {}
    for out in resp.outputs:
        chunk = Batch.source(list(recs), codec="json", origin="src", group=0, metas=metas)
        chunk.ingest = list(range(len(recs)))
        b = PooledChainRunner.rebuild(chunk, out, resp.blob)
        got[(out.node, out.port)] = (b.payloads, b.ingest, [b.meta(i) for i in range(len(b))], b.nbytes)
    return got


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("with_metas", [False, True])
def test_spliced_answers_rebuild_what_whole_encodings_give(tmp_path: Path, case: str, with_metas: bool) -> None:
    fn, make, whole_job = CASES[case]
    recs = make()
    metas = [{"partition": i % 3} for i in range(len(recs))] if with_metas else None
    prog = program(tmp_path, fn)
    assert prog.fused is not None and prog.fused.patch, "the stage is an appender: its records are spliced"
    spliced = answer(prog, recs, metas, keeps=True)
    whole = answer(prog, recs, metas, keeps=False)
    assert not any(o.cuts for o in whole.outputs), "a parent without the records gets them whole"
    assert any(o.cuts for o in spliced.outputs) == whole_job
    if whole_job:  # the answer carries no record bytes
        assert len(spliced.blob) < len(whole.blob) // 20
    assert rebuilt(spliced, recs, metas) == rebuilt(whole, recs, metas)
    assert spliced.failures == whole.failures and spliced.counts == whole.counts
    outs = rebuilt(spliced, recs, metas)[("s0", "out")][0]
    assert outs and all(json.loads(r) for r in outs)  # the spliced records parse


def test_a_spliced_job_keeps_each_records_bytes_and_adds_the_field(tmp_path: Path) -> None:
    recs = with_failures()
    resp = answer(program(tmp_path, "gate"), recs, None, keeps=True)
    [out] = [o for o in resp.outputs if o.port == "out"]
    assert out.cuts and out.tail == b',"seen":true}'
    payloads, ingest, _, nbytes = rebuilt(resp, recs, None)[("s0", "out")]
    assert 50 not in ingest and 60 not in ingest and 3 not in ingest and 199 not in ingest
    assert payloads == [recs[i][:-1] + b',"seen":true}' for i in ingest]
    assert nbytes == sum(map(len, payloads))
