"""Appender stages (they set top-level fields with constant names, and otherwise only read):
on workers they get a view of the record in a ``Patch``, and the record leaves as its bytes
with the new fields spliced in (``headrace.contract.patch``). Whatever they read, and what
leaves, must be what the same stage gives on a plain dict."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import orjson
import pytest
import simdjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace.contract.patch import JobNames, Patch, PlainPatch, materialize, names_may_be_escaped, splice
from headrace.plugins.codecs.json import SimdjsonViews, loads_exact
from headrace.plugins.operators.readproof import prove

scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3), max_leaves=8)
names = st.sampled_from(["a", "b", "seen", "é", 'q"uote', "back\\slash", "", "\n"]) | st.text(max_size=4)
documents = st.dictionaries(names, values, max_size=6)
# how the record was written: compact, spaced, every non-ASCII character escaped, trailing blanks
spellings = st.sampled_from(["orjson", "spaced", "ascii", "trailing"])
OPS = ["set", "set_existing", "get", "getitem", "in", "len", "iter", "bool"]
steps = st.lists(st.tuples(st.sampled_from(OPS), names, values, st.integers(0, 20)), max_size=8)


def spell(doc: dict[str, Any], how: str) -> bytes:
    if how == "orjson":
        return orjson.dumps(doc)
    if how == "spaced":
        return json.dumps(doc, ensure_ascii=False, separators=(" , ", " : ")).encode()
    if how == "ascii":
        return json.dumps(doc, ensure_ascii=True).encode()
    return orjson.dumps(doc) + b" \t "


def run(event: Any, script: list[tuple[str, str, Any, int]], plain: Any) -> list[Any]:
    """The script's reads (views made plain), and its writes done on ``event``."""
    seen: list[Any] = []
    for op, name, value, n in script:
        keys = list(event)
        if op == "set":
            event[name] = value
        elif op == "set_existing" and keys:
            event[keys[n % len(keys)]] = value
        elif op == "get":
            seen.append(plain(event.get(name, "missing")))
        elif op == "getitem":
            key = keys[n % len(keys)] if keys and n % 2 else name
            try:
                seen.append(plain(event[key]))
            except KeyError:
                seen.append("KeyError")
        elif op == "in":
            seen.append(name in event)
        elif op == "len":
            seen.append(len(event))
        elif op == "iter":
            seen.append(list(event))
        elif op == "bool":
            seen.append(bool(event))
    return seen


def leave(raw: bytes, patch: Patch, plain: Any) -> tuple[bytes, bool]:
    """What leaves a worker for ``patch``: (bytes, spliced or not)."""
    out = splice(raw, patch, plain, orjson.dumps, escapes=b"\\" in raw)
    # the same when the names are searched in the job the record is part of (a worker's way), with a
    # backslash anywhere taken as a name spelled with escapes, or only one that can end an escaped name
    assert splice(raw, patch, plain, orjson.dumps, b"\\" in raw, JobNames(b"[" + raw + b"]", b"\\" in raw)) == out
    escaped = names_may_be_escaped(b"[" + raw + b"]")
    assert splice(raw, patch, plain, orjson.dumps, escaped, JobNames(b"[" + raw + b"]", escaped)) == out
    if out is not None:
        return out, True
    return orjson.dumps(materialize(loads_exact(raw), patch, plain)), False


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents, how=spellings, script=steps, plain_reads=st.booleans())
def test_an_appender_on_a_patch_reads_and_writes_what_it_would_on_a_dict(doc: dict[str, Any], how: str, script: Any, plain_reads: bool) -> None:
    raw = spell(doc, how)
    views = SimdjsonViews()
    plain_seen = run(expected := orjson.loads(raw), script, lambda v: v)
    patch = PlainPatch(views.parse(raw), views.plain) if plain_reads else Patch(views.parse(raw))
    assert run(patch, script, (lambda v: v) if plain_reads else views.plain) == plain_seen
    out, spliced = leave(raw, patch, views.plain)
    got = orjson.loads(out)
    assert got == expected and list(got) == list(expected), (raw, out)
    if spliced:  # the record's own bytes come first, as they were, and each name appears once
        assert out.startswith(raw.rstrip()[:-1].rstrip())
        assert len(orjson.loads(out)) == len(json.loads(out, object_pairs_hook=lambda pairs: pairs))


