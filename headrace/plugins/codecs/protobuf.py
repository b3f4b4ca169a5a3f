"""Protocol Buffers messages <-> dicts, with types from a descriptor set, or named by a schema registry.

``descriptor_set`` is a compiled ``FileDescriptorSet`` (``protoc --include_imports
--descriptor_set_out=orders.pb orders.proto``); ``message`` names the type of every record
(``shop.Order``). With ``registry``, records are in the Confluent wire format: the magic byte
0, the schema id (4 bytes, big-endian), the message indexes (zig-zag varints: their count,
then the path of the type in its file; a single 0 for the first message), then the message.
The id's schema is fetched from the registry once, in the parent, as a serialized file
descriptor (``GET /schemas/ids/{id}?format=serialized``) and given to the workers with the
jobs that need it; its imports may be the well-known types (``google/protobuf/*.proto``);
a schema with other references is refused. Writing with a registry (``subject``, with
``descriptor_set`` and ``message``) writes the id of the subject's latest version (looked up
once, at start; register it with the registry's tools, from the ``.proto``).

Values: a message is a dict with every field of its type (unset scalars as their default, an
unset message field as None), repeated fields are lists, maps dicts, enums their name (the
number when unknown), ``bytes`` fields ``bytes``, 64-bit integers ``int``. Writing takes the
same shape (enum names or numbers; a missing field is left unset); a key the type has no
field for, a value of the wrong type or a missing proto2 ``required`` field is refused (to
``err`` with the reason), as is a record that does not parse.

``registry: {url, auth: {type: basic, user, password} | {type: bearer, token}, timeout}``;
what is fetched when, and what happens while the registry cannot be reached: docs/schemas.md.
The registry client is tested against a local stand-in serving the registry's documented
endpoints (no registry server can run in the test environment).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message
from pydantic import Field

from headrace.contract.codec import DecodeError
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.paths import SettingError
from headrace.errors import safe_str
from headrace.plugins.codecs.protobuf_values import fill, to_value
from headrace.plugins.codecs.schema_registry import HEADER, RegistryCodec, RegistryConfig, SchemaRegistry

_WELL_KNOWN = "google/protobuf/"


class ProtobufConfig(PluginConfig):
    descriptor_set: str | None = Field(None, description="a FileDescriptorSet file (protoc --include_imports --descriptor_set_out=...), "
                                       "relative to the config's folder")
    message: str | None = Field(None, min_length=1, description="the full name of every record's message type, e.g. shop.Order")
    registry: RegistryConfig | None = Field(None, description="a Confluent schema registry: records carry the magic byte, schema id and "
                                            "message indexes before the message; each id's schema is fetched once, in the parent")
    subject: str | None = Field(None, min_length=1, description="writing with a registry: the subject whose latest schema id is written "
                                "(looked up once, at start)")


def load_message(path: Path, name: str) -> type[Message]:
    """The message class ``name`` from the descriptor set at ``path``."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    cls: type[Message] = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    return cls


