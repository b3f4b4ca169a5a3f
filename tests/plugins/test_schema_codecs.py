"""The avro and protobuf codecs, and their schema-registry client (issue 18).

No schema registry can run here: ``tests.support.schema_registry`` serves the registry's
documented endpoints from the test process and counts the requests.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.config.errors import ConfigError
from headrace.config.load import load_file
from headrace.contract.codec import DecodeError
from headrace.plugins.codecs.avro import AvroCodec, AvroConfig
from headrace.plugins.codecs.protobuf import ProtobufCodec, ProtobufConfig, indexes_bytes
from headrace.plugins.codecs.schema_registry import RegistryConfig, wire_header
from tests.support.daemon import headrace
from tests.support.schema_registry import FakeRegistry, fake_registry

ORDER = {"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"},
    {"name": "customer", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "paid", "type": "boolean"},
    {"name": "raw", "type": "bytes"},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "attrs", "type": {"type": "map", "values": "long"}},
    {"name": "note", "type": ["null", "string"], "default": None},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]}},
]}  # fmt: skip
# the next version of the schema: a field added with a default, one dropped
ORDER_V2 = {**ORDER, "fields": [f for f in ORDER["fields"] if f["name"] != "attrs"] + [{"name": "channel", "type": "string", "default": "web"}]}


def avsc(tmp_path: Path, schema: dict[str, Any] = ORDER, name: str = "order.avsc") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return str(path)


def order(i: int) -> dict[str, Any]:
    return {"id": i, "customer": f"c{i}", "amount": i / 4, "paid": i % 2 == 0, "raw": bytes([i % 256]), "tags": ["a"] * (i % 3),
            "attrs": {"n": i}, "note": None if i % 2 else "n", "status": ["NEW", "PAID", "SHIPPED"][i % 3]}  # fmt: skip


@pytest.fixture(scope="module")
def registry() -> Iterator[FakeRegistry]:
    with fake_registry() as reg:
        yield reg


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


# -- avro, schema from a file -------------------------------------------------------------------------

_VALUES = st.fixed_dictionaries({
    "id": st.integers(-(2**63), 2**63 - 1), "customer": st.text(max_size=20),
    "amount": st.floats(allow_nan=False), "paid": st.booleans(), "raw": st.binary(max_size=20),
    "tags": st.lists(st.text(max_size=5), max_size=4), "attrs": st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3),
    "note": st.one_of(st.none(), st.text(max_size=10)), "status": st.sampled_from(["NEW", "PAID", "SHIPPED"]),
})  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(value=_VALUES)
def test_any_avro_record_survives_encode_then_decode(tmp_path_factory: pytest.TempPathFactory, value: dict[str, Any]) -> None:
    codec = AvroCodec(AvroConfig(schema_file=avsc(tmp_path_factory.getbasetemp())))
    assert codec.decode(codec.encode(value)) == value


@pytest.mark.parametrize(("record", "reason"), [
    (b"", "cut short"),
    (b"\x02\x02", "cut short"),
    (b"\x02\x02a" + b"\x00" * 8 + b"\x01\x00\x00\x00\x00\x00\x00" + b"\x00", "invalid Avro"),
])  # fmt: skip
def test_an_avro_record_that_does_not_decode_is_refused_with_the_reason(tmp_path: Path, record: bytes, reason: str) -> None:
    codec = AvroCodec(AvroConfig(schema_file=avsc(tmp_path)))
    with pytest.raises(DecodeError, match=reason):
        codec.decode(record)
    with pytest.raises(DecodeError, match="left over"):
        codec.decode(codec.encode(order(1)) + b"\x00")


@pytest.mark.parametrize(("value", "error"), [
    ({k: v for k, v in order(1).items() if k != "customer"}, "no value and no default for customer"),
    ({**order(1), "id": "one"}, "integer is required"),
    ({**order(1), "status": "LOST"}, "LOST"),
])  # fmt: skip
def test_an_event_that_does_not_match_the_schema_is_an_encode_error(tmp_path: Path, value: dict[str, Any], error: str) -> None:
    codec = AvroCodec(AvroConfig(schema_file=avsc(tmp_path)))
    with pytest.raises((ValueError, TypeError), match=error):
        codec.encode(value)


def test_strict_refuses_fields_the_schema_does_not_have(tmp_path: Path) -> None:
    assert AvroCodec(AvroConfig(schema_file=avsc(tmp_path))).encode({**order(1), "extra": 1})  # left out by default
    with pytest.raises(ValueError, match="extra"):
        AvroCodec(AvroConfig(schema_file=avsc(tmp_path), strict=True)).encode({**order(1), "extra": 1})


# -- the registry: fetched once per id, in the parent; workers get it with the job -----------------------------


def test_each_schema_id_is_fetched_once_however_many_records_and_workers_decode_with_the_shipment(tmp_path: Path,
                                                                                                  registry: FakeRegistry) -> None:  # fmt: skip
    v1 = registry.add(json.dumps(ORDER))
    v2 = registry.add(json.dumps(ORDER_V2))
    missing = 9_000_001
    plain = AvroCodec(AvroConfig(schema_file=avsc(tmp_path)))
    plain_v2 = AvroCodec(AvroConfig(schema_file=avsc(tmp_path, ORDER_V2, "v2.avsc")))
    records = [wire_header(v1) + plain.encode(order(i)) for i in range(1000)]
    records += [wire_header(v2) + plain_v2.encode({**order(i), "channel": "app"}) for i in range(1000, 1500)]
    records += [wire_header(missing) + b"\x00", b"\x01not the wire format"] * 50
    cfg = AvroConfig(registry=RegistryConfig(url=registry.url))
    parent = AvroCodec(cfg)
    before = registry.count("GET /schemas/ids/")
    for start in range(0, len(records), 100):  # batch after batch, as an onramp routes them
        run(parent.prepare(records[start : start + 100]))
    assert [registry.requests[f"GET /schemas/ids/{i}"] for i in (v1, v2, missing)] == [1, 1, 1]
    assert registry.count("GET /schemas/ids/") - before == 3

    worker = AvroCodec(cfg)  # another process's instance: it never asks the registry
    worker.receive(parent.shipment(records))
    got, refused = [], []
    for r in records:
        try:
            got.append(worker.decode(r))
        except DecodeError as exc:
            refused.append(str(exc))
    assert got[:1000] == [order(i) for i in range(1000)]
    assert got[1000:] == [{**{k: v for k, v in order(i).items() if k != "attrs"}, "channel": "app"} for i in range(1000, 1500)]
    assert refused.count(f"schema id {missing}: not in the registry (HTTP 404: Schema not found (error code 40403))") == 50
    assert sum("not in the Confluent wire format" in r for r in refused) == 50
    assert registry.count("GET /schemas/ids/") - before == 3
    assert [parent.decode(r) for r in records[:3]] == [order(i) for i in range(3)]  # the parent decodes too (stages on the loop)


@settings(max_examples=40, deadline=None)
@given(value=_VALUES)
def test_any_record_survives_the_wire_format_from_writer_to_reader(tmp_path_factory: pytest.TempPathFactory, registry: FakeRegistry,
                                                                     value: dict[str, Any]) -> None:  # fmt: skip
    reg = RegistryConfig(url=registry.url)
    writer = AvroCodec(AvroConfig(schema_file=avsc(tmp_path_factory.getbasetemp(), name="wire.avsc"), registry=reg, subject="prop-value"))
    run(writer.open())
    data = writer.encode(value)
    reader = AvroCodec(AvroConfig(registry=reg))
    run(reader.prepare([data]))
    assert reader.decode(data) == value


def test_a_reader_schema_file_resolves_every_writer_version_into_it(tmp_path: Path, registry: FakeRegistry) -> None:
    v1 = registry.add(json.dumps(ORDER))
    codec = AvroCodec(AvroConfig(schema_file=avsc(tmp_path, ORDER_V2), registry=RegistryConfig(url=registry.url)))
    record = wire_header(v1) + AvroCodec(AvroConfig(schema_file=avsc(tmp_path, ORDER, "v1.avsc"))).encode(order(7))
    run(codec.prepare([record]))
    assert codec.decode(record) == {**{k: v for k, v in order(7).items() if k != "attrs"}, "channel": "web"}


def test_writing_registers_the_subject_once_and_prefixes_its_id(tmp_path: Path, registry: FakeRegistry) -> None:
    cfg = AvroConfig(schema_file=avsc(tmp_path), registry=RegistryConfig(url=registry.url), subject="orders-value")
    parent, worker = AvroCodec(cfg), AvroCodec(cfg)
    run(parent.open())
    run(AvroCodec(cfg).open())  # the same schema again: the same id
    assert registry.count("POST /subjects/orders-value/versions") == 2
    sid = parent.writer_id
    assert sid is not None and registry.subjects["orders-value"] == [sid]
    with pytest.raises(ValueError, match="no registry id"):
        worker.encode(order(1))  # a worker knows the id only from a shipment
    worker.receive(parent.shipment(None))
    data = worker.encode(order(1))
    assert data[:5] == wire_header(sid)
    reader = AvroCodec(AvroConfig(registry=RegistryConfig(url=registry.url)))
    run(reader.prepare([data]))
    assert reader.decode(data) == order(1)


def test_without_auto_register_the_writer_only_looks_its_schema_up(tmp_path: Path, registry: FakeRegistry) -> None:
    reg = RegistryConfig(url=registry.url)
    lookup = AvroCodec(AvroConfig(schema_file=avsc(tmp_path), registry=reg, subject="lookup-value", auto_register=False))
    with pytest.raises(RuntimeError, match=r"refused the schema it writes: HTTP 404: Subject 'lookup-value' not found"):
        run(lookup.open())
    sid = registry.add(json.dumps(ORDER, separators=(",", ":")), subject="lookup-value")
    run(lookup.open())
    assert lookup.writer_id == sid and lookup.encode(order(1))[:5] == wire_header(sid)
    assert registry.count("POST /subjects/lookup-value/versions") == 0 and registry.requests["POST /subjects/lookup-value"] == 2


def test_a_registry_that_is_down_holds_the_records_back_until_it_answers(tmp_path: Path, registry: FakeRegistry) -> None:
    sid = registry.add(json.dumps(ORDER))
    codec = AvroCodec(AvroConfig(registry=RegistryConfig(url=registry.url)))
    record = wire_header(sid) + AvroCodec(AvroConfig(schema_file=avsc(tmp_path))).encode(order(3))

    async def scenario() -> None:
        registry.down = True
        try:
            task = asyncio.ensure_future(codec.prepare([record]))
            while registry.count(f"GET /schemas/ids/{sid}") < 2:  # asked again with backoff, not given up
                await asyncio.sleep(0.05)
            assert not task.done()
        finally:
            registry.down = False
        await task

    run(scenario())
    assert codec.decode(record) == order(3)


def test_credentials_go_with_every_request(tmp_path: Path) -> None:
    with fake_registry(auth="Basic " + base64.b64encode(b"key:secret").decode()) as reg:
        sid = reg.add(json.dumps(ORDER))
        record = wire_header(sid) + AvroCodec(AvroConfig(schema_file=avsc(tmp_path))).encode(order(1))
        good = AvroCodec(AvroConfig.model_validate({"registry": {"url": reg.url, "auth": {"type": "basic", "user": "key", "password": "secret"}}}))
        run(good.prepare([record]))
        assert good.decode(record) == order(1)
        bad = AvroCodec(AvroConfig.model_validate({"registry": {"url": reg.url, "auth": {"type": "basic", "user": "key", "password": "wrong"}}}))
        run(bad.prepare([record]))
        with pytest.raises(DecodeError, match="HTTP 401"):
            bad.decode(record)


def test_a_schema_of_another_type_is_refused(registry: FakeRegistry) -> None:
    sid = registry.add("syntax = 'proto3';", "PROTOBUF")
    codec = AvroCodec(AvroConfig(registry=RegistryConfig(url=registry.url)))
    run(codec.prepare([wire_header(sid) + b"\x00"]))
    with pytest.raises(DecodeError, match="is a PROTOBUF schema, not AVRO"):
        codec.decode(wire_header(sid) + b"\x00")


# -- protobuf ---------------------------------------------------------------------------------------------

F = descriptor_pb2.FieldDescriptorProto


def shop_file() -> descriptor_pb2.FileDescriptorProto:
    """shop.proto, built as protoc would compile it: Order (with a nested Line), Customer, an enum Status."""
    fd = descriptor_pb2.FileDescriptorProto(name="shop.proto", package="shop", syntax="proto3", dependency=["google/protobuf/timestamp.proto"])

    def field(msg: Any, name: str, num: int, typ: int, label: int = F.LABEL_OPTIONAL, type_name: str = "") -> None:
        f = msg.field.add(name=name, number=num, type=typ, label=label)
        if type_name:
            f.type_name = type_name

    fd.message_type.add(name="Customer").field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    m = fd.message_type.add(name="Order")
    field(m, "id", 1, F.TYPE_INT64)
    field(m, "customer", 2, F.TYPE_STRING)
    field(m, "amount", 3, F.TYPE_DOUBLE)
    field(m, "tags", 4, F.TYPE_STRING, F.LABEL_REPEATED)
    field(m, "status", 5, F.TYPE_ENUM, type_name=".shop.Status")
    field(m, "lines", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".shop.Order.Line")
    field(m, "raw", 7, F.TYPE_BYTES)
    field(m, "at", 8, F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    entry = m.nested_type.add(name="AttrsEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_INT64)
    field(m, "attrs", 9, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".shop.Order.AttrsEntry")
    line = m.nested_type.add(name="Line")
    field(line, "sku", 1, F.TYPE_STRING)
    field(line, "qty", 2, F.TYPE_INT32)
    status = fd.enum_type.add(name="Status")
    for i, n in enumerate(["NEW", "PAID", "SHIPPED"]):
        status.value.add(name=n, number=i)
    return fd


def descriptor_set(tmp_path: Path) -> str:
    """What ``protoc --include_imports --descriptor_set_out`` writes for shop.proto."""
    from google.protobuf import timestamp_pb2

    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    path = tmp_path / "shop.pb"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=[ts, shop_file()]).SerializeToString())
    return str(path)


def proto_order(i: int) -> dict[str, Any]:
    return {"id": 2**40 + i, "customer": f"c{i}", "amount": i / 4, "tags": ["a"] * (i % 3), "status": ["NEW", "PAID", "SHIPPED"][i % 3],
            "lines": [{"sku": "s", "qty": i}], "raw": bytes([i % 256]), "at": {"seconds": i, "nanos": 0}, "attrs": {"n": i}}  # fmt: skip


_PROTO_VALUES = st.fixed_dictionaries({
    "id": st.integers(-(2**63), 2**63 - 1), "customer": st.text(max_size=20), "amount": st.floats(allow_nan=False),
    "tags": st.lists(st.text(max_size=5), max_size=4), "status": st.sampled_from(["NEW", "PAID", "SHIPPED"]),
    "lines": st.lists(st.fixed_dictionaries({"sku": st.text(max_size=5), "qty": st.integers(-(2**31), 2**31 - 1)}), max_size=3),
    "raw": st.binary(max_size=10), "at": st.one_of(st.none(), st.fixed_dictionaries({"seconds": st.integers(0, 2**40), "nanos": st.integers(0, 999_999_999)})),
    "attrs": st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=3),
})  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(value=_PROTO_VALUES)
def test_any_protobuf_message_survives_encode_then_decode(tmp_path_factory: pytest.TempPathFactory, value: dict[str, Any]) -> None:
    codec = ProtobufCodec(ProtobufConfig(descriptor_set=descriptor_set(tmp_path_factory.getbasetemp()), message="shop.Order"))
    back = codec.decode(codec.encode(value))
    assert back == value or (math.isnan(value["amount"]) and back["amount"] != back["amount"])


def test_protobuf_refuses_what_does_not_parse_or_fit(tmp_path: Path) -> None:
    codec = ProtobufCodec(ProtobufConfig(descriptor_set=descriptor_set(tmp_path), message="shop.Order"))
    for garbage in (b"\xff", b"\x08", b"\x0a\x05ab"):
        with pytest.raises(DecodeError, match="invalid protobuf"):
            codec.decode(garbage)
    with pytest.raises(ValueError, match=r"shop\.Order has no field 'nope'"):
        codec.encode({"nope": 1})
    with pytest.raises(TypeError, match=r"shop\.Order\.id"):
        codec.encode({"id": "one"})
    with pytest.raises(ValueError, match="LOST"):
        codec.encode({"status": "LOST"})
    assert codec.decode(codec.encode({})) == {"id": 0, "customer": "", "amount": 0.0, "tags": [], "status": "NEW", "lines": [], "raw": b"",
                                              "at": None, "attrs": {}}  # fmt: skip


def test_a_missing_proto2_required_field_is_an_encode_error(tmp_path: Path) -> None:
    fd = descriptor_pb2.FileDescriptorProto(name="p2.proto", package="p2", syntax="proto2")
    msg = fd.message_type.add(name="M")
    msg.field.add(name="must", number=1, type=F.TYPE_STRING, label=F.LABEL_REQUIRED)
    msg.field.add(name="may", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    (tmp_path / "p2.pb").write_bytes(descriptor_pb2.FileDescriptorSet(file=[fd]).SerializeToString())
    codec = ProtobufCodec(ProtobufConfig(descriptor_set=str(tmp_path / "p2.pb"), message="p2.M"))
    assert codec.decode(codec.encode({"must": "x"})) == {"must": "x", "may": 0}
    with pytest.raises(ValueError, match="required field"):
        codec.encode({"may": 1})


def test_protobuf_in_the_wire_format_fetches_each_id_once_and_follows_the_message_indexes(tmp_path: Path, registry: FakeRegistry) -> None:
    fdp = shop_file()
    sid = registry.add("syntax = 'proto3'; // the .proto text", "PROTOBUF", serialized=fdp.SerializeToString(), subject="shop-value")
    local = ProtobufCodec(ProtobufConfig(descriptor_set=descriptor_set(tmp_path), message="shop.Order"))
    line = ProtobufCodec(ProtobufConfig(descriptor_set=descriptor_set(tmp_path), message="shop.Order.Line"))
    # Order is the file's second message ([1]); Line is nested in it ([1, 1]); Customer is the first (the single 0)
    records = [wire_header(sid) + indexes_bytes([1]) + local.encode(proto_order(i)) for i in range(300)]
    records += [wire_header(sid) + indexes_bytes([1, 1]) + line.encode({"sku": "x", "qty": 5})]
    records += [wire_header(sid) + b"\x00" + b"\x0a\x03ann"]
    records += [wire_header(sid) + indexes_bytes([7]) + b""]
    cfg = ProtobufConfig(registry=RegistryConfig(url=registry.url))
    parent, worker = ProtobufCodec(cfg), ProtobufCodec(cfg)
    for start in range(0, len(records), 50):
        run(parent.prepare(records[start : start + 50]))
    assert registry.requests[f"GET /schemas/ids/{sid}?format=serialized"] == 1
    worker.receive(parent.shipment(records))
    assert [worker.decode(r) for r in records[:300]] == [proto_order(i) for i in range(300)]
    assert worker.decode(records[300]) == {"sku": "x", "qty": 5}
    assert worker.decode(records[301]) == {"name": "ann"}
    with pytest.raises(DecodeError, match=r"message indexes \[7\] name no message type"):
        worker.decode(records[302])

    writer_cfg = ProtobufConfig(descriptor_set=descriptor_set(tmp_path), message="shop.Order", registry=RegistryConfig(url=registry.url),
                                subject="shop-value")  # fmt: skip
    writer = ProtobufCodec(writer_cfg)
    run(writer.open())
    assert writer.encode(proto_order(1)) == records[1]
    assert registry.requests["GET /subjects/shop-value/versions/latest"] == 1


def test_a_protobuf_schema_with_references_is_refused_with_the_reason(registry: FakeRegistry) -> None:
    sid = registry.add("x", "PROTOBUF", serialized=shop_file().SerializeToString(),
                       references=[{"name": "other.proto", "subject": "other", "version": 1}])  # fmt: skip
    codec = ProtobufCodec(ProtobufConfig(registry=RegistryConfig(url=registry.url)))
    run(codec.prepare([wire_header(sid) + b"\x00"]))
    with pytest.raises(DecodeError, match="references other schemas"):
        codec.decode(wire_header(sid) + b"\x00")


# -- config: checked before anything starts ------------------------------------------------------------------


@pytest.mark.parametrize(("codec", "message"), [
    ("avro", "codec 'avro' of onramp 'src' needs options: give a schema file, a registry, or both"),
    ("{name: avro, schema_file: missing.avsc}", "schema_file: cannot read"),
    ("{name: avro, schema_file: bad.avsc}", "is not a valid Avro schema"),
    ("{name: avro, schema_file: order.avsc, subject: s}", "subject: a subject is registered with `schema_file` in the `registry`"),
    ("{name: protobuf, descriptor_set: shop.pb, message: shop.Nope}", "has no message type 'shop.Nope'"),
    ("{name: protobuf, descriptor_set: order.avsc, message: shop.Order}", "is not a FileDescriptorSet"),
    ("{name: protobuf, registry: {url: 'ftp://x'}}", "url"),
])  # fmt: skip
def test_check_reports_codec_settings_that_cannot_work(tmp_path: Path, codec: str, message: str) -> None:
    avsc(tmp_path)
    (tmp_path / "bad.avsc").write_text('{"type": "record", "name": "R", "fields": [{"name": "a", "type": "nope"}]}')
    descriptor_set(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""version: 1
onramps: {{src: {{type: stdin, codec: {codec}}}}}
offramps: {{out: {{type: stdout}}}}
links: {{src: [out]}}
""")
    with pytest.raises(ConfigError) as info:
        load_file(cfg)
    text = str(info.value)
    assert message in text
    assert "c.yaml:2:" in text


