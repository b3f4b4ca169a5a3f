"""The fused per-event path of a worker segment gives what the batch-wise path gives.

Pure logic (no process): a SegmentProgram executes the same request once fused and once
batch-wise; outputs (port, input index, bytes or "unchanged", meta), decode failures and
per-node counts must be equal, for every kind of result a python stage can give.
"""

from __future__ import annotations

import json
import pickle
from array import array
from pathlib import Path
from typing import Any

import pytest

from headrace.plugins.operators.python import PythonOperator
from headrace.runtime.workers.program import NodeDef, SegmentProgram, SegmentSpec
from headrace.runtime.workers.wire import PICKLED, UNCHANGED, Request, Response

STAGES = '''
import headrace

def keep(event, meta):
    if event.get("id", 0) % 5 == 0:
        meta["fifth"] = True
    return event

def bump(event, meta):
    event["n"] = event.get("n", 0) + 1
    return event

def mixed(event, meta):
    i = event.get("id", 0)
    if i % 7 == 0:
        return None
    if i % 11 == 0:
        raise ValueError(f"bad {i}")
    if i % 13 == 0:
        return [{"id": i, "part": 1}, {"id": i, "part": 2}]
    if i % 17 == 0:
        headrace.emit("side", {"side": i}, {"why": "seventeen"})
    if i % 19 == 0:
        return {"id": i, "replaced": True}
    if i % 23 == 0:
        return {"id": i, "bad": {1, 2}}  # a set: JSON cannot encode it
    return event

def explode(event, meta):
    if event.get("part") == 2:
        raise RuntimeError("part two")
    return event
'''

CHAINS = {
    "one readonly": [("keep", True)],
    "one modifying": [("bump", False)],
    "mixed": [("mixed", False)],
    "readonly then mixed then modifying": [("keep", True), ("mixed", False), ("bump", False)],
    "mixed then explode": [("mixed", False), ("explode", True)],
}


def records() -> list[bytes]:
    out = [json.dumps({"id": i, "pad": "x" * (i % 9)}).encode() for i in range(300)]
    out[42] = b'{"id": 42, "broken"'  # a decode failure in the middle
    out[43] = b"[1, 2]"  # decodes, not an object: .get raises -> err
    return out


def program(tmp_path: Path, chain: list[tuple[str, bool]], lazy: bool = False) -> SegmentProgram:
    (tmp_path / "fusedstages.py").write_text(STAGES)
    nodes = []
    for k, (fn, ro) in enumerate(chain):
        cfg = PythonOperator.Config.model_validate({"fn": f"fusedstages:{fn}", "readonly": ro, "ports": ["side"], "lazy": lazy})
        nodes.append(NodeDef(f"s{k}", "python", cfg, tmp_path))
    prog = SegmentProgram(SegmentSpec("seg", nodes))
    prog.setup()
    return prog


