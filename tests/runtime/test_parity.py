"""Parity of the loop and the workers: a random chain of built-in operators and python stages (ones
that raise, drop, fan out, emit to a port, replace or modify events) gives the same events on every
port (values, metas, ``err`` metas, order), the same per-component counts and the same acks,
whether it runs on the event loop (``ChainRunner``) or as a worker segment (``PooledChainRunner``
with ``SegmentProgram`` executing each job as a worker does, fused or batch-wise, in this process).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace.contract.metas import COLUMN, CONST, MetaColumns
from headrace.runtime.onramp import OnrampRunner
from tests.runtime.inprocess import InProcessPool, Rig

STAGES = '''
import headrace


def keep(event, meta):
    return event


def bump(event, meta):
    event["n"] = event.get("n", 0) + 1
    return event


def tag(event, meta):
    meta["seen"] = meta.get("seen", 0) + 1
    return event


class Drop:
    def __init__(self, k):
        self.k = k

    def process(self, event, meta):
        return None if event["id"] % self.k == 0 else event


class Raise:
    def __init__(self, k):
        self.k = k

    def process(self, event, meta):
        if event["id"] % self.k == 0:
            raise ValueError(f"no {event['id']}")
        return event


class FanOut:
    def __init__(self, k):
        self.k = k

    def process(self, event, meta):
        if event["id"] % self.k == 0:
            return [event, {"id": event["id"], "copy": True}]
        return event


class Side:
    def __init__(self, k):
        self.k = k

    def process(self, event, meta):
        if event["id"] % self.k == 0:
            headrace.emit("side", {"id": event["id"], "side": True}, {"why": "k"})
        return event


class Empty:
    def __init__(self, k):
        self.k = k

    def process(self, event, meta):
        return [] if event["id"] % self.k == 0 else event


class Unencodable:
    def __init__(self, k):
        self.k = k

    def process(self, event, meta):
        return {"id": event["id"], "bad": {1, 2}} if event["id"] % self.k == 0 else event


class Replace:
    def __init__(self, k):
        self.k = k

    def process(self, event, meta):
        return {"id": event["id"], "replaced": True} if event["id"] % self.k == 0 else event
'''

MODULE = "paritystages"
PYTHON = {
    "keep": '{op: python, fn: "paritystages:keep", readonly: true}',
    "bump": '{op: python, fn: "paritystages:bump"}',
    "tag": '{op: python, fn: "paritystages:tag"}',
    "drop": '{op: python, fn: "paritystages:Drop", args: {k: K}}',
    "raise": '{op: python, fn: "paritystages:Raise", args: {k: K}}',
    "fanout": '{op: python, fn: "paritystages:FanOut", args: {k: K}}',
    "side": '{op: python, fn: "paritystages:Side", args: {k: K}, ports: [side]}',
    "replace": '{op: python, fn: "paritystages:Replace", args: {k: K}}',
    "empty": '{op: python, fn: "paritystages:Empty", args: {k: K}}',
    "unencodable": '{op: python, fn: "paritystages:Unencodable", args: {k: K}}',
}
BUILTIN = {
    "filter": "{op: filter, where: \"event['id'] % K != 0\"}",
    "filter_err": "{op: filter, where: \"event['id'] // (event['id'] % K) >= 0\"}",  # ZeroDivisionError where id % K == 0
    "set": "{op: set, set: {x: \"event['id'] * K\", meta.m: \"'v'\"}}",
    "set_err": "{op: set, set: {x: \"event['id'] // (event['id'] % K)\"}}",
    "route": "{op: route, routes: {a: \"event['id'] % K == 0\"}}",
}
STAGE_KINDS = sorted(PYTHON) + sorted(BUILTIN)
GOOD = [b'{"id": %d, "text": "r\\u00e9cord", "v": %d.5}' % (i, i) for i in range(40)]
ODD = [b'{"id": 7, "broken"', b'"a string"', b"[1, 2]", b'{"no_id": true}']  # a decode failure, and events stages fail on

stage = st.tuples(st.sampled_from(STAGE_KINDS), st.integers(2, 5)).map(lambda kk: (PYTHON | BUILTIN)[kk[0]].replace("K", str(kk[1])))
# a pipeline may not end with route (its out port carries nothing): a stage after it then gets nothing
chains = st.lists(stage, min_size=1, max_size=4).map(lambda c: [*c, PYTHON["keep"]] if "op: route" in c[-1] else c)
records = st.lists(st.sampled_from(range(len(GOOD) + len(ODD))), min_size=1, max_size=30).map(lambda ix: [(GOOD + ODD)[i] for i in ix])
metas = st.sampled_from([None, "per-record", "columns"])
splits = st.integers(1, 3)


def _metas(start: int, n: int, form: str | None) -> Any:
    """Metas of records ``start..start+n``: none, one dict each, or a source's columns (stages that never
    name their meta leave them as sent, built only for events that leave by err, emit or fan-out)."""
    if form == "columns":
        return MetaColumns(n, [("src", CONST, "in"), ("p", COLUMN, [(start + i) % 3 for i in range(n)]),
                               ("off", COLUMN, range(start, start + n))])  # fmt: skip
    return [{"p": (start + i) % 3} for i in range(n)] if form else None


def _hand_over(payloads: list[bytes], with_metas: str | None, parts: int) -> Any:
    async def feed(onramp: OnrampRunner) -> None:
        step = -(-len(payloads) // parts)
        for k, start in enumerate(range(0, len(payloads), step)):
            part = payloads[start : start + step]
            await onramp.records(part, _metas(start, len(part), with_metas), ack=k)

    return feed


def _observed(rig: Rig) -> dict[str, Any]:
    counts = {k: v for k, v in rig.counts().items() if "_bytes_" not in k}  # bytes differ by design: values vs encodings
    return {"ports": rig.outputs(), "counts": counts, "acked": sorted(rig.source.acked), "failed": sorted(rig.source.failed)}


def run_both(tmp_path: Path, chain: list[str], payloads: list[bytes], with_metas: str | None, parts: int) -> tuple[dict[str, Any], dict[str, Any]]:
    pipeline = "[" + ", ".join(chain) + "]"
    on_loop = Rig(tmp_path, pipeline)
    on_workers = Rig(tmp_path, pipeline, pool=InProcessPool(size=2))
    assert on_loop.chain.nodes == on_workers.chain.nodes == [c.id for c in on_loop.graph.of_kind("node")], "one chain of them all"
    asyncio.run(on_loop.run(_hand_over(payloads, with_metas, parts)))
    asyncio.run(on_workers.run(_hand_over(payloads, with_metas, parts)))
    return _observed(on_loop), _observed(on_workers)


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("parity")
    (folder / f"{MODULE}.py").write_text(STAGES)
    return folder


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chain=chains, payloads=records, with_metas=metas, parts=splits)
def test_the_loop_and_the_workers_give_the_same(stage_dir: Path, chain: list[str], payloads: list[bytes], with_metas: Any, parts: int) -> None:
    loop, workers = run_both(stage_dir, chain, payloads, with_metas, parts)
    assert workers == loop


def test_every_kind_of_stage_runs_in_one_chain(stage_dir: Path) -> None:
    """The examples above cover each kind of stage, each path (fused python chains, batch-wise ones) and each outcome."""
    chain = [PYTHON["keep"], PYTHON["tag"], *(s.replace("K", "3") for s in (PYTHON["side"], PYTHON["fanout"], PYTHON["raise"]))]
    loop, workers = run_both(stage_dir, chain, GOOD + ODD, "columns", 2)
    assert workers == loop
    ports = loop["ports"]
    assert {"src/err", "main.Raise/err", "main.Side/side", "out"} <= set(ports)
    assert ports["src/err"][0][1]["error"]["type"] == "DecodeError"


@pytest.mark.parametrize("form", ["per-record", "columns"])
def test_a_chain_that_never_names_meta_gives_the_same_metas(stage_dir: Path, form: str) -> None:
    """No stage names its meta (a blind chain): workers build no meta per record, yet events leaving by
    out, err, an emitted port or a fan-out carry the same metas as on the loop."""
    chain = [s.replace("K", k) for s, k in ((PYTHON["side"], "3"), (PYTHON["fanout"], "4"), (PYTHON["raise"], "5"), (PYTHON["drop"], "7"))]
    loop, workers = run_both(stage_dir, chain, GOOD + ODD, form, 3)
    assert workers == loop
    ports = loop["ports"]
    assert {"main.Raise/err", "main.Side/side", "out"} <= set(ports)
    out_metas = [m for _, m in ports["out"]]
    assert out_metas and all("p" in m and ("off" in m) == (form == "columns") for m in out_metas)


def test_an_emit_after_a_fan_out_leaves_from_the_emitting_stage(stage_dir: Path) -> None:
    """A fused chain runs what follows a fan-out batch-wise: an emit there names the emitting stage."""
    chain = [PYTHON["fanout"].replace("K", "2"), PYTHON["side"].replace("K", "2")]
    loop, workers = run_both(stage_dir, chain, [GOOD[0]], None, 1)
    assert loop["ports"]["main.Side/side"] == [({"id": 0, "side": True}, {"why": "k"})] * 2
    assert workers == loop


def test_an_event_the_codec_cannot_write_takes_the_same_err_port_on_both(stage_dir: Path) -> None:
    """A worker hands back, as a value, what the job's codec cannot hold: the offramp refuses it, as on the loop."""
    chain = [PYTHON["unencodable"].replace("K", "2")]
    loop, workers = run_both(stage_dir, chain, GOOD[:2], None, 1)
    assert [m["error"]["stage"] for _, m in loop["ports"]["out/err"]] == ["out"]
    assert workers == loop


