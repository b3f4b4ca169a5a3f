"""``type: otlp``: an OpenTelemetry (OTLP/HTTP) receiver for logs, metrics and traces.

An OTLP exporter (an OpenTelemetry SDK, the collector's ``otlphttp`` exporter) posts
``Export{Logs,Metrics,Trace}ServiceRequest`` messages to ``{path}/logs``, ``{path}/metrics``
and ``{path}/traces`` (by default ``/v1/...`` on port 4318), as protobuf
(``application/x-protobuf``) or as OTLP/JSON (``application/json``), gzip-compressed or not.
Each request becomes one JSON event per log record, per span and per metric data point,
with its resource's and scope's attributes (see the event shapes below).

The answer waits until the request's events are done (delivered by every offramp, routed to
err, or filtered), like the ``http`` onramp's: 200 with an empty ``Export*ServiceResponse`` in
the request's own encoding; a failed delivery gets 503 with ``Retry-After`` and events not
done within ``ack_timeout`` get 504, both of which OTLP exporters retry. So what an exporter
was told succeeded is delivered: at least once to the sender (a SIGKILLed daemon never
answered, so the exporter sends the request again). A body that is not a valid message gets
400 (not retried by exporters) and goes to the onramp's ``err`` port with the reason.

Limits, TLS and credentials are the ``http`` onramp's. A gzip (or deflate) body is decompressed
as it is read, and ``max_body_bytes`` bounds its decompressed size.

Event shapes (ids as lowercase hex, times as integers of nanoseconds, attributes as
objects, ``bytes`` values as base64 text):

- log: ``{signal: log, resource, scope: {name, version, attributes}, time_unix_nano,
  observed_time_unix_nano, severity_number, severity_text, body, attributes, trace_id,
  span_id, flags, event_name}``
- span: ``{signal: span, resource, scope, trace_id, span_id, parent_span_id, trace_state,
  name, kind (unspecified|internal|server|client|producer|consumer), start_time_unix_nano,
  end_time_unix_nano, attributes, events: [{name, time_unix_nano, attributes}],
  links: [{trace_id, span_id, attributes}], status: {code (unset|ok|error), message}}``
- metric (one per data point): ``{signal: metric, resource, scope, name, description,
  unit, type (gauge|sum|histogram|exponential_histogram|summary), attributes,
  start_time_unix_nano, time_unix_nano, ...}`` with ``value`` for gauge and sum (and
  ``is_monotonic``, ``temporality`` for sum), ``count, sum, min, max, bucket_counts,
  explicit_bounds`` for histogram, ``count, sum, scale, zero_count, positive, negative``
  for exponential_histogram, ``count, sum, quantiles: [{quantile, value}]`` for summary.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import orjson
from aiohttp import web
from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.contract.metas import CONST, MetaColumns
from headrace.contract.paths import SettingError
from headrace.plugins.onramps.http import HttpOnramp, HttpOnrampConfig, _Request
from headrace.plugins.sockets import Meta

SIGNALS = ("logs", "metrics", "traces")
PROTOBUF = "application/x-protobuf"
SAMPLE = 1024  # bytes of a malformed body kept for the err port
SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUS_CODES = ("unset", "ok", "error")
TEMPORALITY = ("unspecified", "delta", "cumulative")
ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class OtlpOnrampConfig(HttpOnrampConfig):
    port: int = Field(4318, ge=1, le=65535, description="port to listen on (OTLP/HTTP's default: 4318)")
    path: str = Field("/v1", pattern=r"^/", description="prefix of the signals' paths: POST {path}/logs, {path}/metrics, {path}/traces")
    signals: list[str] = Field(list(SIGNALS), min_length=1, description="which of logs, metrics and traces are taken (the others get 404)")


class Malformed(ValueError):
    """A body that is not a valid OTLP message."""


def _messages() -> dict[str, type[Any]]:
    """The request message of each signal (the protobuf classes load only when the onramp is used)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    return {"logs": ExportLogsServiceRequest, "metrics": ExportMetricsServiceRequest, "traces": ExportTraceServiceRequest}


