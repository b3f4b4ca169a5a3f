"""Row 21: property-based tests (hypothesis) of what parses untrusted or arbitrary input.

* the config loader: any text, any YAML document, any mutation of a valid config -> a ``Graph``
  or a ``ConfigError`` with ``file:line:col`` positions; never another exception;
* every codec: any bytes -> a value or ``DecodeError`` (the runtime catches that one, and a
  RecursionError; anything else fails a whole batch);
* every preprocessor: any chunks -> records and rejections, never an exception; pre(post(x)) == x.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headrace import registry
from headrace.config.errors import ConfigError
from headrace.config.graph import Graph
from headrace.config.load import load_text
from headrace.contract.codec import DecodeError

SETTINGS = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HERE = Path(__file__).resolve().parent / "_property_config.yaml"  # never read: a name for positions; stage modules resolve beside it
POSITION = re.compile(r"^.+:\d+:\d+: .+", re.S)

VALID: dict[str, Any] = {
    "version": 1,
    "daemon": {"workers": 0, "metrics": {"listen": None}, "shutdown_timeout": "5s"},
    "onramps": {"src": {"type": "file", "codec": "json", "config": {"path": "in.ndjson"}}},
    "pipelines": {
        "main": [{"op": "filter", "where": "event['level'] != 'debug'"}, {"op": "set", "set": {"x": "1"}}],
        "graph": {"nodes": {"r": {"op": "route", "routes": {"a": "meta.get('k') == 1"}}}, "links": {"in": ["r"], "r/a": ["out"]}},
    },
    "offramps": {"out": {"type": "file", "config": {"path": "out.ndjson"}}, "dlq": {"type": "stdout", "with_meta": True}},
    "links": {"src": ["main", "graph"], "main": ["out"], "graph": ["out"], "main/err": ["dlq"]},
}
KEYS = ["version", "daemon", "onramps", "pipelines", "offramps", "links", "type", "codec", "config", "path", "op", "fn", "where",
        "set", "routes", "nodes", "in", "out", "err", "main", "src", "metrics", "listen", "workers", "shutdown_timeout",
        "preprocessors", "postprocessors", "name", "max_line_bytes", "batch_size", "queue_events", "tests", "rate", "ordered"]  # fmt: skip
WORDS = ["file", "kafka", "tcp", "json", "msgpack", "lines", "gzip", "python", "filter", "route", "set", "bucket", "main", "src",
         "out", "err", "src/err", "main/out", "nosuch:fn", "event['x'] > 1", "__import__('os')", "${HOME}", "${NOPE:-x}",
         "${NOPE}", "10s", "-1s", "1e400", "auto", "127.0.0.1:0", "in.ndjson", "../x", "/abs", "\x00", "~", "*", "&a"]  # fmt: skip

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(WORDS))  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=40,
)


def load(text: str) -> Graph | ConfigError:
    """The loader's verdict; any other exception propagates and fails the property."""
    try:
        return load_text(text, HERE, env={"HOME": "/home/x"})
    except ConfigError as exc:
        assert exc.issues, "a ConfigError names at least one issue"
        for issue in exc.issues:
            assert POSITION.match(str(issue)), f"no file:line:col in {str(issue)!r}"
        return exc


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_is_a_graph_or_a_config_error(text: str) -> None:
    load(text)


@SETTINGS
@given(documents)
def test_any_yaml_document_is_a_graph_or_a_config_error(doc: Any) -> None:
    load(yaml.safe_dump(doc, allow_unicode=True))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@SETTINGS
@given(st.data())
def test_any_mutation_of_a_valid_config_is_a_graph_or_a_config_error(data: st.DataObject) -> None:
    doc = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(documents)
    load(yaml.safe_dump(doc, allow_unicode=True))


def test_the_valid_base_config_loads() -> None:
    assert isinstance(load(yaml.safe_dump(VALID)), Graph)


def test_alias_bomb_is_a_config_error() -> None:
    lines = ["version: 1", 'a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    verdict = load("\n".join(lines) + "\n")
    assert isinstance(verdict, ConfigError) and "too large" in str(verdict)


CODECS = registry.names("codecs")


@pytest.mark.parametrize("name", CODECS)
@SETTINGS
@given(data=st.binary(max_size=300) | st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_decode_to_a_value_or_a_decode_error(name: str, data: bytes) -> None:
    codec = registry.make_codec(name) if hasattr(registry, "make_codec") else registry.load("codecs", name)()
    try:
        codec.decode(data)
    except DecodeError:
        pass


@pytest.mark.parametrize("name", CODECS)
def test_deep_or_truncated_structures_decode_to_a_value_or_a_decode_error(name: str) -> None:
    codec = registry.load("codecs", name)()
    for unit in (b"{", b"[", b'{"a":', b"- ", b"a: ", b"\x91", b"\xdc\x00\x01"):
        try:
            codec.decode(unit * 3000)
        except DecodeError:
            pass


PRE = registry.names("preprocessors")
chunks = st.lists(st.binary(max_size=200) | st.sampled_from([b"\n", b"\r\n", b"\x00\x00\x00\x05abc", b"\x1f\x8b\x08", b"==", b"QUJD\n"]),
                  max_size=8)  # fmt: skip


@pytest.mark.parametrize("name", PRE)
@SETTINGS
@given(parts=chunks)
def test_any_chunks_frame_to_records_and_rejections(name: str, parts: list[bytes]) -> None:
    pre = registry.load("preprocessors", name)()
    out: list[bytes] = []
    rejected: list[tuple[bytes, str]] = []
    for p in parts:
        pre.feed(p, out, rejected)
    pre.finish(out, rejected)
    assert all(isinstance(r, bytes) for r in out)
    assert all(isinstance(r, bytes) and isinstance(why, str) and why for r, why in rejected)
    assert all(len(r) <= 1024 for r, _ in rejected), "a rejection keeps a sample, not the whole input"


def _records_for(name: str) -> st.SearchStrategy[list[bytes]]:
    if name == "lines":  # lines drops empty records and a trailing \r: records of one line
        return st.lists(st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and not b.endswith(b"\r")), max_size=8)
    return st.lists(st.binary(max_size=200), max_size=8)


@pytest.mark.parametrize("name", sorted(set(PRE) & set(registry.names("postprocessors"))))
@SETTINGS
@given(data=st.data())
def test_pre_after_post_gives_the_records_back(name: str, data: st.DataObject) -> None:
    records = data.draw(_records_for(name))
    post = registry.load("postprocessors", name)()
    pre = registry.load("preprocessors", name)()
    out: list[bytes] = []
    rejected: list[tuple[bytes, str]] = []
    for chunk in post.process(records):
        # split every written chunk at an arbitrary point: framing must not depend on read boundaries
        cut = data.draw(st.integers(0, len(chunk)))
        for part in (chunk[:cut], chunk[cut:]) if name != "base64" else (chunk,):
            pre.feed(part, out, rejected)
    pre.finish(out, rejected)
    assert not rejected, rejected
    if name in ("gzip", "zstd", "lz4"):  # a stream: the bytes come back, not the record boundaries
        assert b"".join(out) == b"".join(records)
    else:
        assert out == records
