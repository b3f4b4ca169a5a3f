"""Events a stage on the loop decoded cross to a worker segment as their codec writes them
(the way a worker's changed events come back), or pickled as they are when the codec refuses
one of them (bytes, integers beyond 64 bits): the worker stage sees what it would see after a
write and a read, and nothing is lost or changed beyond that."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.support.daemon import Daemon

STAGES = '''
async def mark(event, meta):
    i = event["id"]
    if i % 2 == 0:
        event["m"] = i * 2
        event["t"] = (i, "x")  # a tuple: JSON writes an array
    if i == 7 and event.get("bytes"):
        event["raw"] = b"\\x00\\xff"  # JSON cannot hold it alone: this job crosses pickled
    if i == 9 and event.get("bytes"):
        event["big"] = 2 ** 70
    return event

def see(event, meta):
    event["seen"] = [type(event.get(k)).__name__ for k in ("m", "t", "raw", "big")]
    return event
'''


LOOP_THEN_WORKERS = """
    - {op: python, fn: "stages:mark"}
    - {op: python, fn: "stages:see"}"""


def _run(tmp_path: Any, write: Any, name: str, workers: int, lines: list[str], stages: str = STAGES,
         pipeline: str = LOOP_THEN_WORKERS) -> list[str]:  # fmt: skip
    """The lines ``lines`` through ``pipeline`` (of the functions in ``stages``), as they leave."""
    folder = tmp_path / name
    folder.mkdir()
    write(f"{name}/in.ndjson", "".join(x + "\n" for x in lines))
    write(f"{name}/stages.py", stages)
    cfg = write(f"{name}/c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
pipelines:
  main:{pipeline}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [main], main: [out]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    return (folder / "out.ndjson").read_text().splitlines()


def _by_id(tmp_path: Any, write: Any, name: str, workers: int, records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = [orjson.loads(x) for x in _run(tmp_path, write, name, workers, [orjson.dumps(r).decode() for r in records])]
    assert len(out) == len(records)
    return {e["id"]: e for e in out}


def test_decoded_events_reach_a_worker_as_their_codec_writes_them(tmp_path: Any, write: Any) -> None:
    records = [{"id": i, "pad": "y" * (i % 5)} for i in range(40)]
    loop = _by_id(tmp_path, write, "loop", 0, records)
    work = _by_id(tmp_path, write, "work", 2, records)
    for i in range(40):
        seen_loop, seen_work = loop[i].pop("seen"), work[i].pop("seen")
        assert work[i] == loop[i], i  # what leaves is the same
        if i % 2 == 0:
            assert seen_loop[:2] == ["int", "tuple"] and seen_work[:2] == ["int", "list"], (i, seen_work)
        else:
            assert seen_loop == seen_work == ["NoneType"] * 4


@pytest.mark.parametrize("workers", [2])
def test_a_value_the_codec_refuses_crosses_exactly(tmp_path: Any, write: Any, workers: int) -> None:
    records = [{"id": i, "bytes": True} for i in range(12)]
    work = _by_id(tmp_path, write, "work", workers, records)
    assert work[7]["seen"] == ["NoneType", "NoneType", "bytes", "NoneType"]
    assert work[9]["seen"] == ["NoneType", "NoneType", "NoneType", "int"] and work[9]["big"] == 2**70
    assert work[8]["m"] == 16 and work[8]["t"] == [8, "x"]


TRACKED = '''
def touch(event, meta):
    if event["id"] % 2 == 0:
        event["m"] = 1
    return event

def keep(event, meta):
    if event.get("m") == 1 and event["id"] % 4 == 0:
        return None
    return event
'''


def test_a_loop_stage_that_changes_some_records_hands_the_others_over_as_their_bytes(tmp_path: Any, write: Any) -> None:
    """A def stage placed on the loop notices writes: the records it left alone cross (and leave) as
    the bytes they came in, the written ones as encoded, and the worker stage after it sees both."""
    lines = [f'{{"id": {i},  "pad" : "{"y" * (i % 3)}"}}' for i in range(60)]
    pipeline = """
    - {op: python, fn: "stages:touch", placement: loop}
    - {op: python, fn: "stages:keep"}"""
    got = {workers: _run(tmp_path, write, f"w{workers}", workers, lines, TRACKED, pipeline) for workers in (0, 2)}
    assert sorted(got[2]) == sorted(got[0])
    by_id = {orjson.loads(x)["id"]: x for x in got[2]}
    assert sorted(by_id) == [i for i in range(60) if i % 4 != 0]
    for i, line in by_id.items():
        if i % 2:
            assert line == lines[i], "a record no stage wrote leaves as its bytes"
        else:
            assert orjson.loads(line) == {"id": i, "pad": "y" * (i % 3), "m": 1}