def _ids_to_base64(value: Any) -> Any:
    """OTLP/JSON writes trace and span ids as hex; the protobuf JSON mapping reads bytes as base64."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ID_KEYS and isinstance(v, str):
                try:
                    v = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError:
                    raise Malformed(f"{k} is not hex: {v[:64]!r}") from None
            else:
                v = _ids_to_base64(v)
            out[k] = v
        return out
    if isinstance(value, list):
        return [_ids_to_base64(v) for v in value]
    return value


def parse(signal: str, data: bytes, content_type: str) -> Any:
    """The request message of ``signal`` from a body (protobuf, or OTLP/JSON); raises ``Malformed``."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    message = _messages()[signal]()
    if content_type == "application/json":
        try:
            doc = orjson.loads(data)
            json_format.ParseDict(_ids_to_base64(doc), message, ignore_unknown_fields=True)
        except (orjson.JSONDecodeError, json_format.ParseError, TypeError, RecursionError) as exc:
            raise Malformed(f"not an OTLP/JSON {signal} request: {exc}") from None
        return message
    try:
        message.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise Malformed(f"not an OTLP protobuf {signal} request: {exc}") from None
    return message


# -- flattening: one plain event per log record, span or metric data point ---------------------


def any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def _scope(s: Any) -> dict[str, Any]:
    return {"name": s.name, "version": s.version, "attributes": attributes(s.attributes)}


_hex = bytes.hex


def logs(req: Any) -> Iterator[dict[str, Any]]:
    for rl in req.resource_logs:
        resource = attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            scope = _scope(sl.scope)
            for r in sl.log_records:
                yield {"signal": "log", "resource": resource, "scope": scope, "time_unix_nano": r.time_unix_nano,
                       "observed_time_unix_nano": r.observed_time_unix_nano, "severity_number": r.severity_number,
                       "severity_text": r.severity_text, "body": any_value(r.body), "attributes": attributes(r.attributes),
                       "trace_id": _hex(r.trace_id), "span_id": _hex(r.span_id), "flags": r.flags, "event_name": r.event_name}  # fmt: skip


def traces(req: Any) -> Iterator[dict[str, Any]]:
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = _scope(ss.scope)
            for s in ss.spans:
                yield {"signal": "span", "resource": resource, "scope": scope, "trace_id": _hex(s.trace_id), "span_id": _hex(s.span_id),
                       "parent_span_id": _hex(s.parent_span_id), "trace_state": s.trace_state, "name": s.name,
                       "kind": SPAN_KINDS[s.kind] if s.kind < len(SPAN_KINDS) else s.kind,
                       "start_time_unix_nano": s.start_time_unix_nano, "end_time_unix_nano": s.end_time_unix_nano,
                       "attributes": attributes(s.attributes),
                       "events": [{"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": attributes(e.attributes)} for e in s.events],
                       "links": [{"trace_id": _hex(k.trace_id), "span_id": _hex(k.span_id), "attributes": attributes(k.attributes)}
                                 for k in s.links],
                       "status": {"code": STATUS_CODES[s.status.code] if s.status.code < len(STATUS_CODES) else s.status.code,
                                  "message": s.status.message}}  # fmt: skip


def _number(p: Any) -> float | int | None:
    kind = p.WhichOneof("value")
    return None if kind is None else getattr(p, kind)


def _point(p: Any) -> dict[str, Any]:
    return {"attributes": attributes(p.attributes), "start_time_unix_nano": p.start_time_unix_nano, "time_unix_nano": p.time_unix_nano}


def _metric_points(m: Any) -> Iterator[dict[str, Any]]:
    kind = m.WhichOneof("data")
    if kind == "gauge":
        for p in m.gauge.data_points:
            yield {**_point(p), "value": _number(p)}
    elif kind == "sum":
        for p in m.sum.data_points:
            yield {**_point(p), "value": _number(p), "is_monotonic": m.sum.is_monotonic,
                   "temporality": TEMPORALITY[m.sum.aggregation_temporality] if m.sum.aggregation_temporality < 3 else None}  # fmt: skip
    elif kind == "histogram":
        for p in m.histogram.data_points:
            yield {**_point(p), "count": p.count, "sum": p.sum if p.HasField("sum") else None, "min": p.min if p.HasField("min") else None,
                   "max": p.max if p.HasField("max") else None, "bucket_counts": list(p.bucket_counts),
                   "explicit_bounds": list(p.explicit_bounds),
                   "temporality": TEMPORALITY[m.histogram.aggregation_temporality] if m.histogram.aggregation_temporality < 3 else None}  # fmt: skip
    elif kind == "exponential_histogram":
        for p in m.exponential_histogram.data_points:
            yield {**_point(p), "count": p.count, "sum": p.sum if p.HasField("sum") else None, "scale": p.scale, "zero_count": p.zero_count,
                   "positive": {"offset": p.positive.offset, "bucket_counts": list(p.positive.bucket_counts)},
                   "negative": {"offset": p.negative.offset, "bucket_counts": list(p.negative.bucket_counts)}}  # fmt: skip
    elif kind == "summary":
        for p in m.summary.data_points:
            yield {**_point(p), "count": p.count, "sum": p.sum,
                   "quantiles": [{"quantile": q.quantile, "value": q.value} for q in p.quantile_values]}  # fmt: skip