def test_splicing_keeps_the_record_and_adds_after_it() -> None:
    views = SimdjsonViews()
    for raw, want in [
        (b'{"a":1}', b'{"a":1,"seen":true}'),
        (b"{}", b'{"seen":true}'),
        (b"{ }  ", b'{"seen":true}'),
        (b'{ "x" : [1, 2] }\n', b'{ "x" : [1, 2],"seen":true}'),
    ]:
        p = Patch(views.parse(raw))
        p["seen"] = True
        assert splice(raw, p, views.plain, orjson.dumps) == want
        del p


@pytest.mark.parametrize("raw", [b'{"seen":false,"b":2}', b'{"se\\u0065n":false,"b":2}'])
def test_a_field_the_record_has_is_not_spliced_twice(raw: bytes) -> None:
    """A dict keeps the place of a name it had; JSON readers differ on repeated names: decoded whole."""
    views = SimdjsonViews()
    p = Patch(views.parse(raw))
    p["seen"] = True
    assert splice(raw, p, views.plain, orjson.dumps, escapes=b"\\" in raw) is None
    out, spliced = leave(raw, p, views.plain)
    assert not spliced and out == b'{"seen":true,"b":2}'


@pytest.mark.parametrize("plain_reads", [False, True])
def test_keys_that_are_not_text_behave_as_on_a_dict(plain_reads: bool) -> None:
    """A record's names are text: a dict has no bytes or int key (the view takes b"a" for "a")."""
    views = SimdjsonViews()
    raw = b'{"a":1,"0":2}'
    d = orjson.loads(raw)
    p = PlainPatch(views.parse(raw), views.plain) if plain_reads else Patch(views.parse(raw))
    for key in (b"a", 0, None, 1.5):
        assert (key in p) == (key in d) and p.get(key, "dflt") == d.get(key, "dflt")
        with pytest.raises(KeyError):
            p[key]
    with pytest.raises(TypeError):
        p.get([1])


def test_a_value_the_codec_cannot_write_alone_is_left_to_the_whole_record() -> None:
    views = SimdjsonViews()
    raw = b'{"a":1}'
    p = Patch(views.parse(raw))
    p["s"] = {1, 2}
    assert splice(raw, p, views.plain, orjson.dumps) is None


def test_the_proof_accepts_appenders_and_refuses_the_rest() -> None:
    def set_one(event, meta):  # type: ignore[no-untyped-def]
        event["seen"] = True
        return event

    def tag(event, meta):  # type: ignore[no-untyped-def]
        if event.get("kind") == "a":
            event["tagged"] = event.get("x")
            event["n"] = len(event)
        meta["k"] = event.get("kind")
        return event

    def variable_name(event, meta):  # type: ignore[no-untyped-def]
        k = "a"
        event[k] = 1
        return event

    def nested(event, meta):  # type: ignore[no-untyped-def]
        event["a"]["b"] = 1
        return event

    def into_itself(event, meta):  # type: ignore[no-untyped-def]
        event["me"] = event
        return event

    def escapes_into_meta(event, meta):  # type: ignore[no-untyped-def]
        event["a"] = 1
        meta["e"] = event
        return event

    def deletes(event, meta):  # type: ignore[no-untyped-def]
        event["a"] = 1
        del event["b"]
        return event

    def int_name(event, meta):  # type: ignore[no-untyped-def]
        event[1] = 1
        return event

    for fn in (set_one, tag):
        proof = prove(fn)
        assert proof.appends and not proof.reads_only, fn.__name__
    for fn in (variable_name, nested, into_itself, escapes_into_meta, deletes, int_name):
        proof = prove(fn)
        assert not proof.appends and not proof.reads_only, fn.__name__


