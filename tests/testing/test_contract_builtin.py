"""The contract suites of ``headrace.testing.contract`` over every built-in operator and codec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from headrace import registry
from headrace.contract.codec import Codec, DecodeError
from headrace.contract.stage import Emit, Ev, Operator
from headrace.testing.contract import codec_contract, operator_contract

STAGE = """
def tag(event, meta):
    if event["id"] == 5:
        raise ValueError("five")
    if event["id"] == 7:
        return None
    event["tagged"] = True
    return event


def look(event, meta):  # a read-only stage: reads, writes only meta
    if event["id"] == 5:
        raise ValueError("five")
    meta["seen"] = event["level"]
    return event
"""

AGGS = {"n": {"fn": "count"}, "total": {"fn": "sum", "field": "event['v']"}, "p9": {"fn": "percentile", "field": "event['v']", "p": 0.9}}

OPERATORS: dict[str, list[dict[str, Any]]] = {
    "python": [{"fn": "contract_stage:tag"}, {"fn": "contract_stage:look", "readonly": True, "ports": ["extra"]}],
    "filter": [{"where": "event['level'] != 'debug'"}, {"where": "event['missing'] > 1"}],  # the second errs on every event
    "route": [{"routes": {"errors": "event['level'] == 'error'", "debug": "meta['class'] == 'debug'"}}],
    "set": [{"set": {"x": "event['id'] * 2", "meta.y": "'z'"}}, {"set": {"tags.k": "1"}}],  # tags is a list: err
    "bucket": [{}, {"window": "10ms", "slots": 2}],
    "batch": [{"count": 5}, {"count": 1000, "timeout": "1s"}],
    "window": [
        {"size": 5, "group_by": "event['host']", "aggregates": AGGS},
        {"kind": "sliding", "size": 4, "slide": 2, "aggregates": AGGS},
        {"interval": "1s", "aggregates": AGGS},
        {"kind": "sliding", "interval": "1s", "slide": "250ms", "group_by": "event['level']", "aggregates": AGGS},
        {"size": 3, "aggregates": {"bad": {"fn": "sum", "field": "event['host']"}}},
    ],
    "throttle": [{"rate": 5}],
    "dedupe": [{"key": "event['id'] % 4"}, {"key": "event['nope']"}],
    "sample": [{"rate": 3}, {"rate": 2, "key": "event['host']"}],
    "backpressure": [{}, {"steps": ["1ms"]}],
}

CODECS: dict[str, tuple[list[Any], list[bytes]]] = {  # samples, garbage
    "json": ([{"a": 1, "b": [1, 2.5, None, True], "s": "ünï ✓"}, [1, 2], "text", 3, None], [b"{not json", b"\xff\xfe", b"[1,"]),
    "string": (["hello", "ünïcode ✓", ""], [b"\xff\xfe", b"ok\xc3"]),
    "binary": ([b"\x00\x01raw", b"", b"\xff"], []),  # any bytes are a record
    "msgpack": ([{"a": 1, "b": [1, 2.5, None, True]}, "x", b"bytes", 3], [b"\xc1", b"\x92\x01", b"\xa5ab"]),
    "csv": ([["a", "b c", "with,comma", 'q"uote'], ["1", ""]], [b'a,"unterminated', b"\xff", b"a\nb"]),
    "influx": ([{"measurement": "weather", "tags": {"location": "us west"}, "fields": {"temp": 82.5, "ok": True, "n": 3, "note": 'a "b"'},
                 "timestamp": 1465839830100400200},
                {"measurement": "m", "tags": {}, "fields": {"v": 1.0}, "timestamp": None}], [b"no_fields", b"m v=1x", b"\xff"]),
    "yaml": ([{"a": 1, "b": [1, 2.5, None, True], "s": "two\nlines"}, [1, "x"], "text", 3, None],
             [b"a: [unclosed", b"!!python/object/apply:os.system [ls]", b"--- 1\n--- 2"]),
    "syslog": ([{"protocol": "rfc5424", "facility": 20, "severity": 5, "version": 1, "timestamp": "2003-10-11T22:14:15.003Z",
                 "hostname": "h", "appname": "app", "procid": None, "msgid": "ID47", "structured_data": {"x@1": {"k": 'v"]'}},
                 "message": "ünï ✓"},
                {"protocol": "rfc3164", "facility": 4, "severity": 2, "timestamp": "Oct 11 22:14:15", "hostname": "h", "appname": "su",
                 "procid": "1", "message": "m"}], [b"no pri", b"<999>1 - - - - - -", b"<13>1 - - - - - [open"]),
    "avro": ([{"id": 1, "name": "ünï ✓", "raw": b"\x00\xff", "tags": ["a"], "note": None}, {"id": -(2**63), "name": "", "raw": b"", "tags": [],
              "note": "n"}], [b"", b"\x02", b"\x02\x02a\x00\x00\x00\x00"]),
    "protobuf": ([{"id": 2**40, "name": "ünï ✓", "raw": b"\x00\xff", "tags": ["a"]}, {"id": 0, "name": "", "raw": b"", "tags": []}],
                 [b"\xff", b"\x08", b"\x0a\x05ab"]),
}  # fmt: skip
AVRO_SCHEMA = {"type": "record", "name": "R", "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"},
               {"name": "raw", "type": "bytes"}, {"name": "tags", "type": {"type": "array", "items": "string"}},
               {"name": "note", "type": ["null", "string"]}]}  # fmt: skip


def _codec_config(name: str, folder: Path) -> dict[str, Any] | None:
    """The options of codecs that need a schema, with the schema written into ``folder``."""
    if name == "avro":
        (folder / "r.avsc").write_text(json.dumps(AVRO_SCHEMA))
        return {"schema_file": "r.avsc"}
    if name == "protobuf":
        from google.protobuf import descriptor_pb2

        fd = descriptor_pb2.FileDescriptorProto(name="r.proto", package="t", syntax="proto3")
        msg = fd.message_type.add(name="R")
        optional, repeated = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL, descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
        t = descriptor_pb2.FieldDescriptorProto
        for n, (fname, ftype, label) in enumerate([("id", t.TYPE_INT64, optional), ("name", t.TYPE_STRING, optional),
                                                    ("raw", t.TYPE_BYTES, optional), ("tags", t.TYPE_STRING, repeated)], 1):  # fmt: skip
            msg.field.add(name=fname, number=n, type=ftype, label=label)
        (folder / "r.pb").write_bytes(descriptor_pb2.FileDescriptorSet(file=[fd]).SerializeToString())
        return {"descriptor_set": "r.pb", "message": "t.R"}
    return None


def _cases(table: dict[str, Any], kind: registry.Kind) -> list[Any]:
    return [pytest.param(name, id=name) for name in registry.BUILTINS[kind]]


def _load(kind: registry.Kind, name: str) -> Any:
    try:
        return registry.load(kind, name)
    except registry.UnknownPlugin as exc:  # a built-in whose module is not written yet
        pytest.skip(f"{kind[:-1]} '{name}' is not available: {exc.__cause__ or exc}")


@pytest.mark.parametrize("name", _cases(OPERATORS, "operators"))
def test_operator_contract(name: str, tmp_path: Path) -> None:
    cls = _load("operators", name)
    assert name in OPERATORS, f"add contract configs for the built-in operator '{name}' to OPERATORS"
    (tmp_path / "contract_stage.py").write_text(STAGE)
    for config in OPERATORS[name]:
        operator_contract(cls, config, base_dir=tmp_path)


@pytest.mark.parametrize("name", _cases(CODECS, "codecs"))
def test_codec_contract(name: str, tmp_path: Path) -> None:
    cls = _load("codecs", name)
    assert name in CODECS, f"add samples and garbage for the built-in codec '{name}' to CODECS"
    codec_contract(cls, *CODECS[name], config=_codec_config(name, tmp_path), base_dir=tmp_path)


# -- the suites catch what they promise to catch --------------------------------------------------


class _Leaky(Operator):
    name = "leaky"
    summary = "sends to a port it never declared"
    example = "{op: leaky}"

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        for ev in evs:
            emit("secret", ev)
        return []


class _Twice(_Leaky):
    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        for ev in evs:
            emit("err", ev.fail(self.id, ValueError("x")))
        return evs


class _Hoarder(_Leaky):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.held: list[Ev] = []

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        self.held += evs
        return []

    def flush(self, emit: Emit) -> list[Ev]:
        return list(self.held)  # never forgets: a second flush emits them again


class _LooseCodec(Codec):
    name = "loose"
    summary = "raises ValueError on garbage instead of DecodeError"

    def decode(self, data: bytes) -> Any:
        return int(bytes(data))

    def encode(self, value: Any) -> bytes:
        return str(value).encode()


class _LossyCodec(_LooseCodec):
    def decode(self, data: bytes) -> Any:
        try:
            return int(bytes(data)) // 2 * 2
        except ValueError:
            raise DecodeError("not a number") from None


@pytest.mark.parametrize(("cls", "message"), [(_Leaky, "not a declared port"), (_Twice, "two ports"), (_Hoarder, "second flush")])
def test_operator_contract_catches(cls: type[Operator], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        operator_contract(cls, {})


def test_operator_contract_catches_configs_that_accept_unknown_keys() -> None:
    from pydantic import ConfigDict

    from headrace.contract.config import PluginConfig

    class Lax(PluginConfig):
        model_config = ConfigDict(extra="allow", frozen=True)

    class LaxOp(_Leaky):
        Config = Lax

    with pytest.raises(AssertionError, match="unknown key"):
        operator_contract(LaxOp, {})


def test_codec_contract_catches() -> None:
    with pytest.raises(AssertionError, match="not DecodeError"):
        codec_contract(_LooseCodec, [4], [b"x"])
    with pytest.raises(AssertionError, match="round trip"):
        codec_contract(_LossyCodec, [4, 5])
    with pytest.raises(AssertionError, match="accepted garbage"):
        codec_contract(_LossyCodec, [4], [b"6"])


def test_the_operator_contract_catches_a_value_changed_in_place_with_its_bytes_kept(tmp_path: Path) -> None:
    """An operator that changes ``ev.value`` in place and keeps ``ev.raw`` would send the old
    bytes on: the contract suite must fail it, and pass the same operator once it assigns."""
    from typing import ClassVar

    from headrace.contract.config import NoConfig
    from headrace.contract.stage import Operator

    class InPlace(Operator):
        name = "in_place"
        Config = NoConfig
        summary = "adds a field in place"
        example = "{op: in_place}"
        assign: ClassVar[bool] = False

        def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
            for ev in evs:
                if self.assign:
                    ev.value = {**ev.value, "x": 1}
                else:
                    ev.value["x"] = 1
            return evs

    class Assigning(InPlace):
        assign = True

    with pytest.raises(AssertionError, match="changed an event's value in place but kept its original bytes"):
        operator_contract(InPlace, {}, base_dir=tmp_path)
    operator_contract(Assigning, {}, base_dir=tmp_path)