def test_an_unencodable_event_a_later_stage_fails_keeps_its_value_and_reason(stage_dir: Path) -> None:
    """On the err port too: a worker hands the value back (was: its err meta replaced by the codec's
    "Type is not JSON serializable" and its value by its repr)."""
    chain = [PYTHON["unencodable"].replace("K", "2"), PYTHON["raise"].replace("K", "2")]
    loop, workers = run_both(stage_dir, chain, [GOOD[0]], None, 1)
    ((value, meta),) = loop["ports"]["main.Raise/err"]
    assert value == {"id": 0, "bad": {1, 2}} and meta["error"]["message"] == "no 0"
    assert workers == loop


def test_events_the_codec_cannot_write_keep_their_place_among_the_others(stage_dir: Path) -> None:
    """Events handed back as values leave in order with the encoded ones of the same port (was: after them)."""
    chain = [PYTHON["unencodable"].replace("K", "2"), "{op: route, routes: {a: \"event['id'] % 3 == 0\"}}", PYTHON["keep"]]
    loop, workers = run_both(stage_dir, chain, [GOOD[0], GOOD[0], GOOD[2], GOOD[1]], None, 1)
    assert [v["id"] for v, _ in loop["ports"]["main.route/default"]] == [2, 1]
    assert workers == loop
