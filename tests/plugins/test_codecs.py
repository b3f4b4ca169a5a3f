"""CSV, InfluxDB line protocol and YAML codecs: round trips, malformed input, and any bytes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.contract.codec import DecodeError
from headrace.plugins.codecs.csv import CsvCodec, CsvConfig
from headrace.plugins.codecs.influx import InfluxCodec
from headrace.plugins.codecs.yaml import YamlCodec

# -- csv ---------------------------------------------------------------------------------------


def test_csv_row_to_list_and_back() -> None:
    c = CsvCodec()
    assert c.decode(b'a,"b,c",,"say ""hi"""') == ["a", "b,c", "", 'say "hi"']
    assert c.encode(["a", "b,c", None, 'say "hi"', 3]) == b'a,"b,c",,"say ""hi""",3'


def test_csv_header_gives_dicts_and_orders_encoding() -> None:
    c = CsvCodec(CsvConfig(delimiter=";", header=["host", "cpu"]))
    assert c.decode(b"web1;0.5") == {"host": "web1", "cpu": "0.5"}
    assert c.encode({"cpu": 0.25, "host": "db"}) == b"db;0.25"
    with pytest.raises(DecodeError, match="expected 2 fields"):
        c.decode(b"web1;0.5;extra")
    with pytest.raises(ValueError, match="not in the header"):
        c.encode({"host": "x", "mem": 1})


def test_csv_line_breaks_are_quoted_so_a_record_stays_one_row() -> None:
    c = CsvCodec()
    enc = c.encode(["a\nb", "c\rd"])
    assert c.decode(enc) == ["a\nb", "c\rd"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b'a,"unterminated', "invalid CSV"), (b'a,"b"x', "invalid CSV"), (b"a\nb", "one CSV row"), (b"", "one CSV row"), (b"\xff", "UTF-8")],
)
def test_csv_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        CsvCodec().decode(data)


def test_csv_dict_without_header_is_an_encode_error() -> None:
    with pytest.raises(ValueError, match="needs a header"):
        CsvCodec().encode({"a": 1})


@given(st.lists(st.text(), min_size=1, max_size=8))
def test_csv_round_trip(row: list[str]) -> None:
    c = CsvCodec()
    assert c.decode(c.encode(row)) == row


# -- influx ------------------------------------------------------------------------------------

LINE = rb'weather,location=us\ west,a\=b=c\,d temp=82.5,ok=true,n=-3i,u=5u,note="a \"b\" \\ c" 1465839830100400200'


def test_influx_decode_all_types_and_escapes() -> None:
    assert InfluxCodec().decode(LINE) == {
        "measurement": "weather",
        "tags": {"location": "us west", "a=b": "c,d"},
        "fields": {"temp": 82.5, "ok": True, "n": -3, "u": 5, "note": 'a "b" \\ c'},
        "timestamp": 1465839830100400200,
    }


def test_influx_without_tags_or_timestamp() -> None:
    assert InfluxCodec().decode(b"cpu,host=a value=1") == {"measurement": "cpu", "tags": {"host": "a"}, "fields": {"value": 1.0}, "timestamp": None}
    assert InfluxCodec().decode(b"my\\ m x=F") == {"measurement": "my m", "tags": {}, "fields": {"x": False}, "timestamp": None}


def test_influx_round_trip_of_escapes() -> None:
    c = InfluxCodec()
    value = {"measurement": "m,1 \\", "tags": {"k =,\\": "v =,\\"}, "fields": {"f =,": 'q"\\', "big": 2**63 + 1}, "timestamp": -5}
    assert c.decode(c.encode(value)) == value


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "empty line"),
        (b"# comment", "comment"),
        (b"cpu", "expected a space"),
        (b"cpu ", "invalid field"),
        (b"cpu value=", "no value"),
        (b"cpu,host value=1", "invalid tag"),
        (b"cpu,host= value=1", "no value"),
        (b"cpu value=1 soon", "invalid timestamp"),
        (b"cpu value=nan", "invalid value"),
        (b"cpu value=1e999", "out of range"),
        (b"cpu value=9223372036854775808i", "int64"),
        (b"cpu value=18446744073709551616u", "uint64"),
        (b'cpu value="open', "unterminated string"),
        (b"cpu value=1,", "invalid field"),
        (b"\xffcpu value=1", "UTF-8"),
    ],
)
def test_influx_malformed(line: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        InfluxCodec().decode(line)


@pytest.mark.parametrize(
    "value",
    [
        {"measurement": "m", "fields": {}},
        {"measurement": "", "fields": {"a": 1}},
        {"measurement": "m", "fields": {"a": float("nan")}},
        {"measurement": "m", "fields": {"a": "two\nlines"}},
        {"measurement": "m", "fields": {"a": [1]}},
        {"measurement": "m", "fields": {"a": 1}, "timestamp": "now"},
        {"measurement": "m", "fields": {"a": 1}, "extra": 1},
        {"measurement": "#m", "fields": {"a": 1}},
        ["not", "a", "dict"],
    ],
)
def test_influx_unencodable(value: Any) -> None:
    with pytest.raises(ValueError):
        InfluxCodec().encode(value)


names = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), min_size=1, max_size=12)
field_values = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False), st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)))
)