def metrics(req: Any) -> Iterator[dict[str, Any]]:
    for rm in req.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = _scope(sm.scope)
            for m in sm.metrics:
                head = {"signal": "metric", "resource": resource, "scope": scope, "name": m.name, "description": m.description,
                        "unit": m.unit, "type": m.WhichOneof("data")}  # fmt: skip
                for point in _metric_points(m):
                    yield {**head, **point}


FLATTEN: dict[str, Callable[[Any], Iterator[dict[str, Any]]]] = {"logs": logs, "metrics": metrics, "traces": traces}


def events(signal: str, data: bytes, content_type: str) -> list[bytes]:
    """The JSON events of one request body; raises ``Malformed``."""
    return [orjson.dumps(e) for e in FLATTEN[signal](parse(signal, data, content_type))]


class OtlpOnramp(HttpOnramp):
    name = "otlp"
    Config = OtlpOnrampConfig
    summary = ("OpenTelemetry OTLP/HTTP receiver (logs, metrics, traces; protobuf or JSON): one event per log record, span or "
               "metric point; answers once they are done (503/504 retried by exporters)")  # fmt: skip
    default_preprocessors: ClassVar[tuple[str, ...]] = ()
    example = "{type: otlp, config: {port: 4318}}"

    def __init__(self, config: OtlpOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg: OtlpOnrampConfig = config
        prefix = config.path.rstrip("/")
        self.paths = {f"{prefix}/{s}": s for s in config.signals}

    def check(self) -> None:
        super().check()
        unknown = [s for s in self.cfg.signals if s not in SIGNALS]
        if unknown:
            raise SettingError("signals", f"unknown signal(s) {', '.join(map(repr, unknown))}: choose from {', '.join(SIGNALS)}")
        try:
            _messages()
        except ImportError as exc:
            raise SettingError("type", f"the otlp onramp needs opentelemetry-proto: pip install 'headrace[otlp]' ({exc})") from None

    def _serves(self, path: str) -> bool:
        return path in self.paths

    def _answer(self, request: web.BaseRequest, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        if status == 500:  # a failed delivery: retryable for an OTLP exporter (500 is not)
            status, headers = 503, {"Retry-After": str(self.cfg.retry_after)}
        if status == 200:  # an empty Export*ServiceResponse: no partial success to report
            if _content_type(request.headers.get("Content-Type")) == "application/json":
                return web.Response(body=b"{}", status=200, content_type="application/json")
            return web.Response(body=b"", status=200, content_type=PROTOBUF)
        return web.json_response(body, status=status, headers=headers)

    async def _hand_over(self, body: bytes, meta: Meta) -> tuple[_Request, int]:
        assert self.sink is not None
        path = str(meta["http_path"])
        signal = self.paths[path]
        headers: dict[str, str] = meta.get("http_headers") or {}
        content_type = _content_type(headers.get("content-type"))
        token = _Request()
        try:
            if content_type not in (PROTOBUF, "application/json"):
                raise Malformed(f"Content-Type {headers.get('content-type')!r}: OTLP/HTTP takes {PROTOBUF} or application/json")
            records = events(signal, body, content_type)
        except Malformed as exc:
            await self.sink.reject([(body[:SAMPLE], str(exc))], {**meta, "otlp_signal": signal})
            raise self._refuse(400, "malformed", str(exc), close=False) from None
        bs = self.cfg.batch_size
        try:
            for start in range(0, len(records), bs):
                part = records[start : start + bs]
                token.parts += 1
                token.events += len(part)
                self.pending += len(part)
                metas = MetaColumns(len(part), [("otlp_signal", CONST, signal), ("http_path", CONST, path)])
                await self.sink.records(part, metas, ack=token)
        finally:
            token.sealed = True
            if token.parts == 0:
                self._resolve(token)
        return token, 0


def _content_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()

