"""The otlp onramp (OTLP/HTTP logs, metrics and traces) fed by the OpenTelemetry SDK's own OTLP
exporter, through the real daemon (issue 18): the events, OTLP/JSON and gzip bodies, a malformed
body to err with 400, and at least once to the sender across a SIGKILL."""

from __future__ import annotations

import gzip
import json
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.peers import wait_until
from tests.support.daemon import Daemon, free_port, ids_written, json_lines, lines_written

pytest.importorskip("opentelemetry.exporter.otlp.proto.http")


def _config(tmp_path: Path, port: int, mport: int, extra: str = "") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{mport}"}}}}
onramps: {{otel: {{type: otlp, config: {{port: {port}{extra}}}}}}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  bad: {{type: file, codec: json, with_meta: true, config: {{path: err.ndjson}}}}
links: {{otel: [out], otel/err: [bad]}}
""")
    return cfg


def _listening(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
    except urllib.error.HTTPError:
        return True  # it answered (404): listening
    except OSError:
        return False
    return True


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _resource() -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": "checkout", "host.name": "web-1"})


def _log_records(ids: range) -> list[Any]:
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk._logs import ReadableLogRecord
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    scope = InstrumentationScope("tests.otlp", "1.0")
    resource = _resource()
    return [ReadableLogRecord(LogRecord(timestamp=1_700_000_000_000_000_000 + i, severity_number=SeverityNumber.WARN, severity_text="WARN",
                                        body={"id": i, "msg": "slow"}, attributes={"id": i, "path": "/cart"}),
                              resource, scope) for i in ids]  # fmt: skip


def test_logs_traces_and_metrics_from_the_sdk_exporters_become_one_event_each(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    port, mport = free_port(), free_port()
    d = Daemon(_config(tmp_path, port, mport))
    base = f"http://127.0.0.1:{port}/v1"
    try:
        d.wait_for(lambda: _listening(port), timeout=30)
        assert OTLPLogExporter(endpoint=f"{base}/logs", timeout=10).export(_log_records(range(3))) == LogRecordExportResult.SUCCESS
        # answered 200 only once done: the file offramp already has them
        logs = [e for e in json_lines(tmp_path / "out.ndjson") if e["signal"] == "log"]
        assert [e["body"] for e in logs] == [{"id": i, "msg": "slow"} for i in range(3)]
        first = logs[0]
        assert first["resource"]["service.name"] == "checkout" and first["scope"]["name"] == "tests.otlp"
        assert first["attributes"] == {"id": 0, "path": "/cart"} and first["severity_text"] == "WARN"
        assert first["time_unix_nano"] == 1_700_000_000_000_000_000

        tracer_provider = TracerProvider(resource=_resource())
        tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/traces", timeout=10)))
        tracer = tracer_provider.get_tracer("tests.otlp")
        with tracer.start_as_current_span("checkout", attributes={"cart.items": 3}) as parent, tracer.start_as_current_span("charge"):
            pass
        tracer_provider.shutdown()
        spans = {e["name"]: e for e in json_lines(tmp_path / "out.ndjson") if e["signal"] == "span"}
        assert set(spans) == {"checkout", "charge"}
        ctx = parent.get_span_context()
        assert spans["checkout"]["trace_id"] == f"{ctx.trace_id:032x}" and spans["checkout"]["span_id"] == f"{ctx.span_id:016x}"
        assert spans["charge"]["parent_span_id"] == spans["checkout"]["span_id"] and spans["checkout"]["parent_span_id"] == ""
        assert spans["checkout"]["attributes"] == {"cart.items": 3} and spans["checkout"]["kind"] == "internal"

        reader = InMemoryMetricReader()
        meter = MeterProvider(resource=_resource(), metric_readers=[reader]).get_meter("tests.otlp")
        meter.create_counter("orders").add(5, {"shop": "a"})
        meter.create_histogram("latency", unit="ms").record(12.5)
        data = reader.get_metrics_data()
        assert data is not None
        assert OTLPMetricExporter(endpoint=f"{base}/metrics", timeout=10).export(data).name == "SUCCESS"
        points = {e["name"]: e for e in json_lines(tmp_path / "out.ndjson") if e["signal"] == "metric"}
        assert points["orders"]["type"] == "sum" and points["orders"]["value"] == 5 and points["orders"]["attributes"] == {"shop": "a"}
        assert points["orders"]["is_monotonic"] is True and points["orders"]["temporality"] == "cumulative"
        assert points["latency"]["type"] == "histogram" and points["latency"]["count"] == 1 and points["latency"]["sum"] == 12.5
    finally:
        assert d.stop() == 0, d.stderr()


def test_otlp_json_and_gzip_bodies_and_a_malformed_body_goes_to_err_with_400(tmp_path: Path) -> None:
    port, mport = free_port(), free_port()
    d = Daemon(_config(tmp_path, port, mport, ", signals: [logs, traces]"))
    base = f"http://127.0.0.1:{port}/v1"
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "get", "kind": 2,
            "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
            "attributes": [{"key": "http.status", "value": {"intValue": "200"}}], "status": {"code": 2, "message": "boom"}}  # fmt: skip
    body = json.dumps({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
                                          "scopeSpans": [{"scope": {"name": "s"}, "spans": [span]}]}]}).encode()  # fmt: skip
    try:
        d.wait_for(lambda: _listening(port), timeout=30)
        status, answer = _post(f"{base}/traces", body, {"Content-Type": "application/json"})
        assert (status, answer) == (200, b"{}")
        status, _ = _post(f"{base}/traces", gzip.compress(body), {"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert status == 200
        got = json_lines(tmp_path / "out.ndjson")
        assert len(got) == 2 and got[0] == got[1]
        assert got[0]["trace_id"] == span["traceId"] and got[0]["span_id"] == span["spanId"] and got[0]["kind"] == "server"
        assert got[0]["attributes"] == {"http.status": 200} and got[0]["status"] == {"code": "error", "message": "boom"}
        assert got[0]["resource"] == {"service.name": "api"} and got[0]["start_time_unix_nano"] == 1544712660000000000

        assert _post(f"{base}/logs", b"\x0a\xff\xff\xff", {"Content-Type": "application/x-protobuf"})[0] == 400  # a truncated message
        assert _post(f"{base}/traces", b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
                     {"Content-Type": "application/json"})[0] == 400  # fmt: skip
        assert _post(f"{base}/metrics", b"", {"Content-Type": "application/x-protobuf"})[0] == 404  # not among the signals
        assert _post(f"{base}/logs", b"x", {"Content-Type": "text/plain"})[0] == 400
        wait_until(lambda: len(json_lines(tmp_path / "err.ndjson")) == 3, 20, "three dead letters")
        reasons = [e["meta"]["error"]["message"] for e in json_lines(tmp_path / "err.ndjson")]
        assert "not an OTLP protobuf logs request" in reasons[0]
        assert "traceId is not hex" in reasons[1] and "Content-Type 'text/plain'" in reasons[2]
        assert [e["meta"]["otlp_signal"] for e in json_lines(tmp_path / "err.ndjson")] == ["logs", "traces", "logs"]
        assert len(json_lines(tmp_path / "out.ndjson")) == 2, "nothing of a malformed body entered the graph"
    finally:
        assert d.stop() == 0, d.stderr()


def test_a_sigkill_in_the_middle_loses_nothing_the_exporter_was_told_succeeded(tmp_path: Path) -> None:
    """50,000 numbered log records in requests of 500 from the SDK's exporter; a request it is not
    told succeeded is sent again (what an OTLP sender does). SIGKILL once in the middle, restart."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult

    n, per = 50_000, 500
    port, mport = free_port(), free_port()
    cfg = _config(tmp_path, port, mport)
    batches = [_log_records(range(i, i + per)) for i in range(0, n, per)]
    sent = threading.Event()

    def send() -> None:
        exporter = OTLPLogExporter(endpoint=f"http://127.0.0.1:{port}/v1/logs", timeout=5)
        for batch in batches:
            while exporter.export(batch) != LogRecordExportResult.SUCCESS:
                pass  # not told it succeeded: the same request again
        sent.set()

    d = Daemon(cfg)
    sender = threading.Thread(target=send, daemon=True)
    try:
        d.wait_for(lambda: _listening(port), timeout=30)
        sender.start()
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n // 3, timeout=60, interval=0.02)
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        d.stop()
    assert not sent.is_set()
    d = Daemon(cfg)
    try:
        assert sent.wait(120), "the sender got every request through"
        ids = ids_written(tmp_path / "out.ndjson", key=_id)
    finally:
        assert d.stop() == 0, d.stderr()
    sender.join(10)
    assert sorted(set(ids)) == list(range(n)), "every record the exporter was told succeeded is delivered"
    assert len(ids) - n <= 2 * per, "duplicates: at most the requests in flight at the kill"


def _id(event: dict[str, Any]) -> Any:
    return event["body"]["id"]