def _zigzag(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_zigzag(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    shift = z = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("Confluent protobuf header: the message indexes are cut short")
        b = data[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (z >> 1) ^ -(z & 1), pos


def message_indexes(desc: Descriptor) -> list[int]:
    """The path of a message type in its file: index among the file's messages, then among nested types."""
    path = []
    while desc.containing_type is not None:
        path.append(desc.containing_type.nested_types.index(desc))
        desc = desc.containing_type
    path.append(list(desc.file.message_types_by_name).index(desc.name))
    return path[::-1]


def indexes_bytes(path: list[int]) -> bytes:
    if path == [0]:
        return b"\x00"
    return _zigzag(len(path)) + b"".join(_zigzag(i) for i in path)


class Compiled:
    """A registry schema: its file's message classes by index path."""

    def __init__(self, fdp: descriptor_pb2.FileDescriptorProto) -> None:
        pool = descriptor_pool.DescriptorPool()
        for dep in fdp.dependency:
            if not dep.startswith(_WELL_KNOWN):
                raise ValueError(f"it imports {dep}, which this codec does not fetch (only google/protobuf/ imports are known)")
            _add_well_known(pool, dep)
        self.file = pool.Add(fdp)
        self.classes: dict[tuple[int, ...], type[Message]] = {}

    def message(self, path: tuple[int, ...]) -> type[Message]:
        cls = self.classes.get(path)
        if cls is None:
            types = list(self.file.message_types_by_name.values())
            try:
                desc = types[path[0]]
                for i in path[1:]:
                    desc = desc.nested_types[i]
            except IndexError:
                raise DecodeError(f"message indexes {list(path)} name no message type of {self.file.name}") from None
            cls = self.classes[path] = message_factory.GetMessageClass(desc)
        return cls


def _add_well_known(pool: descriptor_pool.DescriptorPool, name: str) -> None:
    from google.protobuf import any_pb2, duration_pb2, empty_pb2, field_mask_pb2, struct_pb2, timestamp_pb2, wrappers_pb2  # noqa: F401

    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    fd = descriptor_pool.Default().FindFileByName(name)
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    for dep in proto.dependency:
        _add_well_known(pool, dep)
    pool.Add(proto)


class ProtobufCodec(RegistryCodec):
    name = "protobuf"
    summary = "Protocol Buffers messages from a descriptor set, or in the Confluent wire format with a schema registry (fetched once, in the parent)"
    Config = ProtobufConfig
    carries_any = False  # a stage's new fields would be dropped: between stages, workers pass modified events as values
    schema_type = "PROTOBUF"
    fetch_format = "serialized"

    def __init__(self, config: ProtobufConfig | None = None, context: PluginContext | None = None) -> None:
        super().__init__(config, context)
        cfg: ProtobufConfig = self.config  # type: ignore[assignment]
        self.cfg = cfg
        self.cls: type[Message] | None = None
        self.indexes = b""
        if cfg.descriptor_set is not None and cfg.message is not None:
            self.cls = load_message(Path(cfg.descriptor_set), cfg.message)
            self.indexes = indexes_bytes(message_indexes(self.cls.DESCRIPTOR))
        self.parse: Callable[[bytes], Message] | None = self.cls.FromString if self.cls is not None else None

    @classmethod
    def settle(cls, config: PluginConfig, context: PluginContext) -> PluginConfig:
        cfg: ProtobufConfig = config  # type: ignore[assignment]
        if cfg.registry is None and (cfg.descriptor_set is None or cfg.message is None):
            raise SettingError("descriptor_set", "give a descriptor set and a message type, a registry, or both")
        if (cfg.descriptor_set is None) != (cfg.message is None):
            raise SettingError("message" if cfg.message is None else "descriptor_set", "descriptor_set and message go together")
        if cfg.subject is not None and (cfg.registry is None or cfg.message is None):
            raise SettingError("subject", "writing to a registry subject needs `registry`, `descriptor_set` and `message`")
        if cfg.descriptor_set is None:
            return cfg
        path = context.resolve(cfg.descriptor_set)
        try:
            load_message(path, cfg.message)  # type: ignore[arg-type]
        except OSError as exc:
            raise SettingError("descriptor_set", f"cannot read {path}: {exc.strerror or exc}") from None
        except KeyError:
            raise SettingError("message", f"{path} has no message type {cfg.message!r} (give its full name, package included)") from None
        except (ProtobufDecodeError, TypeError, ValueError) as exc:
            raise SettingError("descriptor_set", f"{path} is not a FileDescriptorSet: {safe_str(exc)}") from None
        return cfg.model_copy(update={"descriptor_set": str(path)})

    def compile(self, answer: dict[str, Any]) -> Any:
        if answer.get("references"):
            raise ValueError("it references other schemas, which this codec does not fetch")
        return Compiled(descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(answer["schema"], validate=True)))

    async def writer(self, client: SchemaRegistry) -> int | None:
        if self.cfg.subject is None:
            return None
        return await client.latest(self.cfg.subject)

    def decode(self, data: bytes) -> Any:
        if self.client is None:
            if self.parse is None:  # made without a schema (the config needs one: `check` says so)
                raise DecodeError("no message type to decode with: set descriptor_set and message, or registry")
            return self._parse(self.parse, data)
        compiled: Compiled = self.schema_of(data)
        pos = HEADER
        count, pos = _read_zigzag(data, pos)
        if count == 0:
            path: tuple[int, ...] = (0,)
        else:
            if count < 0 or count > 64:
                raise DecodeError(f"Confluent protobuf header: {count} message indexes")
            idx = []
            for _ in range(count):
                i, pos = _read_zigzag(data, pos)
                idx.append(i)
            path = tuple(idx)
        return self._parse(compiled.message(path).FromString, data[pos:])

    @staticmethod
    def _parse(parse: Callable[[bytes], Message], data: bytes | memoryview) -> Any:
        try:
            return to_value(parse(bytes(data)))
        except ProtobufDecodeError as exc:
            raise DecodeError(f"invalid protobuf: {safe_str(exc) or 'the message does not parse'}") from None
        except (ValueError, RuntimeError) as exc:
            raise DecodeError(f"invalid protobuf: {type(exc).__name__}: {safe_str(exc)}") from None

    def encode(self, value: Any) -> bytes:
        if self.cls is None:
            raise ValueError("codec protobuf: writing needs `descriptor_set` and `message`")
        msg = self.cls()
        fill(msg, value)
        if not msg.IsInitialized():
            raise ValueError(f"{msg.DESCRIPTOR.full_name}: required field(s) missing: {', '.join(msg.FindInitializationErrors())}")
        body: bytes = msg.SerializeToString()
        if self.client is not None:
            return self.header() + self.indexes + body
        return body
