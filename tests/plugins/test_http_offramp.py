"""HTTP offramp through the real daemon, against an aiohttp server run by the test."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.plugins.peers import HttpSink, LoopThread, json_lines, wait_connectable, wait_until
from tests.support.daemon import Daemon, free_port, scrape


def test_http_batches_and_retries_503_until_accepted(tmp_path: Path, write: Any, peer_loop: LoopThread) -> None:
    port = free_port()
    answers = iter([503, 503])  # then 200

    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=next(answers, 200), headers={"Retry-After": "0"})

    sink = HttpSink(peer_loop, port, respond).start()
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(10)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
offramps:
  out: {{type: http, codec: json, config: {{url: "http://127.0.0.1:{port}/bulk", headers: {{Content-Type: application/x-ndjson}},
                                          retries: 1, backoff_initial: 10ms}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        assert d.wait(30) == 0, d.stderr()
    finally:
        sink.stop()
    # one batch, one request body; the offramp retried once itself, then the runtime retried the batch
    assert len(sink.requests) == 3
    assert all(method == "POST" and headers["Content-Type"] == "application/x-ndjson" for method, headers, _ in sink.requests)
    assert len(sink.accepted) == 1
    assert sink.accepted_records() == [{"id": i} for i in range(10)]
    assert "503 Service Unavailable" in d.stderr()


def test_http_one_request_per_record_and_4xx_goes_to_err_once(tmp_path: Path, write: Any, peer_loop: LoopThread) -> None:
    port, in_port, metrics_port = free_port(), free_port(), free_port()

    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=400, text="no bad ones") if b"bad" in body else web.Response(status=204)

    sink = HttpSink(peer_loop, port, respond).start()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{metrics_port}"}}}}
onramps: {{src: {{type: tcp, codec: json, config: {{port: {in_port}}}}}}}
offramps:
  out: {{type: http, codec: json, postprocessors: [], config: {{url: "http://127.0.0.1:{port}/", method: PUT, batch: false, concurrency: 3}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [out], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    try:
        wait_connectable(in_port)
        events = [{"id": i, "kind": "bad" if i in (2, 5) else "good"} for i in range(8)]
        with socket.create_connection(("127.0.0.1", in_port)) as s:
            s.sendall("".join(json.dumps(e) + "\n" for e in events).encode())
        dlq = tmp_path / "dlq.ndjson"
        wait_until(lambda: len(json_lines(dlq)) == 2 and len(sink.accepted) == 6, what="delivery and rejection")
        assert sorted(r["id"] for r in sink.accepted_records()) == [0, 1, 3, 4, 6, 7]
        rejected = json_lines(dlq)
        assert sorted(e["event"]["id"] for e in rejected) == [2, 5]
        assert all("400 Bad Request: no bad ones" in e["meta"]["error"]["message"] for e in rejected)
        # every record was sent exactly once: the refused ones were not retried
        assert set(Counter(body for _, _, body in sink.requests).values()) == {1} and len(sink.requests) == 8
        assert all(method == "PUT" for method, _, _ in sink.requests)
        series = scrape(metrics_port)
        errors = {k: v for k, v in series.items() if k.startswith("headrace_component_errors_total") and 'component_id="out"' in k}
        assert sum(errors.values()) == 2, errors
        assert "-> 400 Bad Request" in d.stderr()
    finally:
        assert d.stop() == 0, d.stderr()
        sink.stop()


def test_a_redirect_is_not_a_confirmation(tmp_path: Path, write: Any, peer_loop: LoopThread) -> None:
    """Issue 12 item 2: aiohttp followed redirects, so a 302 (which turns the POST into a GET without
    the records) and a 200 for that GET counted as delivered. Now a 3xx sends the records to err."""
    port = free_port()

    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.path == "/ingest":
            status = 302 if b'"id": 0' in body else 307
            return web.Response(status=status, headers={"Location": f"/moved{status}"})
        return web.Response(status=200)  # the redirect target answers anything with 200

    sink = HttpSink(peer_loop, port, respond).start()
    write("in.ndjson", json.dumps({"id": 0}) + "\n")
    write("in2.ndjson", json.dumps({"id": 1}) + "\n")
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps:
  a: {{type: file, codec: json, config: {{path: in.ndjson}}}}
  b: {{type: file, codec: json, config: {{path: in2.ndjson}}}}
offramps:
  out: {{type: http, codec: json, config: {{url: "http://127.0.0.1:{port}/ingest"}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{a: [out], b: [out], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    try:
        assert d.wait(30) == 0, d.stderr()
    finally:
        sink.stop()
    assert [(m, r) for m, _, r in sink.requests if m != "POST"] == [], "the redirect was followed"
    dead = {e["event"]["id"]: e["meta"]["error"]["message"] for e in json_lines(tmp_path / "dlq.ndjson")}
    assert sorted(dead) == [0, 1], dead
    assert "302 Found, redirected to '/moved302'" in dead[0] and "307 Temporary Redirect, redirected to '/moved307'" in dead[1]


def test_batch_false_retries_only_the_requests_that_failed(tmp_path: Path, write: Any, peer_loop: LoopThread) -> None:
    """Issue 12 item 5's class: with one request per record, a batch whose requests partly failed was
    sent again whole, so the records already confirmed were sent (and stored) again."""
    port = free_port()
    failed_once: set[bytes] = set()

    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        if json.loads(body)["id"] % 3 == 0 and body not in failed_once:
            failed_once.add(body)
            return web.Response(status=503)
        return web.Response(status=204)

    sink = HttpSink(peer_loop, port, respond).start()
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(12)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
offramps:
  out: {{type: http, codec: json, postprocessors: [], config: {{url: "http://127.0.0.1:{port}/", batch: false, retries: 0, concurrency: 4}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        assert d.wait(30) == 0, d.stderr()
    finally:
        sink.stop()
    assert sorted(json.loads(b)["id"] for b in sink.accepted) == list(range(12))
    sent = Counter(json.loads(body)["id"] for _, _, body in sink.requests)
    assert sent == {i: 2 if i % 3 == 0 else 1 for i in range(12)}, "only the failed requests were sent again"
