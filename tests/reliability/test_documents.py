"""Row 31: what a stage judged and what leaves is the same document (issue 12, classes 7 and 21).

Integers beyond 64 bits stay integers whether a record is modified on the loop, on a worker
(the per-record fast path and the general one), or read through a read-only view; and an
integer a stage puts in comes out as it was put in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import Figures
from tests.reliability.harness import Lines, dead_letters, write_config
from tests.support.daemon import Daemon

BIG = 123456789012345678901234567890
STAGES = f'''
def touch(event, meta):
    event["seen"] = event["big"] + 1       # arithmetic on what the stage read
    return event

def put(event, meta):
    event["put"] = {BIG} * 1000
    return event

def judge(event, meta):
    meta["judged"] = str(event["big"])     # what a read-only stage saw
    return event

def window(event, meta):                   # not a plain function chain: the general worker path
    return [event]
'''


@pytest.mark.parametrize("placement", ["loop", "workers"])
def test_row31_big_integers_stay_exact_through_stages(tmp_path: Path, placement: str, figures: Figures) -> None:
    (tmp_path / "stages.py").write_text(STAGES)
    records = [{"id": i, "big": BIG + i, "neg": -(2**63) - 1 - i, "u64": 2**64 + i} for i in range(50)]
    (tmp_path / "in.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))
    where = ", placement: loop" if placement == "loop" else ""
    cfg = write_config(tmp_path, f"""
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
pipelines:
  main: [{{op: python, fn: "stages:touch"{where}}}, {{op: python, fn: "stages:put"{where}}}]
  look: [{{op: python, fn: "stages:judge", readonly: true{where}}}]
  fan: [{{op: python, fn: "stages:window"{where}}}, {{op: python, fn: "stages:touch"{where}}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  seen: {{type: file, with_meta: true, config: {{path: seen.ndjson}}}}
  fanned: {{type: file, config: {{path: fanned.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main, look, fan], main: [out], look: [seen], fan: [fanned], main/err: [dlq], look/err: [dlq], fan/err: [dlq]}}
""", port=None, workers=1 if placement == "workers" else 0)  # fmt: skip
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    assert dead_letters(tmp_path / "dlq.ndjson") == []
    out = sorted(Lines(tmp_path / "out.ndjson").events, key=lambda e: e["id"])
    assert [e["seen"] for e in out] == [r["big"] + 1 for r in records]
    assert all(e["big"] == r["big"] and e["neg"] == r["neg"] and e["u64"] == r["u64"] for e, r in zip(out, records, strict=True))
    assert all(e["put"] == BIG * 1000 for e in out)
    seen = sorted(dead_letters(tmp_path / "seen.ndjson"), key=lambda e: e["event"]["id"])
    assert [e["meta"]["judged"] for e in seen] == [str(r["big"]) for r in records]
    assert [e["event"]["big"] for e in seen] == [r["big"] for r in records]  # unmodified: the original bytes
    fanned = sorted(Lines(tmp_path / "fanned.ndjson").events, key=lambda e: e["id"])
    assert [e["seen"] for e in fanned] == [r["big"] + 1 for r in records]
    assert all(isinstance(e["big"], int) for e in out + fanned)
    figures(row=31, placement=placement, records=len(records), exact=len(out), lost=len(records) - len(out))
