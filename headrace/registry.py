"""Plugins register by name through entry-point groups; built-ins use the same groups.

Imports are lazy: a plugin module is imported only when a config names it. When the
package is not installed (running from a source tree), the built-in table stands in.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from importlib.metadata import entry_points
from typing import Any, Literal

from headrace.config.errors import did_you_mean

Kind = Literal["onramps", "offramps", "codecs", "preprocessors", "postprocessors", "operators"]
KINDS: tuple[Kind, ...] = ("onramps", "offramps", "codecs", "preprocessors", "postprocessors", "operators")

BUILTINS: dict[Kind, dict[str, str]] = {
    "onramps": {
        "file": "headrace.plugins.onramps.file:FileOnramp",
        "stdin": "headrace.plugins.onramps.stdin:StdinOnramp",
        "metronome": "headrace.plugins.onramps.metronome:MetronomeOnramp",
        "blaster": "headrace.plugins.onramps.blaster:BlasterOnramp",
        "kafka": "headrace.plugins.onramps.kafka:KafkaOnramp",
        "tcp": "headrace.plugins.onramps.tcp:TcpOnramp",
        "udp": "headrace.plugins.onramps.udp:UdpOnramp",
        "unix": "headrace.plugins.onramps.unix:UnixOnramp",
        "http": "headrace.plugins.onramps.http:HttpOnramp",
        "redis": "headrace.plugins.onramps.redis:RedisOnramp",
        "nats": "headrace.plugins.onramps.nats:NatsOnramp",
        "mqtt": "headrace.plugins.onramps.mqtt:MqttOnramp",
        "otlp": "headrace.plugins.onramps.otlp:OtlpOnramp",
        "amqp": "headrace.plugins.onramps.amqp:AmqpOnramp",
    },
    "offramps": {
        "stdout": "headrace.plugins.offramps.stdout:StdoutOfframp",
        "stderr": "headrace.plugins.offramps.stdout:StderrOfframp",
        "file": "headrace.plugins.offramps.file:FileOfframp",
        "blackhole": "headrace.plugins.offramps.blackhole:BlackholeOfframp",
        "kafka": "headrace.plugins.offramps.kafka:KafkaOfframp",
        "tcp": "headrace.plugins.offramps.tcp:TcpOfframp",
        "udp": "headrace.plugins.offramps.udp:UdpOfframp",
        "unix": "headrace.plugins.offramps.unix:UnixOfframp",
        "http": "headrace.plugins.offramps.http:HttpOfframp",
        "redis": "headrace.plugins.offramps.redis:RedisOfframp",
        "nats": "headrace.plugins.offramps.nats:NatsOfframp",
        "mqtt": "headrace.plugins.offramps.mqtt:MqttOfframp",
        "postgres": "headrace.plugins.offramps.postgres:PostgresOfframp",
        "s3": "headrace.plugins.offramps.s3:S3Offramp",
        "amqp": "headrace.plugins.offramps.amqp:AmqpOfframp",
    },
    "codecs": {
        "json": "headrace.plugins.codecs.json:JsonCodec",
        "string": "headrace.plugins.codecs.string:StringCodec",
        "binary": "headrace.plugins.codecs.binary:BinaryCodec",
        "msgpack": "headrace.plugins.codecs.msgpack:MsgpackCodec",
        "csv": "headrace.plugins.codecs.csv:CsvCodec",
        "influx": "headrace.plugins.codecs.influx:InfluxCodec",
        "yaml": "headrace.plugins.codecs.yaml:YamlCodec",
        "syslog": "headrace.plugins.codecs.syslog:SyslogCodec",
        "avro": "headrace.plugins.codecs.avro:AvroCodec",
        "protobuf": "headrace.plugins.codecs.protobuf:ProtobufCodec",
    },
    "preprocessors": {
        "lines": "headrace.plugins.processors.lines:LinesPreprocessor",
        "gzip": "headrace.plugins.processors.compress:GzipPreprocessor",
        "zstd": "headrace.plugins.processors.compress:ZstdPreprocessor",
        "lz4": "headrace.plugins.processors.compress:Lz4Preprocessor",
        "length-prefixed": "headrace.plugins.processors.framing:LengthPrefixedPreprocessor",
        "octet-counting": "headrace.plugins.processors.framing:OctetCountingPreprocessor",
        "base64": "headrace.plugins.processors.base64:Base64Preprocessor",
    },
    "postprocessors": {
        "lines": "headrace.plugins.processors.lines:LinesPostprocessor",
        "gzip": "headrace.plugins.processors.compress:GzipPostprocessor",
        "zstd": "headrace.plugins.processors.compress:ZstdPostprocessor",
        "lz4": "headrace.plugins.processors.compress:Lz4Postprocessor",
        "length-prefixed": "headrace.plugins.processors.framing:LengthPrefixedPostprocessor",
        "octet-counting": "headrace.plugins.processors.framing:OctetCountingPostprocessor",
        "base64": "headrace.plugins.processors.base64:Base64Postprocessor",
    },
    "operators": {
        "python": "headrace.plugins.operators.python:PythonOperator",
        "filter": "headrace.plugins.operators.filter:FilterOperator",
        "route": "headrace.plugins.operators.route:RouteOperator",
        "set": "headrace.plugins.operators.set:SetOperator",
        "bucket": "headrace.plugins.operators.bucket:BucketOperator",
        "batch": "headrace.plugins.operators.batch:BatchOperator",
        "window": "headrace.plugins.operators.window:WindowOperator",
        "throttle": "headrace.plugins.operators.throttle:ThrottleOperator",
        "dedupe": "headrace.plugins.operators.dedupe:DedupeOperator",
        "sample": "headrace.plugins.operators.sample:SampleOperator",
        "backpressure": "headrace.plugins.operators.backpressure:BackpressureOperator",
    },
}


log = logging.getLogger("headrace.plugins")
_logged: dict[Kind, set[str]] = {kind: set() for kind in KINDS}  # each plugin is named once in a debug log


class UnknownPlugin(LookupError):
    def __init__(self, kind: Kind, name: str, known: list[str]) -> None:
        super().__init__(f"unknown {kind[:-1]} '{name}'{did_you_mean(name, known)} (known: {', '.join(known)})")


_TABLES: dict[tuple[str, tuple[tuple[str, int, int], ...]], dict[str, str]] = {}


def _path_state() -> tuple[tuple[str, int, int], ...]:
    """``sys.path`` with each folder's modification time and link count: installing or removing a
    distribution (its ``*.dist-info`` folder: one link more or less, whatever the clock's grain; a
    ``.pth`` file) changes them, and a folder added to the path is a new entry."""
    state = []
    for entry in sys.path:
        try:
            st = os.stat(entry or ".")
            state.append((entry, st.st_mtime_ns, st.st_nlink))
        except OSError:
            state.append((entry, -1, -1))
    return tuple(state)


def _table(kind: Kind) -> dict[str, str]:
    """Built-ins and installed plugins of ``kind``: ``importlib.metadata`` scans every installed
    distribution (about 3 ms), so the installed ones are read again only when the path changed."""
    key = (kind, _path_state())
    installed = _TABLES.get(key)
    if installed is None:
        installed = {ep.name: ep.value for ep in entry_points(group=f"headrace.{kind}")}
        if len(_TABLES) >= 64:  # paths that keep changing: bounded
            _TABLES.clear()
        _TABLES[key] = installed
    return {**BUILTINS[kind], **installed}


def names(kind: Kind) -> list[str]:
    return sorted(_table(kind))


def load(kind: Kind, name: str) -> Any:
    table = _table(kind)
    if name not in table:
        raise UnknownPlugin(kind, name, sorted(table))
    module, _, attr = table[name].partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise UnknownPlugin(kind, name, sorted(table)) from ImportError(
            f"{kind[:-1]} '{name}' needs the missing module '{exc.name}' (install headrace with the matching extra)"
        )
    if name not in _logged[kind]:
        _logged[kind].add(name)
        log.debug("%s '%s': %s (%s)", kind[:-1], name, table[name], "built-in" if BUILTINS[kind].get(name) == table[name] else "installed plugin")
    return getattr(mod, attr)


def origin(kind: Kind, name: str) -> str:
    return "built-in" if BUILTINS[kind].get(name) == _table(kind).get(name) else _table(kind)[name]


def make_codec(key: str, specs: dict[str, Any] | None = None) -> Any:
    """A codec instance by key: a plain name, or a key of ``specs`` (codec name, validated options)."""
    spec = (specs or {}).get(key)
    if spec is None:
        return load("codecs", key)()
    return load("codecs", spec.name)(spec.config)