def test_relaxed_proofs_take_pure_code_on_plain_copies_and_refuse_what_could_tell_or_change_them() -> None:
    def enrich(event, meta):  # type: ignore[no-untyped-def]
        event["host_lower"] = event["host"].lower()
        event["size_kb"] = event["size"] / 1024
        event["label"] = f"{event['a']}-{event.get('b')}"
        event["n"] = str(len(event["tags"]))
        event["j"] = ",".join(event["tags"])
        event["t"] = time.time()
        return event

    def reads_through_a_method(event, meta):  # type: ignore[no-untyped-def]
        if event["host"].startswith("web"):
            meta["web"] = True
        return event

    def mutates_a_read_list(event, meta):  # type: ignore[no-untyped-def]
        t = event["tags"]
        t.append(1)
        return event

    def adds_in_place(event, meta):  # type: ignore[no-untyped-def]
        t = event["tags"]
        t += [1]
        return event

    def extends_its_own_list_in_place(event, meta):  # type: ignore[no-untyped-def]
        acc = []
        alias = acc
        acc += event["items"]  # acc holds parts read from the event: every name bound to it counts as such
        alias[0]["x"] = 1
        return event

    def aliases_into_its_own_list(event, meta):  # type: ignore[no-untyped-def]
        acc = []
        acc.append(event["tags"])
        return event

    def asks_identity(event, meta):  # type: ignore[no-untyped-def]
        if event["a"] is event["b"]:
            meta["same"] = True
        return event

    def formats_the_event(event, meta):  # type: ignore[no-untyped-def]
        event["s"] = f"{event}"
        return event

    def builds_a_list_of_reads(event, meta):  # type: ignore[no-untyped-def]
        event["pair"] = [event["a"], event["b"]]
        return event

    def returns_a_part(event, meta):  # type: ignore[no-untyped-def]
        return event["inner"]

    def hands_a_read_to_other_code(event, meta):  # type: ignore[no-untyped-def]
        event["h"] = json.dumps(event["a"])
        return event

    for fn in (enrich, reads_through_a_method):
        proof = prove(fn, relaxed=True)
        assert proof.appends and proof.plain and not proof.reads_only, fn.__name__
    for fn in (mutates_a_read_list, adds_in_place, extends_its_own_list_in_place, aliases_into_its_own_list, asks_identity, formats_the_event, builds_a_list_of_reads,
               returns_a_part, hands_a_read_to_other_code):  # fmt: skip
        proof = prove(fn, relaxed=True)
        assert not proof.appends and not proof.reads_only, fn.__name__


ENRICH = '''
def enrich(event, meta):
    event["host_lower"] = event["host"].lower()
    event["kb"] = event["size"] / 1024
    event["label"] = f"{event['host']}:{len(event['tags'])}"
    if "web" in event["tags"]:
        meta["web"] = True
    return event
'''


