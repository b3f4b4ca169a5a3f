"""Tracked events: a stage run on them gives what it gives on plain dicts, and a record it did not
write leaves as its bytes (``headrace.contract.tracked``)."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace.contract import tracked
from headrace.contract.tracked import TrackedDict, TrackedList, track

scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
documents = st.dictionaries(
    st.text(max_size=6),
    st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4), max_leaves=12),
    max_size=6,
)
OPS = ["read", "get", "set", "del", "setdefault", "update", "pop", "append", "extend", "insert", "sort", "reverse", "listset",
       "alias_dict", "alias_splat", "alias_update", "alias_copy", "alias_items", "alias_values", "alias_slice", "alias_iter",
       "deepcopy", "pickle", "json", "return_nested", "return_new", "return_list", "clear", "iadd", "or"]  # fmt: skip
ops = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 50), st.integers(0, 50), scalars), max_size=6)


def _paths(root: Any) -> list[list[Any]]:
    """The path of every container of ``root``, found through the storage (wrapping nothing)."""
    out: list[list[Any]] = []
    todo: list[tuple[list[Any], Any]] = [([], root)]
    while todo:
        path, node = todo.pop(0)
        out.append(path)
        items = list(dict.items(node)) if isinstance(node, dict) else list(enumerate(list.__iter__(node)))
        todo.extend(([*path, k], child) for k, child in items if isinstance(child, (dict, list)))
    return out


def _reach(root: Any, path: list[Any]) -> Any:
    """The container at ``path``, reached the way a stage would (``[]`` at each level)."""
    for k in path:
        root = root[k]
    return root


def _nested(node: Any) -> Any:
    """The first nested container of ``node`` as plain iteration hands it out, or None."""
    for v in node.values() if isinstance(node, dict) else node:
        if isinstance(v, (dict, list)):
            return v
    return None


def _poke(c: Any, v: Any) -> None:
    if isinstance(c, dict):
        c["poked"] = v
    elif isinstance(c, list):
        c.append(v)


def stage(event: Any, steps: list[tuple[str, int, int, Any]]) -> Any:
    """A stage made of ``steps``: the same code runs on plain and on tracked values."""
    result = event
    for op, a, b, v in steps:
        paths = _paths(event)
        node = _reach(event, paths[a % len(paths)])
        is_dict = isinstance(node, dict)
        keys = list(dict.keys(node)) if is_dict else list(range(list.__len__(node)))
        key = keys[b % len(keys)] if keys else None
        if op == "read" and key is not None:
            _ = node[key]
        elif op == "get" and is_dict:
            _ = node.get(key, None), node.get("absent", 1)
        elif op == "set" and is_dict:
            node[f"k{b}"] = v
        elif op == "del" and key is not None:
            del node[key]
        elif op == "setdefault" and is_dict:
            got = node.setdefault(key if b % 2 and key is not None else f"s{b}", [v])
            _poke(got, v)
        elif op == "update" and is_dict:
            node.update({f"u{b}": v})
        elif op == "pop" and is_dict:
            node.pop(key if b % 2 else "absent", None)
        elif op == "pop" and keys:
            node.pop()
        elif op in ("append", "extend", "insert", "iadd") and not is_dict:
            if op == "append":
                node.append(v)
            elif op == "extend":
                node.extend([v, v])
            elif op == "insert":
                node.insert(b, v)
            else:
                node += [v]
        elif op == "sort" and not is_dict:
            node.sort(key=repr)
        elif op == "reverse" and not is_dict:
            node.reverse()
        elif op == "listset" and not is_dict and keys:
            node[b % len(keys)] = v
        elif op == "alias_dict" and is_dict:
            _poke(_nested(dict(node)), v)
        elif op == "alias_splat" and is_dict:
            _poke(_nested({**node}), v)
        elif op == "alias_update" and is_dict:
            d: dict[str, Any] = {}
            d.update(node)
            _poke(_nested(d), v)
        elif op == "alias_copy":
            _poke(_nested(copy.copy(node)), v)
        elif op == "alias_items" and is_dict:
            for _k, x in node.items():
                if isinstance(x, (dict, list)):
                    _poke(x, v)
                    break
        elif op == "alias_values":
            _poke(_nested(node), v)
        elif op == "alias_slice" and not is_dict:
            _poke(_nested(node[:]), v)
        elif op == "alias_iter" and not is_dict:
            _poke(_nested(list(node)), v)
        elif op == "deepcopy":
            _poke(copy.deepcopy(node), v)  # a deep copy is the stage's own: the event does not change
        elif op == "pickle":
            _poke(pickle.loads(pickle.dumps(node)), v)
        elif op == "json":
            assert json.loads(json.dumps(node)) == orjson.loads(orjson.dumps(node))
        elif op == "clear" and b % 5 == 0:
            node.clear()
        elif op == "or" and is_dict:
            _poke(_nested(node | {}), v)
        elif op == "return_nested":
            result = node
        elif op == "return_new":
            result = {"new": v, "old": dict(event) if isinstance(event, dict) else list(event)}
        elif op == "return_list":
            result = [node]
    return result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, ops)
def test_a_stage_on_tracked_values_gives_what_it_gives_on_dicts(doc: dict[str, Any], steps: list[tuple[str, int, int, Any]]) -> None:
    raw = orjson.dumps(doc)
    want = stage(orjson.loads(raw), steps)

    value = track(orjson.loads(raw))
    tracked.clean()
    got = stage(value, steps)
    unchanged = got is value and not tracked.written()
    out = raw if unchanged else orjson.dumps(got)
    assert orjson.loads(out) == orjson.loads(orjson.dumps(want))
    if unchanged:  # nothing was written: the plain run left the document as it was
        assert want == doc


def test_isinstance_equality_order_and_dumps_are_those_of_a_dict() -> None:
    doc = {"b": 1, "a": [1, {"x": 2}], "c": {"d": None}}
    ev = track(orjson.loads(orjson.dumps(doc)))
    tracked.clean()
    assert isinstance(ev, dict) and isinstance(ev["a"], list) and isinstance(ev["c"], dict)
    assert ev == doc and doc == ev and list(ev) == ["b", "a", "c"]
    assert orjson.dumps(ev) == orjson.dumps(doc) and json.dumps(ev) == json.dumps(doc)
    assert type(copy.deepcopy(ev)) is dict and type(pickle.loads(pickle.dumps(ev))["a"]) is list
    assert type(ev.copy()) is dict and type(dict(ev)) is dict
    assert ev.get("zz", 5) == 5 and ev.setdefault("b", 9) == 1
    with pytest.raises(AttributeError, match="'list' object has no attribute 'get'"):
        ev["a"].get  # noqa: B018 - the message names the plain type
    assert not tracked.written()


def test_writes_at_any_depth_are_noticed_and_reads_are_not() -> None:
    def fresh() -> Any:
        ev = track({"a": [1, {"x": [2]}], "b": {"c": {"d": 1}}})
        tracked.clean()
        return ev

    ev = fresh()
    _ = ev["a"][1]["x"][0], ev.get("b")["c"]["d"], list(ev.items()), dict(ev), {**ev}, copy.copy(ev), ev | {}
    assert not tracked.written()
    for write in (lambda e: e["a"][1]["x"].append(3), lambda e: e["b"]["c"].pop("d"), lambda e: e["a"].__setitem__(0, 5),
                  lambda e: dict(e)["b"]["c"].update(z=1), lambda e: next(iter(e.values())).reverse(), lambda e: e.setdefault("n", 1),
                  lambda e: e["a"][:][1].clear(), lambda e: [x for x in e["a"]][1].__setitem__("y", 1), lambda e: e.__delitem__("a")):  # fmt: skip
        ev = fresh()
        write(ev)
        assert tracked.written()


def test_nested_containers_keep_their_identity() -> None:
    ev = track({"a": {"b": [1]}})
    tracked.clean()
    first = ev["a"]
    assert ev["a"] is first and ev.get("a") is first and first["b"] is ev["a"]["b"]
    assert type(first) is TrackedDict and type(first["b"]) is TrackedList


TRACK_STAGES = '''
def reads(event, meta):
    meta["first"] = event["x"][0]  # reads at depth, writes only meta
    return event

def writes_odd(event, meta):
    if event["id"] % 2:
        event["x"].append(3)  # a nested write: this record is encoded again
    return event

def sneaky(event, meta):
    event["x"].append(3)
    return event
'''


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stage_without_hints_sends_unwritten_records_as_their_bytes(tmp_path: Any, write: Any, workers: int) -> None:
    """Records a stage only read leave byte for byte (odd spacing kept, no hint); written ones carry the write."""
    from tests.support.daemon import Daemon

    write("stages.py", TRACK_STAGES)
    records = [f'{{"id": {i},   "x" : [1, 2],"z":{{"k" : "v"}}}}' for i in range(400)]
    write("in.ndjson", "".join(r + "\n" for r in records))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
pipelines:
  main: [{{op: python, fn: "stages:reads"}}, {{op: python, fn: "stages:writes_odd"}}]
  strict: [{{op: python, fn: "stages:sneaky", readonly: true}}]
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main, strict], main: [out], main/err: [dlq], strict: [out], strict/err: [dlq]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    out = (tmp_path / "out.ndjson").read_text().splitlines()
    assert len(out) == 400, d.stderr()
    for line in out:
        i = orjson.loads(line)["id"]
        if i % 2:
            assert orjson.loads(line) == {"id": i, "x": [1, 2, 3], "z": {"k": "v"}}
        else:
            assert line == records[i], "a record nobody wrote leaves as its original bytes"
    dlq = [orjson.loads(x) for x in (tmp_path / "dlq.ndjson").read_text().splitlines()]
    # a readonly stage's write fails its record: noticed on tracked values, refused by a worker's read-only view
    assert len(dlq) == 400 and {e["meta"]["error"]["type"] for e in dlq} == {"ReadonlyViolation" if workers == 0 else "AttributeError"}
    assert sorted(e["event"]["id"] for e in dlq) == list(range(400))


def test_tracking_pauses_while_nearly_every_record_is_written_and_probes_again() -> None:
    adapt = tracked.Adaptive()
    assert adapt.track_next()
    adapt.saw(100, 10)  # 10 % kept their bytes: worth tracking
    assert adapt.track_next()
    adapt.saw(100, 2)  # 2 %: not worth a copy per record
    skipped = 0
    while not adapt.track_next():
        skipped += 1
    assert skipped == tracked.Adaptive.PROBE
    adapt.saw(8, 0)  # too few records to judge
    assert adapt.track_next()