def flatten(resp: Response, recs: list[bytes], metas: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything the parent would see (``metas``: what it sent), independent of how the response is laid out."""
    ports: dict[tuple[str, str], list[Any]] = {}
    for o in resp.outputs:
        src, lens = array("I"), array("i")
        src.frombytes(o.src)
        lens.frombytes(o.lens)
        if o.identity:  # every input, in order, unchanged
            src, lens = array("I", range(len(recs))), array("i", [UNCHANGED] * len(recs))
        pos = o.start
        items = ports.setdefault((o.node, o.port), [])
        for j, (i, n) in enumerate(zip(src, lens, strict=True)):
            if n == UNCHANGED:
                data = recs[i]
            else:
                data = bytes(resp.blob[pos : pos + n])
                pos += n
            if o.metas_as_sent:  # the parent keeps the metas it sent
                assert metas is not None
                meta = metas[i]
            else:
                meta = o.metas[j] if o.metas is not None else {}
            items.append((i, pickle.loads(data) if o.codec == PICKLED else json.loads(data), meta))
    return {"ports": ports, "failures": resp.failures, "counts": resp.counts}


def run(prog: SegmentProgram, recs: list[bytes], metas: list[dict[str, Any]] | None) -> Response:
    req = Request(1, "seg", "json", array("I", [len(r) for r in recs]).tobytes(), memoryview(b"".join(recs)),
                  pickle.loads(pickle.dumps(metas)), array("q", range(len(recs))).tobytes())  # fmt: skip
    return prog.execute(req)


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("with_metas", [False, True])
def test_fused_equals_batchwise(tmp_path: Path, name: str, with_metas: bool) -> None:
    recs = records()
    metas = [{"partition": i % 3} for i in range(len(recs))] if with_metas else None
    prog = program(tmp_path, CHAINS[name])
    assert prog.fused is not None, "a chain of def stages is fused"
    fused = flatten(run(prog, recs, metas), recs, metas)
    prog.fused = None
    batchwise = flatten(run(prog, recs, metas), recs, metas)
    assert fused == batchwise
    assert fused["failures"] and fused["failures"][0][0] == 42


@pytest.mark.parametrize("with_metas", [False, True])
def test_lazy_views_give_what_dicts_give(tmp_path: Path, with_metas: bool) -> None:
    """Readonly stages read records through lazy views: the same outputs, failures and counts
    as with dicts (only an error message names the view's type instead of dict or list)."""
    pytest.importorskip("simdjson")
    recs = records()
    metas = [{"partition": i % 3} for i in range(len(recs))] if with_metas else None
    lazy = program(tmp_path, [("keep", True)], lazy=True)
    assert lazy.fused is not None and lazy.fused.views
    got = flatten(run(lazy, recs, metas), recs, metas)
    want = flatten(run(program(tmp_path, [("keep", True)]), recs, metas), recs, metas)
    assert repr(got).replace("csimdjson.Array", "list").replace("csimdjson.Object", "dict") == repr(want)


VIEW_STAGES = """
kept = []

def keeps_views(event, meta):
    kept.append(event)            # holds a view past its record: the next record needs a new parser
    meta["tags"] = event["tags"]  # a nested view in meta crosses to the parent as a plain list
    return event

def writes(event, meta):
    event["x"] = 1                # a readonly stage that writes: a TypeError, to err
    return event

def rebuilds(event, meta):
    return {"copy": event["nested"], "n": len(event["tags"])}  # a new value holding a view: encoded plainly
"""


def _view_program(tmp_path: Path, fn: str) -> SegmentProgram:
    (tmp_path / "viewstages.py").write_text(VIEW_STAGES)
    cfg = PythonOperator.Config.model_validate({"fn": f"viewstages:{fn}", "readonly": True})
    prog = SegmentProgram(SegmentSpec("seg", [NodeDef("s0", "python", cfg, tmp_path)]))
    prog.setup()
    return prog


VIEW_RECORDS = [json.dumps({"id": i, "tags": ["a", i], "nested": {"k": [i]}}).encode() for i in range(5)]


def test_views_kept_by_a_stage_stay_valid_and_metas_carry_plain_values(tmp_path: Path) -> None:
    pytest.importorskip("simdjson")
    resp = run(_view_program(tmp_path, "keeps_views"), VIEW_RECORDS, None)
    (out,) = resp.outputs
    assert out.identity and not resp.failures
    assert pickle.loads(pickle.dumps(out.metas)) == [{"tags": ["a", i]} for i in range(5)]
    import viewstages  # type: ignore[import-not-found]

    assert [e["id"] for e in viewstages.kept] == list(range(5)), "every kept view still reads its own record"


def test_a_readonly_stage_that_writes_sends_the_event_to_err(tmp_path: Path) -> None:
    pytest.importorskip("simdjson")
    got = flatten(run(_view_program(tmp_path, "writes"), VIEW_RECORDS, None), VIEW_RECORDS)
    errs = got["ports"][("s0", "err")]
    assert [i for i, _, _ in errs] == list(range(5))
    assert all(m["error"]["type"] == "TypeError" for _, _, m in errs)
    assert [v for _, v, _ in errs] == [json.loads(r) for r in VIEW_RECORDS], "the original record goes to err"


def test_a_new_value_holding_views_is_encoded_plainly(tmp_path: Path) -> None:
    pytest.importorskip("simdjson")
    got = flatten(run(_view_program(tmp_path, "rebuilds"), VIEW_RECORDS, None), VIEW_RECORDS)
    assert [v for _, v, _ in got["ports"][("s0", "out")]] == [{"copy": {"k": [i]}, "n": 2} for i in range(5)]


@pytest.mark.parametrize("record", [b"123456789012345678901234567890", b"[" * 2000 + b"]" * 2000, b'{"a": "\xff"}', b'{"a":'])
def test_views_accept_and_refuse_what_orjson_does(tmp_path: Path, record: bytes) -> None:
    """simdjson refuses some records orjson takes (integers over 64 bits); those are parsed by
    orjson, so acceptance and the reasons of refusals are the same on both paths."""
    pytest.importorskip("simdjson")
    lazy = run(_view_program(tmp_path, "keeps_views"), [record], None)
    plain = run(program(tmp_path, [("keep", True)]), [record], None)
    assert lazy.failures == plain.failures
    assert bool(lazy.outputs) == bool(plain.outputs)


def test_unchanged_events_are_not_reencoded(tmp_path: Path) -> None:
    recs = records()
    prog = program(tmp_path, [("keep", True)])
    resp = run(prog, recs, None)
    (out,) = [o for o in resp.outputs if o.port == "out"]
    lens = array("i")
    lens.frombytes(out.lens)
    assert set(lens) == {UNCHANGED}
    assert not out.identity, "record 42 did not decode: not every input came out"
    whole = run(prog, [r for i, r in enumerate(recs) if i not in (42, 43)], None)
    assert [(o.port, o.identity, o.src, o.lens) for o in whole.outputs] == [("out", True, b"", b"")], "all untouched: no indices at all"
    assert resp.blob == b"" or all(o.port != "out" for o in resp.outputs if o.start < len(resp.blob))


def test_counts_of_the_mixed_stage(tmp_path: Path) -> None:
    recs = records()
    prog = program(tmp_path, [("mixed", False)])
    resp = run(prog, recs, None)
    c = resp.counts["s0"]
    ids = [i for i in range(300) if i != 42]  # 42 does not decode
    drop = [i for i in ids if i % 7 == 0 and i != 43]
    raise_ = [i for i in ids if i % 7 and i % 11 == 0] + [43]
    assert c.received == len(ids)
    assert c.dropped == len(drop)
    assert c.errors == len(raise_)
    side = [o for o in resp.outputs if o.port == "side"]
    assert sum(len(o.src) // 4 for o in side) == len([i for i in ids if i % 7 and i % 11 and i % 13 and i % 17 == 0])


def test_values_the_fast_encoder_refuses_are_written_as_the_codec_writes_them(tmp_path: Path) -> None:
    """Workers encode written records with orjson alone; what it refuses (a non-str key, bytes, an
    integer beyond 64 bits) is written by the codec's own encode, exactly as before."""
    from headrace.plugins.codecs.json import to_json

    (tmp_path / "oddstages.py").write_text('''
def odd(event, meta):
    i = event["id"]
    if i == 1:
        event["by_number"] = {7: "seven"}
    elif i == 2:
        event["raw"] = b"bytes \\xff"
    elif i == 3:
        event["big"] = 2 ** 70
    else:
        event["plain"] = True
    return event
''')
    cfg = PythonOperator.Config.model_validate({"fn": "oddstages:odd"})
    prog = SegmentProgram(SegmentSpec("seg", [NodeDef("s0", "python", cfg, tmp_path)], {("s0", "out"): "json"}))
    prog.setup()
    # compact records: an appender's fields are spliced after the record's own bytes, so these
    # compare byte for byte with the whole record encoded
    recs = [json.dumps({"id": i}, separators=(",", ":")).encode() for i in range(5)]
    resp = run(prog, recs, None)
    (out,) = [o for o in resp.outputs if o.port == "out"]
    lens = array("i")
    lens.frombytes(out.lens)
    blob, pos, got = bytes(resp.blob), out.start, []
    for n in lens:
        got.append(blob[pos : pos + n])
        pos += n
    expected = []
    for i in range(5):
        ev: dict[str, Any] = {"id": i}
        ev.update({1: {"by_number": {7: "seven"}}, 2: {"raw": b"bytes \xff"}, 3: {"big": 2**70}}.get(i, {"plain": True}))
        expected.append(to_json(ev))
    assert got == expected
    assert b'"7":"seven"' in got[1] and b"1180591620717411303424" in got[3]