@given(
    measurement=names.filter(lambda s: not s.startswith("#")),
    tags=st.dictionaries(names, names, max_size=4),
    fields=st.dictionaries(names, field_values, min_size=1, max_size=4),
    timestamp=st.none() | st.integers(-(2**63), 2**63 - 1),
)
def test_influx_round_trip(measurement: str, tags: dict[str, str], fields: dict[str, Any], timestamp: int | None) -> None:
    c = InfluxCodec()
    value = {"measurement": measurement, "tags": tags, "fields": fields, "timestamp": timestamp}
    got = c.decode(c.encode(value))
    assert got["measurement"] == measurement and got["tags"] == tags and got["timestamp"] == timestamp
    for k, v in fields.items():
        assert (got["fields"][k] == v and type(got["fields"][k]) is type(v)) or (isinstance(v, float) and math.isclose(got["fields"][k], v))


# -- yaml --------------------------------------------------------------------------------------


def test_yaml_decode_and_one_line_encode() -> None:
    c = YamlCodec()
    assert c.decode(b"a: 1\nb: [x, {c: null}]\n") == {"a": 1, "b": ["x", {"c": None}]}
    enc = c.encode({"text": "two\nlines", "n": 1.5, "ok": True, "s": "yes", "raw": b"\x00\xff"})
    assert b"\n" not in enc
    assert c.decode(enc) == {"text": "two\nlines", "n": 1.5, "ok": True, "s": "yes", "raw": b"\x00\xff"}
    assert c.encode("plain") == b"plain"


BOMB = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"a: 1\n---\nb: 2\n", "single document"),
        (b"!!python/object/apply:os.system [echo hi]", "constructor"),
        (b"a: [1, 2", "invalid YAML"),
        (b"\xff\xfe\xfe", "invalid YAML"),
        (BOMB, "more than"),
        (b"&a [*a]", "deeper than"),
        (b"[" * 20000 + b"]" * 20000, "RecursionError"),  # libyaml would overflow the C stack here
        (b"- " * 20000 + b"x", "RecursionError"),
    ],
    ids=["multi-doc", "python-tag", "unclosed", "bad-utf", "alias-bomb", "recursive-alias", "deep-flow", "deep-block"],
)
def test_yaml_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        YamlCodec().decode(data)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(json_like)
def test_yaml_round_trip_on_one_line(value: Any) -> None:
    c = YamlCodec()
    enc = c.encode(value)
    assert b"\n" not in enc
    assert c.decode(enc) == value


# -- any bytes: a value or a DecodeError, never anything else -----------------------------------


@pytest.mark.parametrize("codec", [CsvCodec(), CsvCodec(CsvConfig(header=["a", "b"])), InfluxCodec(), YamlCodec()], ids=["csv", "csv-header", "influx", "yaml"])
@settings(max_examples=300)
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_decode_or_decode_error(codec: Any, data: bytes) -> None:
    try:
        codec.decode(data)
    except DecodeError:
        pass


# -- what a stage reads and what leaves is the same document (issue 12, classes 7 and 21) --------

json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
    | st.integers(min_value=-(2**80), max_value=2**80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_json_round_trip_keeps_every_integer_exact(value: Any) -> None:
    from headrace.plugins.codecs.json import JsonCodec

    codec = JsonCodec()
    data = codec.encode(value)
    back = codec.decode(data)
    assert back == value and _types(back) == _types(value)
    decode, _ = codec.loader_for(data)  # what a worker uses for a job holding this record
    assert decode(data) == value and _types(decode(data)) == _types(value)


@pytest.mark.parametrize("text", [b'{"time_unix_nano":1733350000123456789,"v":1}', b'[9999999999999999999,-999999999999999999]',
                                  b'{"t":"-1234567890123456789"}'])
def test_json_integers_orjson_holds_exactly_keep_the_job_on_orjson(text: bytes) -> None:
    """A nanosecond timestamp has 19 digits: it fits uint64, which orjson reads exactly. The job's
    check lets such records through orjson alone (the standard library reads 7x slower)."""
    import json as stdlib

    import orjson

    from headrace.plugins.codecs.json import JsonCodec

    codec = JsonCodec()
    decode, _ = codec.loader_for(text)
    expected = stdlib.loads(text)
    assert decode(text) == expected and _types(decode(text)) == _types(expected)
    if b'"-' not in text:  # a minus sign before 19 digits (here in a string) takes the careful path: only slower
        assert decode is orjson.loads


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize("text", [b'{"a": 123456789012345678901234567890}', b'{"a": -9223372036854775809, "b": [18446744073709551616]}',
                                  b'[-9999999999999999999]', b'{"x":"-","y":99999999999999999999}'])
def test_json_big_integers_are_read_as_integers_by_every_loader(text: bytes) -> None:
    import json as stdlib

    from headrace.plugins.codecs.json import JsonCodec

    codec = JsonCodec()
    expected = stdlib.loads(text)
    assert codec.decode(text) == expected
    assert codec.loader()[0](text) == expected
    assert codec.loader_for(text)[0](text) == expected
    views = codec.view_loader()
    if views is not None:  # a readonly stage's view: simdjson refuses big integers, the recovery keeps them exact
        got = views(text)
        assert (got.as_dict() if hasattr(got, "as_dict") else got) == expected
    assert stdlib.loads(codec.encode(expected)) == expected
