"""The bytecode proof that a stage only reads its event (``readproof``): what it accepts and refuses,
and that a proven stage on workers behaves as on dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from headrace.plugins.operators.readproof import prove
from tests.support.daemon import Daemon


def reads_everything_allowed(event, meta):  # type: ignore[no-untyped-def]
    if event["x"]["y"] is None and len(event) > 2:
        meta["k"] = event["z"]
    for t in event.get("tags", ()):
        if t == "a":
            meta["hit"] = True
    if event.get("kind") in ("a", "b") and "q" in event:
        meta["class"], meta["rate"] = "ab", 10
    return event if event.get("keep", True) else None


def returns_a_new_value(event, meta):  # type: ignore[no-untyped-def]
    return {"a": 1} if "a" in event else None


PROVEN = [reads_everything_allowed, returns_a_new_value]

REFUSED_SOURCES = {
    "returns a part": "return event['x']",
    "writes a field": "event['x'] = 1\n    return event",
    "writes through a read": "event.get('tags').append(1)\n    return event",
    "writes through a local": "x = event.get('a')\n    x.append(1)\n    return event",
    "hands it to a call": "print(event)\n    return event",
    "arithmetic on a read": "y = event['n'] + 1\n    return event",
    "a try block": "try:\n        event['x']\n    except KeyError:\n        pass\n    return event",
    "isinstance": "return isinstance(event, dict) and event",
    "puts a read into a list": "out = []\n    out.append(event['a'])\n    return event",
    "a set of constants (hashing)": "return event if event.get('a') in {'x', 'y'} else None",
    "compares two reads": "x = event.get('a') == event.get('b')\n    return event",
    "an f-string": "meta['x'] = f\"{event['a']}\"\n    return event",
    "an attribute": "return event.items and event",
    "keys()": "return list(event.keys()) and event",
    "reassigns the event": "event = {}\n    return event",
    "reaches its frame": "locals()\n    return event",
    "a read as a key": "return {'a': 1}.get(event['k']) and event",
    "a read stored into meta, then written there": "meta['t'] = event['tags']\n    meta['t'].append(1)\n    return event",
    "a read put into meta by a method, then written": "meta.setdefault('t', event['tags'])\n    meta['t'].append(1)\n    return event",
    "a read stored into meta, then handed to a call": "meta['t'] = event['tags']\n    print(meta.get('t'))\n    return event",
    "meta holding a read value handed to a call": "meta['t'] = event['tags']\n    print(meta)\n    return event",
}


@pytest.mark.parametrize("fn", PROVEN, ids=lambda f: f.__name__)
def test_reading_code_is_proven(fn: Any) -> None:
    assert prove(fn).reads_only


@pytest.mark.parametrize("what", sorted(REFUSED_SOURCES))
def test_code_that_may_write_or_let_the_event_escape_is_refused(what: str) -> None:
    scope: dict[str, Any] = {}
    exec(f"def stage(event, meta):\n    {REFUSED_SOURCES[what]}\n", scope)
    assert not prove(scope["stage"]).reads_only, what


def test_methods_closures_and_generators() -> None:
    class Stage:
        def process(self, event, meta):  # type: ignore[no-untyped-def]
            return event if event.get("a") == 1 else None

    assert prove(Stage().process).reads_only
    captured = []

    def closes_over(event, meta):  # type: ignore[no-untyped-def]
        captured.append(1)
        return event

    def makes_closure(event, meta):  # type: ignore[no-untyped-def]
        return (lambda: event)()

    assert not prove(makes_closure).reads_only
    assert not prove(closes_over).reads_only  # free variables: not followed, refused
    assert not prove(len).reads_only


STAGES = '''
def first(event, meta):
    meta["tags"] = event.get("tags")  # a view stored into meta: the next stage sees a list
    meta["n"] = len(event)
    return event

def second(event, meta):
    meta["is_list"] = isinstance(meta["tags"], list)
    return event
'''


def test_a_proven_chain_on_workers_sends_bytes_and_hands_meta_on_as_plain_values(tmp_path: Path, write: Any) -> None:
    write("stages.py", STAGES)
    records = [f'{{"id": {i},  "tags" : ["a", "b"]}}' for i in range(300)]
    write("in.ndjson", "".join(r + "\n" for r in records))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 2, metrics: {listen: null}}
onramps: {src: {type: file, codec: json, config: {path: in.ndjson}}}
pipelines: {main: [{op: python, fn: "stages:first"}, {op: python, fn: "stages:second"}]}
offramps:
  out: {type: file, codec: json, config: {path: out.ndjson}}
  metas: {type: file, codec: json, with_meta: true, config: {path: metas.ndjson}}
links: {src: [main], main: [out, metas]}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    assert (tmp_path / "out.ndjson").read_text().splitlines() == records, "unwritten records leave as their bytes"
    metas = [json.loads(x)["meta"] for x in (tmp_path / "metas.ndjson").read_text().splitlines()]
    assert len(metas) == 300 and all(m["tags"] == ["a", "b"] and m["is_list"] is True and m["n"] == 2 for m in metas)


ASYNC_PROVEN = '''
import asyncio

async def waits(event, meta):
    await asyncio.sleep(0)
    meta["n"] = 1
    return event

async def reads(event, meta):
    x = await asyncio.sleep(0, "r")
    meta["x"] = x
    return event if event.get("a") == "r" else None
'''

ASYNC_REFUSED = {
    "awaits a part of it": "await event['a']\n    return event",
    "hands it to a coroutine": "await asyncio.sleep(0, event)\n    return event",
    "writes after an await": "await asyncio.sleep(0)\n    event['x'] = 1\n    return event",
    "a try block": "try:\n        await asyncio.sleep(0)\n    except ValueError:\n        pass\n    return event",
    "async for": "async for x in event:\n        pass\n    return event",
}


def test_async_stages_are_proven_like_def_stages() -> None:
    scope: dict[str, Any] = {}
    exec(ASYNC_PROVEN, scope)
    assert prove(scope["waits"]).reads_only and prove(scope["reads"]).reads_only
    for what, body in ASYNC_REFUSED.items():
        exec(f"import asyncio\nasync def stage(event, meta):\n    {body}\n", scope)
        assert not prove(scope["stage"]).reads_only, what

    async def agen(event, meta):  # type: ignore[no-untyped-def]
        yield event

    assert not prove(agen).reads_only


UNTOUCHED = {  # never looks at the event: only returns it (or not)
    "returns it": ("return event", True),
    "meta only": ("meta['k'] = meta.get('j', 1)\n    return event", True),
    "chosen by meta": ("return event if meta.get('keep') else None", True),
    "a new value": ("return {'a': 1}", True),
    "tests it": ("return event if event else None", False),
    "reads a field": ("meta['a'] = event.get('a')\n    return event", False),
    "keeps it in a local": ("e = event\n    return e", False),
    "len": ("meta['n'] = len(event)\n    return event", False),
}


@pytest.mark.parametrize("what", sorted(UNTOUCHED))
def test_a_stage_that_never_looks_at_its_event_is_told_apart(what: str) -> None:
    body, untouched = UNTOUCHED[what]
    scope: dict[str, Any] = {}
    exec(f"def stage(event, meta):\n    {body}\n", scope)
    proof = prove(scope["stage"])
    assert proof.untouched is untouched, what
    assert proof.reads_only or not untouched, "untouched implies reads only"
