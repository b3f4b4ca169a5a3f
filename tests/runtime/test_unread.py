"""A stage on the loop that never looks at its event (proven from its code, ``Proof.untouched``)
needs no decoded record: its chain decodes nothing and records leave as their own bytes. One
proven to only read keeps the bytes too (no encode), ``async def`` as well as ``def``. A value
such a stage makes (returned or emitted) still leaves whole, beside records never decoded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from headrace.contract.context import PluginContext
from headrace.contract.stage import Ev
from headrace.plugins.operators.python import UNREAD, PythonOperator
from tests.support.daemon import Daemon, free_port, headrace, scrape

STAGES = '''
import asyncio
import headrace

state = {"n": 0}

async def wait(event, meta):
    await asyncio.sleep(0)
    return event

async def keep_some(event, meta):
    await asyncio.sleep(0)
    return event if event.get("keep", True) else None

async def makes(event, meta):
    await asyncio.sleep(0)
    state["n"] += 1
    if state["n"] % 3 == 0:
        return {"made": state["n"]}
    if state["n"] % 5 == 0:
        headrace.emit("side", {"emitted": state["n"]})
    return event

async def tag(event, meta):
    event["tag"] = True
    return event

def sync_wait(event, meta):
    meta["seen"] = True
    return event

def sync_pass(event, meta):
    return event
'''

# spacing and key order a re-encode would not keep
LINES = ['{"id": ' + str(i) + ',  "keep" : ' + ("false" if i % 4 == 3 else "true") + ', "b": [1, 2.50]}' for i in range(40)]


SIDE_OFFRAMP = "  side: {type: file, codec: json, config: {path: side.ndjson}}\n"


def _run(tmp_path: Path, write: Any, name: str, workers: int, pipeline: str, lines: list[str], side: bool = False,
         then: str = "") -> tuple[list[str], list[str]]:  # fmt: skip
    """``lines`` through the pipeline ``main`` (then, given ``then``, a second pipeline of that stage);
    what leaves by ``out`` and by ``main``'s port ``side``."""
    folder = tmp_path / name
    folder.mkdir()
    write(f"{name}/in.ndjson", "".join(x + "\n" for x in lines))
    write(f"{name}/stages.py", STAGES)
    pipelines = f"  main:{pipeline}\n" + (f"  then: [{then}]\n" if then else "")
    offramps = "  out: {type: file, codec: json, config: {path: out.ndjson}}\n" + (SIDE_OFFRAMP if side else "")
    links = "{src: [main], " + ("main: [then], then: [out]" if then else "main: [out]") + (', "main/side": [side]' if side else "") + "}"
    cfg = write(f"{name}/c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
pipelines:
{pipelines}offramps:
{offramps}links: {links}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    side_file = folder / "side.ndjson"
    return (folder / "out.ndjson").read_text().splitlines(), side_file.read_text().splitlines() if side_file.exists() else []


@pytest.mark.parametrize("workers", [0, 2])
def test_records_pass_a_stage_that_never_looks_at_them_as_their_own_bytes(tmp_path: Path, write: Any, workers: int) -> None:
    # an async stage on the loop alone, and before a worker segment; a def stage placed on the loop
    pipeline = """
    - {op: python, fn: "stages:wait", concurrency: 8}
    - {op: python, fn: "stages:sync_wait", placement: loop}"""
    out, _ = _run(tmp_path, write, "untouched", workers, pipeline, LINES)
    assert out == LINES, "not decoded, not encoded again: the bytes as they came, in order"


@pytest.mark.parametrize("workers", [0, 2])
def test_an_async_stage_that_only_reads_keeps_the_bytes_of_what_it_returns(tmp_path: Path, write: Any, workers: int) -> None:
    pipeline = """
    - {op: python, fn: "stages:keep_some"}"""
    out, _ = _run(tmp_path, write, "reads", workers, pipeline, LINES)
    assert out == [x for i, x in enumerate(LINES) if i % 4 != 3]


def test_values_such_a_stage_makes_leave_whole_beside_records_never_decoded(tmp_path: Path, write: Any) -> None:
    pipeline = """
    - {op: python, fn: "stages:makes", concurrency: 1, ports: [side]}"""
    # then a pipeline of its own whose stage reads and writes values: it must get every record's
    then = '{op: python, fn: "stages:tag"}'
    out, side = _run(tmp_path, write, "makes", 0, pipeline, LINES, side=True, then=then)
    expect = []
    for n, line in enumerate(LINES, start=1):
        expect.append({"made": n, "tag": True} if n % 3 == 0 else {**orjson.loads(line), "tag": True})
    assert [orjson.loads(x) for x in out] == expect, "made values and the records beside them, none lost, in order"
    assert [orjson.loads(x) for x in side] == [{"emitted": n} for n in range(1, 41) if n % 5 == 0 and n % 3 != 0]


def _op(tmp_path: Path, fn: str, **cfg: Any) -> PythonOperator:
    (tmp_path / "unreadstages.py").write_text(STAGES)
    op = PythonOperator("s", PythonOperator.Config.model_validate({"fn": f"unreadstages:{fn}", **cfg}), PluginContext("s", tmp_path))
    op.setup()
    return op


def test_the_stage_is_given_a_stand_in_only_for_records_not_decoded(tmp_path: Path) -> None:
    op = _op(tmp_path, "wait")
    assert op.untouched and not op.needs_values
    evs = [Ev(None, {}, i, b'{"i": %d}' % i, 0) for i in range(5)]
    op.undecoded = True
    out = asyncio.run(op.process_async(evs, lambda *a: None))
    assert [(ev.value, ev.raw) for ev in out] == [(None, b'{"i": %d}' % i) for i in range(5)], "kept as bytes, UNREAD never leaks"
    op.undecoded = False  # decoded records: the stage gets them (proven to only read: their bytes kept)
    evs = [Ev({"i": i}, {}, i, b'{"i": %d}' % i, 0) for i in range(5)]
    out = asyncio.run(op.process_async(evs, lambda *a: None))
    assert [(ev.value, ev.raw) for ev in out] == [({"i": i}, b'{"i": %d}' % i) for i in range(5)]
    assert all(ev.value is not UNREAD for ev in out)


def test_lazy_false_or_track_writes_false_decode_as_before(tmp_path: Path) -> None:
    assert not _op(tmp_path, "wait", lazy=False).untouched
    op = _op(tmp_path, "keep_some", track_writes=False)
    assert not op.proven_reads_only and op.needs_values
    out = asyncio.run(op.process_async([Ev({"keep": True}, {}, 0, b'{"keep": true}', 0)], lambda *a: None))
    assert out[0].raw is None, "no proof asked: encoded again"


def _sent(port: int) -> float:
    try:
        return scrape(port).get('headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}', 0.0)
    except OSError:  # not listening yet
        return 0.0


def test_a_tap_inside_a_chain_that_decodes_nothing_shows_the_records(tmp_path: Path, write: Any) -> None:
    write("stages.py", STAGES)
    write("src.ndjson", "".join(x + "\n" for x in LINES))
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: blaster, config: {{source: src.ndjson, batch: 20}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:sync_wait", placement: loop}}, {{op: python, fn: "stages:sync_pass", placement: loop}}]}}
offramps: {{out: {{type: blackhole}}}}
links: {{src: [main], main: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _sent(port) > 0, timeout=30)
        res = headrace("tap", f"127.0.0.1:{port}", "main.sync_wait", "--limit", "5", "--with-meta", timeout=30)  # inside the loop chain
        assert res.returncode == 0, res.stderr.decode()
        got = [orjson.loads(x) for x in res.stdout.decode().splitlines()]
        assert len(got) == 5 and all(e["event"] == orjson.loads(LINES[e["event"]["id"]]) and e["meta"] == {"seen": True} for e in got), got
    finally:
        d.stop()


def test_code_the_proof_cannot_read_is_not_proven_and_the_stage_still_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from headrace.plugins.operators import python

    def broken(fn: Any) -> Any:
        raise IndexError("an instruction the checker did not expect")

    monkeypatch.setattr(python, "prove", broken)
    op = _op(tmp_path, "wait")
    assert not op.untouched and not op.proven_reads_only and op.needs_values
    out = asyncio.run(op.process_async([Ev({"i": 1}, {}, 0, b'{"i": 1}', 0)], lambda *a: None))
    assert [ev.value for ev in out] == [{"i": 1}] and out[0].raw is None, "decoded, and encoded again as before"
