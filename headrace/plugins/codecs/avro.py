"""Avro records (fastavro) <-> values, with a schema from a file, or named by a schema registry.

With ``schema_file`` only, a record is the Avro binary encoding of one value of that schema (no
header: Avro's "schemaless" single datum). With ``registry``, records are in the Confluent
wire format: the magic byte 0, the writer's schema id (4 bytes, big-endian), then the Avro
binary. Each id's schema is fetched from the registry once, in the parent, and cached
(workers get it with the jobs that need it); with ``schema_file`` too, that file is the reader's
schema and records are resolved into it (Avro schema resolution: added fields take their
defaults, removed ones are dropped). Writing with a registry registers ``schema_file`` under
``subject`` once, at start (or, with ``auto_register: false``, only looks its id up), and writes
its id before every record.

Values: records are dicts, arrays lists, maps dicts, ``bytes`` and ``fixed`` are ``bytes``
(JSON writes them as text or ``{"base64": ...}``), enums their symbol, unions the value.
Logical types are fastavro's: ``timestamp-millis``/``-micros`` a ``datetime``, ``date`` a
``date``, ``uuid`` a ``UUID``, ``decimal`` a ``Decimal`` (JSON cannot write a Decimal: a
stage should turn it into a string or a number).

Refused (to ``err`` with the reason): a record that does not decode with its schema (cut
short, bytes left over after it), a wire-format record whose schema id the registry does not
have, and, when writing, an event missing a field that has no default or holding a value of
the wrong type (``strict: true`` also refuses fields the schema does not have).

``registry: {url, auth: {type: basic, user, password} | {type: bearer, token}, timeout}``;
what is fetched when, and what happens while the registry cannot be reached: docs/schemas.md.
The registry client is tested against a local stand-in serving the registry's documented
endpoints (no registry server can run in the test environment).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from pydantic import Field

from headrace.contract.codec import DecodeError
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.paths import SettingError
from headrace.errors import safe_str
from headrace.plugins.codecs.schema_registry import HEADER, RegistryCodec, RegistryConfig, SchemaRegistry


class AvroConfig(PluginConfig):
    schema_file: str | None = Field(None, description="an Avro schema file (.avsc, JSON), relative to the config's folder: "
                                "the schema of every record without a registry; with one, the reader's schema and the one written")
    registry: RegistryConfig | None = Field(None, description="a Confluent schema registry: records carry the magic byte and schema id "
                                            "before the Avro binary; each id's schema is fetched once, in the parent")
    subject: str | None = Field(None, min_length=1, description="writing with a registry: the subject `schema_file` is registered under "
                                "(once, at start), e.g. orders-value")
    auto_register: bool = Field(True, description="writing with a registry: register `schema_file` under `subject` if it is new; false: "
                           "only look its id up (POST /subjects/{subject}), and fail the start when the registry does not have it")
    strict: bool = Field(False, description="writing: refuse an event with fields the schema does not have (by default they are left out)")


def load_schema(path: Path) -> tuple[Any, str]:
    """The parsed schema of an .avsc file, and its JSON text as registered."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return fastavro.parse_schema(doc), json.dumps(doc, separators=(",", ":"))


class AvroCodec(RegistryCodec):
    name = "avro"
    summary = "Avro binary with a schema file, or in the Confluent wire format with a schema registry (schemas fetched once, in the parent)"
    Config = AvroConfig
    carries_any = False  # a stage's new fields would be dropped: between stages, workers pass modified events as values
    schema_type = "AVRO"

    def __init__(self, config: AvroConfig | None = None, context: PluginContext | None = None) -> None:
        super().__init__(config, context)
        cfg: AvroConfig = self.config  # type: ignore[assignment]
        self.cfg = cfg
        self.schema: Any = None
        self.text = ""
        if cfg.schema_file is not None:
            self.schema, self.text = load_schema(Path(cfg.schema_file))
        self.reader = self.schema if self.client is not None else None  # with a registry, the file is the reader's schema

    @classmethod
    def settle(cls, config: PluginConfig, context: PluginContext) -> PluginConfig:
        cfg: AvroConfig = config  # type: ignore[assignment]
        if cfg.schema_file is None and cfg.registry is None:
            raise SettingError("schema_file", "give a schema file, a registry, or both")
        if cfg.subject is not None and (cfg.registry is None or cfg.schema_file is None):
            raise SettingError("subject", "a subject is registered with `schema_file` in the `registry`: give both")
        if cfg.schema_file is None:
            return cfg
        path = context.resolve(cfg.schema_file)
        try:
            load_schema(path)
        except OSError as exc:
            raise SettingError("schema_file", f"cannot read {path}: {exc.strerror or exc}") from None
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            raise SettingError("schema_file", f"{path} is not a valid Avro schema: {safe_str(exc)}") from None
        return cfg.model_copy(update={"schema_file": str(path)})

    def compile(self, answer: dict[str, Any]) -> Any:
        return fastavro.parse_schema(json.loads(answer["schema"]))

    async def writer(self, client: SchemaRegistry) -> int | None:
        if self.cfg.subject is None:
            return None
        if self.cfg.auto_register:
            return await client.register(self.cfg.subject, self.text, "AVRO")
        return await client.lookup(self.cfg.subject, self.text, "AVRO")

    def decode(self, data: bytes) -> Any:
        if self.client is None:
            writer, start = self.schema, 0
        else:
            writer = self.by_head.get(data[:HEADER]) or self.schema_of(data)  # one dict look-up per record
            start = HEADER
        buf = io.BytesIO(data)
        if start:
            buf.seek(start)
        try:
            value = fastavro.schemaless_reader(buf, writer, self.reader)
        except (EOFError, StopIteration):
            raise DecodeError("invalid Avro: the record is cut short") from None
        except SchemaResolutionError as exc:
            raise DecodeError(f"Avro: the writer's schema does not resolve into the reader's: {safe_str(exc)}") from None
        except (ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise DecodeError(f"invalid Avro: {type(exc).__name__}: {safe_str(exc)}") from None
        if buf.tell() != len(data):
            raise DecodeError(f"invalid Avro: {len(data) - buf.tell()} byte(s) left over after the record")
        return value

    def encode(self, value: Any) -> bytes:
        if self.schema is None:
            raise ValueError("codec avro: writing needs a schema file (`schema_file`)")
        buf = io.BytesIO()
        if self.client is not None:
            buf.write(self.header())
        fastavro.schemaless_writer(buf, self.schema, value, strict=self.cfg.strict, strict_allow_default=self.cfg.strict)
        return buf.getvalue()