def test_check_accepts_relative_schema_files(tmp_path: Path) -> None:
    avsc(tmp_path)
    descriptor_set(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""version: 1
onramps: {src: {type: stdin, codec: {name: avro, schema_file: order.avsc}}}
offramps:
  out: {type: stdout, codec: {name: protobuf, descriptor_set: shop.pb, message: shop.Order}}
  reg: {type: stdout, codec: {name: avro, schema_file: order.avsc, registry: {url: "http://127.0.0.1:9"}, subject: s}}
links: {src: [out, reg]}
""")
    proc = headrace("check", str(cfg), cwd=Path("/"))  # the registry is never asked (nothing listens there)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    graph = load_file(cfg)
    assert graph.codecs["avro@src"].config.schema_file == str(tmp_path / "order.avsc")  # what the workers get: resolved


# -- end to end: avro wire-format records over TCP -> a python stage on the workers -> avro and json ------------------

STAGES = '''
def count_lines(event, meta):
    event["n_lines"] = len(event["lines"])
    return event


def enrich(event, meta):
    event["customer"] = event["customer"].upper()
    event["total"] = event["amount"] * 2  # not in the schema: the json copy of main's output has it
    if event["id"] == 7:
        event["id"] = "seven"  # the avro offramp cannot write this: its err port, with the reason
    return event
'''


def _frames(data: bytes) -> list[bytes]:
    """The complete length-prefixed frames of a file a daemon may still be writing."""
    out, pos = [], 0
    while pos + 4 <= len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        if pos + 4 + n > len(data):
            break
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_avro_wire_format_over_tcp_through_workers_to_avro_and_json(tmp_path: Path) -> None:
    import socket

    from tests.support.daemon import Daemon, free_port, json_lines

    v1_path, v2_path = avsc(tmp_path, ORDER, "v1.avsc"), avsc(tmp_path, ORDER_V2, "v2.avsc")
    (tmp_path / "stages.py").write_text(STAGES)
    port, pb_port = free_port(), free_port()
    local = ProtobufCodec(ProtobufConfig(descriptor_set=descriptor_set(tmp_path), message="shop.Order"))
    with fake_registry() as reg:
        v1, v2 = reg.add(json.dumps(ORDER)), reg.add(json.dumps(ORDER_V2))
        shop = reg.add("syntax = 'proto3'; // shop.proto", "PROTOBUF", serialized=shop_file().SerializeToString())
        pb_records = [wire_header(shop) + indexes_bytes([1]) + local.encode(proto_order(i)) for i in range(500)]
        pb_records += [wire_header(shop) + indexes_bytes([5]) + b"", wire_header(shop) + indexes_bytes([1]) + b"\xff"]
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"""version: 1
daemon: {{workers: 2, metrics: {{listen: null}}}}
onramps:
  src:
    type: tcp
    codec: {{name: avro, schema_file: v2.avsc, registry: {{url: "{reg.url}"}}}}
    preprocessors: [length-prefixed]
    config: {{port: {port}}}
  pb:
    type: tcp
    codec: {{name: protobuf, registry: {{url: "{reg.url}"}}}}
    preprocessors: [length-prefixed]
    config: {{port: {pb_port}}}
pipelines:
  main: [{{op: python, fn: "stages:enrich"}}]
  pbmain: [{{op: python, fn: "stages:count_lines"}}]
  copy: [{{op: filter, where: "event['id'] >= 0"}}]
offramps:
  enriched:
    type: file
    codec: {{name: avro, schema_file: v2.avsc, registry: {{url: "{reg.url}"}}, subject: orders-enriched}}
    postprocessors: [length-prefixed]
    config: {{path: enriched.avro}}
  copied: {{type: file, codec: json, config: {{path: copy.ndjson}}}}
  pbout: {{type: file, codec: json, config: {{path: pb.ndjson}}}}
  mainjson: {{type: file, codec: json, config: {{path: main.ndjson}}}}
  errs: {{type: file, codec: json, with_meta: true, config: {{path: errs.ndjson}}}}
links:
  src: [main, copy]
  src/err: [errs]
  main: [enriched, mainjson]
  main/err: [errs]
  enriched/err: [errs]
  copy: [copied]
  pb: [pbmain]
  pb/err: [errs]
  pbmain: [pbout]
""")
        w1 = AvroCodec(AvroConfig(schema_file=v1_path))
        w2 = AvroCodec(AvroConfig(schema_file=v2_path))
        records = [wire_header(v1) + w1.encode(order(i)) if i % 4 else wire_header(v2) + w2.encode({**order(i), "channel": "app"})
                   for i in range(2000)]  # fmt: skip
        bad = [wire_header(999) + b"\x00"] * 5 + [b"\x07junk"] * 5 + [wire_header(v1) + w1.encode(order(1))[:3]]
        stream = b"".join(len(r).to_bytes(4, "big") + r for r in records[:1000] + bad + records[1000:])
        d = Daemon(cfg)
        try:
            d.wait_for(lambda: _listening(port), timeout=30)
            d.wait_for(lambda: _listening(pb_port), timeout=30)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(stream)
            with socket.create_connection(("127.0.0.1", pb_port), timeout=10) as s:
                s.sendall(b"".join(len(r).to_bytes(4, "big") + r for r in pb_records))
            d.wait_for(lambda: len(_frames(_read(tmp_path / "enriched.avro"))) == 1999 and len(json_lines(tmp_path / "copy.ndjson")) == 2000
                       and len(json_lines(tmp_path / "errs.ndjson")) == 14 and len(json_lines(tmp_path / "pb.ndjson")) == 500
                       and len(json_lines(tmp_path / "main.ndjson")) == 2000, timeout=60)  # fmt: skip
        finally:
            assert d.stop() == 0, d.stderr()
        asked = {k: n for k, n in reg.requests.items() if k.startswith("GET")}
        assert asked == {f"GET /schemas/ids/{v1}": 1, f"GET /schemas/ids/{v2}": 1, "GET /schemas/ids/999": 1,
                         f"GET /schemas/ids/{shop}?format=serialized": 1}, asked  # fmt: skip
        assert reg.requests["POST /subjects/orders-enriched/versions"] == 1
        written = reg.subjects["orders-enriched"][0]

        def expected(i: int) -> dict[str, Any]:
            v = {k: x for k, x in order(i).items() if k != "attrs"}
            return {**v, "channel": "web" if i % 4 else "app"}

        reader = AvroCodec(AvroConfig(registry=RegistryConfig(url=reg.url)))
        frames = _frames(_read(tmp_path / "enriched.avro"))
        run(reader.prepare(frames))
        assert {f[:5] for f in frames} == {wire_header(written)}
        assert sorted((reader.decode(f) for f in frames), key=lambda e: e["id"]) == [
            {**expected(i), "customer": f"C{i}"} for i in range(2000) if i != 7
        ]
    mains = sorted(json_lines(tmp_path / "main.ndjson"), key=lambda e: str(e["id"]))  # between stages a field the schema lacks survives
    assert len(mains) == 2000 and all(e["total"] == e["amount"] * 2 and e["customer"].startswith("C") for e in mains)
    copies = json_lines(tmp_path / "copy.ndjson")
    assert sorted(c["id"] for c in copies) == list(range(2000)) and copies[0]["raw"] == "\x00" and copies[1]["channel"] == "web"
    errs = json_lines(tmp_path / "errs.ndjson")
    reasons = sorted(e["meta"]["error"]["message"] for e in errs)
    assert reasons.count("schema id 999: not in the registry (HTTP 404: Schema not found (error code 40403))") == 5
    assert sum("not in the Confluent wire format" in r for r in reasons) == 5
    assert sum("cut short" in r for r in reasons) == 1
    assert sum("message indexes [5] name no message type of shop.proto" in r for r in reasons) == 1
    assert sum("invalid protobuf" in r for r in reasons) == 1
    pbs = json_lines(tmp_path / "pb.ndjson")
    assert sorted(e["id"] for e in pbs) == [2**40 + i for i in range(500)] and all(e["n_lines"] == 1 for e in pbs)
    (unwritable,) = [e for e in errs if e["meta"]["error"]["stage"] == "enriched"]
    assert unwritable["event"]["id"] == "seven" and "integer is required" in unwritable["meta"]["error"]["message"]


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_records_wait_while_the_registry_is_down_and_none_is_lost(tmp_path: Path) -> None:
    import socket

    from tests.support.daemon import Daemon, free_port, json_lines

    port = free_port()
    writer = AvroCodec(AvroConfig(schema_file=avsc(tmp_path)))
    with fake_registry() as reg:
        sid = reg.add(json.dumps(ORDER))
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"""version: 1
daemon: {{workers: 2, metrics: {{listen: null}}}}
onramps:
  src: {{type: tcp, codec: {{name: avro, registry: {{url: "{reg.url}"}}}}, preprocessors: [length-prefixed], config: {{port: {port}}}}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  errs: {{type: file, codec: json, with_meta: true, config: {{path: errs.ndjson}}}}
links: {{src: [out], src/err: [errs]}}
""")
        reg.down = True
        d = Daemon(cfg)
        try:
            d.wait_for(lambda: _listening(port), timeout=30)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"".join(len(r).to_bytes(4, "big") + r for r in (wire_header(sid) + writer.encode(order(i)) for i in range(300))))
                d.wait_for(lambda: reg.count(f"GET /schemas/ids/{sid}") >= 3, timeout=30)  # asked again with backoff
                assert not (tmp_path / "out.ndjson").exists() or not json_lines(tmp_path / "out.ndjson")
                assert not json_lines(tmp_path / "errs.ndjson")  # held back, not dead-lettered
                reg.down = False
                d.wait_for(lambda: len(json_lines(tmp_path / "out.ndjson")) == 300, timeout=30)
        finally:
            assert d.stop() == 0, d.stderr()
    assert [e["id"] for e in json_lines(tmp_path / "out.ndjson")] == list(range(300))
    assert not json_lines(tmp_path / "errs.ndjson")
    assert "cannot fetch schema id" in d.stderr()


def test_a_field_a_stage_adds_survives_between_stages_on_workers(tmp_path: Path) -> None:
    """Events modified on a worker and bound for several codecs go on as values, not re-encoded in
    the onramp's Avro schema (which would drop the new field)."""
    from tests.support.daemon import Daemon, json_lines

    codec = AvroCodec(AvroConfig(schema_file=avsc(tmp_path)))
    (tmp_path / "in.avro").write_bytes(b"".join(len(r).to_bytes(4, "big") + r for r in (codec.encode(order(i)) for i in range(200))))
    (tmp_path / "stages.py").write_text('def total(event, meta):\n    event["total"] = event["amount"] * 2\n    return event\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""version: 1
daemon: {workers: 2, metrics: {listen: null}}
onramps: {src: {type: file, codec: {name: avro, schema_file: order.avsc}, preprocessors: [length-prefixed], config: {path: in.avro}}}
pipelines: {main: [{op: python, fn: "stages:total"}]}
offramps:
  a: {type: file, codec: json, config: {path: a.ndjson}}
  b: {type: file, codec: msgpack, postprocessors: [length-prefixed], config: {path: b.msgpack}}
links: {src: [main], main: [a, b]}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    got = json_lines(tmp_path / "a.ndjson")
    assert sorted(e["id"] for e in got) == list(range(200)) and all(e["total"] == e["amount"] * 2 for e in got)


def test_a_writer_schema_the_registry_refuses_fails_the_start_naming_the_codec(tmp_path: Path) -> None:
    from tests.support.daemon import Daemon

    avsc(tmp_path)
    with fake_registry() as reg:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"""version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: stdin}}}}
offramps:
  out: {{type: stdout, codec: {{name: avro, schema_file: order.avsc, registry: {{url: "{reg.url}"}}, subject: nope-value, auto_register: false}}}}
links: {{src: [out]}}
""")
        d = Daemon(cfg)
        assert d.wait(60) == 1
    assert "cannot start: codec avro@out" in d.stderr() and "Subject 'nope-value' not found" in d.stderr(), d.stderr()
