"""OTLP/HTTP benchmark: log requests posted by 4 concurrent clients to the otlp onramp (-> blackhole)
and, in the same run, to a bare aiohttp server that parses them with opentelemetry-proto, makes a
JSON event per log record and answers (issue 18 names no target: the closing note discusses a
connector below 0.8x its bare loop)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.daemon import free_port

PER_REQUEST = 500
REQUESTS = 200  # 100,000 log records each side
CLIENTS = 4
PROTOBUF = "application/x-protobuf"


def _bodies() -> list[bytes]:
    """Export requests of PER_REQUEST log records each: a json-throughput record as the body, two attributes."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    recs = records()
    out = []
    for k in range(REQUESTS):
        req = ExportLogsServiceRequest()
        rl = req.resource_logs.add()
        attr = rl.resource.attributes.add()
        attr.key, attr.value.string_value = "service.name", "bench"
        sl = rl.scope_logs.add()
        sl.scope.name = "bench"
        for i in range(PER_REQUEST):
            r = sl.log_records.add()
            r.time_unix_nano = 1_700_000_000_000_000_000 + k * PER_REQUEST + i
            r.severity_text = "INFO"
            r.body.string_value = recs[(k * PER_REQUEST + i) % len(recs)].decode()
            a = r.attributes.add()
            a.key, a.value.int_value = "seq", k * PER_REQUEST + i
        out.append(req.SerializeToString())
    return out


async def _send(url: str, bodies: list[bytes]) -> float:
    """Post every body (CLIENTS at a time); records/s over the whole run, every answer 200."""
    import aiohttp

    queue = list(reversed(bodies))
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            while queue:
                body = queue.pop()
                async with session.post(url, data=body, headers={"Content-Type": PROTOBUF}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url} answered {resp.status}")

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return len(bodies) * PER_REQUEST / (time.perf_counter() - t0)


def _bare_server(port: int, ready: threading.Event, stop: threading.Event) -> None:
    """The best bare receiver: aiohttp, ParseFromString, an orjson event per log record, 200."""
    import orjson
    from aiohttp import web
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    sink: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        req = ExportLogsServiceRequest()
        req.ParseFromString(await request.read())
        for rl in req.resource_logs:
            resource = {kv.key: kv.value.string_value for kv in rl.resource.attributes}
            for sl in rl.scope_logs:
                scope = {"name": sl.scope.name, "version": sl.scope.version, "attributes": {}}
                for r in sl.log_records:  # the same event as the otlp onramp's, knowing the types of this data
                    sink.append(orjson.dumps({"signal": "log", "resource": resource, "scope": scope, "time_unix_nano": r.time_unix_nano,
                                              "observed_time_unix_nano": r.observed_time_unix_nano, "severity_number": r.severity_number,
                                              "severity_text": r.severity_text, "body": r.body.string_value,
                                              "attributes": {kv.key: kv.value.int_value for kv in r.attributes}, "trace_id": r.trace_id.hex(),
                                              "span_id": r.span_id.hex(), "flags": r.flags, "event_name": r.event_name}))  # fmt: skip
        sink.clear()
        return web.Response(body=b"", content_type=PROTOBUF)

    async def main() -> None:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/logs", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def otlp_benches() -> list[str]:
    import multiprocessing

    bodies = _bodies()
    # the bare server in a process of its own, like the daemon
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_bare_server, args=(port, ready, stop), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the bare OTLP server did not start")
        bare = asyncio.run(_send(f"http://127.0.0.1:{port}/v1/logs", bodies))
    finally:
        stop.set()
        proc.join(10)
    port = free_port()
    result: dict[str, Any] = {}

    def sent() -> bool:
        if "rate" not in result:
            try:
                result["rate"] = asyncio.run(_send(f"http://127.0.0.1:{port}/v1/logs", bodies))
            except OSError:  # not listening yet
                return False
        return True

    cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{otel: {{type: otlp, config: {{port: {port}}}}}}}
offramps: {{out: {{type: blackhole, codec: json, config: {{warmup_secs: 0, stop_after_secs: 600, stop_daemon: false}}}}}}
links: {{otel: [out]}}
"""
    run_daemon_async(cfg, tmpdir(), sent)
    ours = result["rate"]
    return [f"  baseline: bare aiohttp + opentelemetry-proto receiver, {CLIENTS} clients posting {REQUESTS} requests of {PER_REQUEST} "
            f"log records (~640 B bodies): {bare:,.0f} records/s",
            line("O1. OTLP/HTTP logs -> blackhole (onramp)", f"{ours:,.0f} records/s = {ours / bare:.2f}x bare", "- (>=0.8x noted)", True)]  # fmt: skip
