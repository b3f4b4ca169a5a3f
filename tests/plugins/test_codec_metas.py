"""Every codec writes every meta a built-in onramp produces, with ``with_meta: true`` too (issue 12 item 1).

The metas below are what each onramp sets (see ``headrace/plugins/onramps/``), plus the
``error`` an err port adds. Kafka keys and header values are ``bytes``, not always UTF-8.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from headrace import registry
from headrace.contract.codec import Codec

ERROR = {"stage": "main.classify", "type": "ValueError", "message": 'boom "quoted"\nsecond line'}
ONRAMP_METAS: dict[str, dict[str, Any]] = {
    "kafka": {"kafka_topic": "orders", "kafka_partition": 3, "kafka_offset": 17, "kafka_key": b"\xff\x00key",
              "kafka_headers": {"trace": b"abc-1", "bin": b"\x80\x81"}, "kafka_timestamp": 1_700_000_000_000},
    "kafka keyless": {"kafka_topic": "orders", "kafka_partition": 0, "kafka_offset": 0, "kafka_key": None, "kafka_headers": {},
                      "kafka_timestamp": 1_700_000_000_000},
    "kafka text key": {"kafka_topic": "t", "kafka_partition": 0, "kafka_offset": 1, "kafka_key": "ключ".encode(),
                       "kafka_headers": {"h": b""}, "kafka_timestamp": 0},
    "http": {"http_path": "/ingest", "http_method": "POST", "http_headers": {"content-type": "application/json", "x-id": "7"}},
    "tcp": {"tcp_peer": "127.0.0.1:50000"},
    "udp": {"udp_peer": "127.0.0.1:50001"},
    "unix": {"unix_path": "/run/headrace/in.sock"},
}  # fmt: skip
EVENTS: dict[str, Any] = {
    "json": {"id": 1, "raw": b"\xfe"}, "msgpack": {"id": 1}, "yaml": {"id": 1}, "string": "a line", "binary": b"\x00\xff",
    "csv": ["a", "b,c"], "influx": {"measurement": "cpu", "tags": {"host": "a"}, "fields": {"v": 1.5}, "timestamp": None},
}  # fmt: skip


def as_json(value: Any) -> Any:
    """What the json codec's rule makes of a value: bytes as text when UTF-8, else {"base64": ...}."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def meta_written(name: str, codec: Codec, record: bytes) -> Any:
    """The meta as a reader of a ``with_meta`` record of this codec finds it."""
    if name in ("json", "string", "binary"):
        return json.loads(record)["meta"]
    if name in ("msgpack", "yaml"):
        return codec.decode(record)["meta"]
    if name == "csv":
        return json.loads(codec.decode(record)[-1])
    return json.loads(codec.decode(record)["fields"]["meta"])


@pytest.mark.parametrize("onramp", sorted(ONRAMP_METAS))
@pytest.mark.parametrize("name", sorted(EVENTS))
def test_with_meta_writes_every_onramp_meta(name: str, onramp: str) -> None:
    codec = registry.make_codec(name, {})
    meta = {**ONRAMP_METAS[onramp], "error": ERROR}
    record = codec.encode_with_meta(EVENTS[name], meta)
    binary_native = name in ("msgpack", "yaml")  # they have a bytes type: nothing is converted
    assert meta_written(name, codec, record) == (meta if binary_native else as_json(meta))


@pytest.mark.parametrize("name", ["json", "string", "binary", "msgpack", "yaml"])
def test_event_values_holding_bytes_are_written(name: str) -> None:
    codec = registry.make_codec(name, {})
    value = {"key": b"\xff\x00", "text": b"plain"}
    record = codec.encode(value)
    got = codec.decode(record) if name in ("msgpack", "yaml") else json.loads(record)
    assert got == (value if name in ("msgpack", "yaml") else {"key": {"base64": "/wA="}, "text": "plain"})


def test_csv_cells_holding_lists_mappings_or_bytes_are_json_not_python_repr() -> None:
    codec = registry.make_codec("csv", {})
    assert codec.encode([{"a": 1}, [1, "x"], b"\xff", b"ok", None]) == b'"{""a"":1}","[1,""x""]","{""base64"":""/w==""}",ok,'