def _on_loop_and_workers(tmp_path: Any, write: Any, stages: str, fn: str, outputs: str) -> dict[int, Any]:
    """``stages:fn`` over ``in.ndjson``, once on the loop (workers: 0) and once on 2 workers;
    ``outputs``: the config's offramps and links. The folder of each run, by its workers."""
    from tests.support.daemon import Daemon

    folders = {}
    for workers in (0, 2):
        write(f"w{workers}/stages.py", stages)
        cfg = write(f"w{workers}/c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: ../in.ndjson}}}}}}
pipelines:
  main: [{{op: python, fn: "stages:{fn}"}}]
{outputs}
""")
        d = Daemon(cfg)
        assert d.wait(60) == 0, d.stderr()
        folders[workers] = tmp_path / f"w{workers}"
    return folders


def test_a_relaxed_appender_on_workers_gives_what_it_gives_on_the_loop(tmp_path: Any, write: Any) -> None:
    """Its reads are plain copies on workers (PlainPatch), tracked dicts on the loop: the same out, the same errors."""
    records = [f'{{"id": {i}, "host": "Web-{i % 7}", "size": {i * 100}, "tags": ["a", "{"web" if i % 2 else "db"}"]}}' for i in range(200)]
    records += ['{"id": 1000, "host": "x", "tags": []}', '{"id": 1001, "host": 5, "size": 1, "tags": []}', '{"id": 1002, "host": "y", "size": "big", "tags": []}']
    write("in.ndjson", "".join(r + "\n" for r in records))
    folders = _on_loop_and_workers(tmp_path, write, ENRICH, "enrich", """offramps:
  out: {type: file, codec: json, with_meta: true, config: {path: out.ndjson}}
  dlq: {type: file, codec: json, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], main: [out], main/err: [dlq]}""")
    got = {}
    for workers, folder in folders.items():
        out = sorted((orjson.loads(x) for x in (folder / "out.ndjson").read_text().splitlines()), key=lambda e: e["event"]["id"])
        dlq = sorted((orjson.loads(x) for x in (folder / "dlq.ndjson").read_text().splitlines()), key=lambda e: e["event"]["id"])
        got[workers] = ([(e["event"], list(e["event"]), e["meta"].get("web")) for e in out],
                        [(e["event"]["id"], e["meta"]["error"]["type"], e["meta"]["error"]["message"]) for e in dlq])  # fmt: skip
    assert got[2] == got[0]
    assert len(got[2][0]) == 200 and [x[:2] for x in got[2][1]] == [(1000, "KeyError"), (1001, "AttributeError"), (1002, "TypeError")]
    assert got[2][0][3][0]["label"] == "Web-3:2" and got[2][0][3][2] is True


APPENDERS = '''
def tag(event, meta):
    if event.get("kind") == "a":
        event["tagged"] = True
        event["n"] = len(event)
    elif event.get("kind") == "s":
        event["s"] = {1, 2}
    return event
'''


def test_an_appender_on_workers_gives_what_it_gives_on_the_loop(tmp_path: Any, write: Any) -> None:
    """Workers splice; the loop runs the stage on tracked dicts: the same records leave (parsed), the
    same go to err, untouched ones byte for byte, spliced ones starting with their own bytes."""
    records = []
    for i in range(300):
        kind = "a" if i % 3 == 0 else "b"
        records.append(f'{{"id": {i},  "kind" : "{kind}", "x":[1, 2]}}')
    records += [
        '{"id": 1000, "kind": "a", "tagged": false, "z": 1}',  # has the field: it keeps its place
        '{"id": 1001, "kind": "a", "t\\u0061gged": 0}',  # has it, spelled with an escape
        '{"id": 1002, "kind": "s"}',  # a value JSON cannot hold: err
        "[1, 2]",  # not an object: .get raises, err
        '{"id": 1003, "kind": "a"',  # invalid: err
        '{"id": 1004, "kind": "a", "big": 123456789012345678901234567890}',  # exact beyond 64 bits
    ]
    write("in.ndjson", "".join(r + "\n" for r in records))
    folders = _on_loop_and_workers(tmp_path, write, APPENDERS, "tag", """offramps:
  out: {type: file, codec: json, config: {path: out.ndjson}}
  dlq: {type: file, codec: json, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], src/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}""")
    got: dict[int, tuple[list[str], Counter[str]]] = {}
    for workers, folder in folders.items():
        out = (folder / "out.ndjson").read_text().splitlines()
        dlq = [orjson.loads(x) for x in (folder / "dlq.ndjson").read_text().splitlines()]
        got[workers] = (out, Counter(e["meta"]["error"]["type"] for e in dlq))
    loop_out, loop_err = got[0]
    work_out, work_err = got[2]
    assert work_err == loop_err and sum(loop_err.values()) == 3, (work_err, loop_err)
    assert len(work_out) == len(loop_out) == len(records) - 3
    by_id = {orjson.loads(line)["id"]: line for line in loop_out}
    for line in work_out:
        value = orjson.loads(line)
        want = by_id[value["id"]]
        assert value == orjson.loads(want) and list(value) == list(orjson.loads(want)), (line, want)
        i = value["id"]
        if i < 300:
            if i % 3:
                assert line == records[i], "an untouched record leaves as its bytes"
            else:
                assert line.startswith(records[i][:-1]) and value["n"] == 4, "spliced: its own bytes, then the fields"
    assert orjson.loads(by_id[1000]) == {"id": 1000, "kind": "a", "tagged": True, "z": 1, "n": 4}
    assert list(json.loads(next(x for x in work_out if '"id": 1001' in x or '"id":1001' in x), object_pairs_hook=lambda p: p)) == [
        ("id", 1001), ("kind", "a"), ("tagged", True), ("n", 3)]  # fmt: skip
    assert "123456789012345678901234567890" in next(x for x in work_out if "1004" in x)


ONE_FIELD = '''
def one(event, meta):
    k = event.get("k", 0)
    if k == 0:
        event["v"] = True
    elif k == 1:
        event["v"] = False
    elif k == 2:
        event["v"] = None
    elif k == 3:
        event["v"] = "s"
    elif k == 4:
        event["v"] = [1, 2]
    elif k == 5:
        event["v"] = 1.5
    elif k == 6:
        event["v"] = 1
    elif k == 8:
        event["v"] = event.get("id")
    return event
'''


def test_a_one_field_appender_on_workers_gives_what_it_gives_on_the_loop(tmp_path: Any, write: Any) -> None:
    """The workers' shortest way (one field, no backslash in the job): values that repeat (the
    same object, its bytes remembered) and that do not, True beside 1, records that have the field
    already in jobs where most do not, records ending in blanks or empty: as on the loop."""
    records = []
    for i in range(900):
        rec = f'{{"id": {i}, "k": {i // 4 % 9}}}'  # runs of the same value
        if i % 50 == 10:
            rec = f'{{"v": "old", "id": {i}, "k": {i // 4 % 9}}}'  # has it: the field keeps its place
        elif i % 50 == 20:
            rec = f'{{"id": {i}, "k": {i // 4 % 9}, "note": "v"}}  '  # blanks after it; "v" only as a value
        records.append(rec)
    records += ["{}", '{"k": 1}', '{"id": 901,"k":0,"x":{"v":1}}']  # empty; nested "v" is another field
    write("in.ndjson", "".join(r + "\n" for r in records))
    folders = _on_loop_and_workers(tmp_path, write, ONE_FIELD, "one", """offramps: {out: {type: file, codec: json, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}""")
    got = {workers: (folder / "out.ndjson").read_text().splitlines() for workers, folder in folders.items()}
    loop_out, work_out = got[0], got[2]
    assert len(work_out) == len(loop_out) == len(records)
    pairs = lambda line: json.loads(line, object_pairs_hook=lambda p: p)  # noqa: E731 (repeated names would show)
    assert sorted(map(pairs, work_out), key=repr) == sorted(map(pairs, loop_out), key=repr)
    from headrace.plugins.operators.readproof import prove

    ns: dict[str, Any] = {}
    exec(ONE_FIELD, ns)
    assert prove(ns["one"]).appends, "the stage is an appender: workers splice"
    spliced = 0
    for line in work_out:
        value = orjson.loads(line)
        if value.get("id", 10**9) < 900 and "v" in value and not line.startswith('{"v"'):
            i = value["id"]
            assert line.startswith(records[i].rstrip()[:-1]), (line, records[i])
            assert value["v"] == (i if i // 4 % 9 == 8 else [True, False, None, "s", [1, 2], 1.5, 1][i // 4 % 9])
            spliced += 1
    assert spliced > 700


def test_simdjson_is_the_view_type() -> None:
    assert SimdjsonViews().object_type is simdjson.Object


@settings(max_examples=300, deadline=None)
@given(haystack=st.binary(max_size=64), needle=st.binary(max_size=6), cut=st.integers(0, 64))
def test_the_job_search_finds_what_in_finds(haystack: bytes, needle: bytes, cut: int) -> None:
    from headrace.contract.bytesearch import contains

    placed = haystack[:cut] + needle + haystack[cut:]  # present at least once
    assert contains(placed, needle)
    assert contains(haystack, needle) == (needle in haystack)


SEEN = '''
def seen(event, meta):
    event["seen"] = True
    return event
'''


def test_whole_jobs_spliced_in_the_parent_give_what_the_loop_gives(tmp_path: Any, write: Any) -> None:
    """A constant field set on every record (jobs answered as cuts and one tail, the parent splicing
    them: tests/runtime/test_spliced.py), with decode failures and stage errors among them:
    the same records, in the same order, and the same dead letters as on the loop."""
    records = [f'{{"id":{i},"pad":"{"x" * (i % 13)}"}}' for i in range(20000)]
    records[777] = '{"id": 777, "broken"'
    records[9000] = "[9000]"  # not an object: the stage raises
    write("in.ndjson", "".join(r + "\n" for r in records))
    folders = _on_loop_and_workers(tmp_path, write, SEEN, "seen", """offramps:
  out: {type: file, codec: json, config: {path: out.ndjson}}
  dlq: {type: file, codec: json, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], main: [out], main/err: [dlq], src/err: [dlq]}""")
    loop_out, work_out = ((folders[w] / "out.ndjson").read_bytes().splitlines() for w in (0, 2))
    assert work_out == loop_out
    assert len(work_out) == 19998 and work_out[0] == b'{"id":0,"pad":"","seen":true}'
    dead = {w: sorted(json.loads(x)["meta"]["error"]["type"] for x in (folders[w] / "dlq.ndjson").read_text().splitlines()) for w in (0, 2)}
    assert dead[0] == dead[2] and len(dead[2]) == 2


@pytest.mark.parametrize(("blob", "escaped"), [
    (b'{"a\\"b":1}', True),  # an escaped quote in a name
    (b'{"se\\u0065n" : 1}', True),  # a name spelled with a unicode escape, blanks before the colon
    (b'{"a\\\\":1}', True),  # a name ending in an escaped backslash
    (b'[{"m":"x"},{"k":{"t\\tab":2}}]', True),  # nested, in a later record
    (b'{"m":"x \\"q\\" y","k":1}', False),  # escaped quotes in a value
    (b'{"j":"{\\"a\\":1}"}', False),  # JSON inside a string: its names are a value's text
    (b'{"m":"a\\nb","k":1}', False),
    (b'{"m":"tail\\\\","k":2}', False),  # a value ending in an escaped backslash, a name after it
    (b'{"m":["\\u00e9"]}', False),
    (b'{"plain":1}', False),
])  # fmt: skip
def test_names_spelled_with_escapes_are_told_from_escapes_in_values(blob: bytes, escaped: bool) -> None:
    """Records whose values hold escapes (log lines: quotes, newlines) keep the job-wide name search;
    any name spelled with an escape turns it off (the differential test above covers random names)."""
    assert names_may_be_escaped(blob) is escaped
    assert json.loads(blob) is not None  # every case is valid JSON
