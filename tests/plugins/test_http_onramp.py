"""HTTP onramp: through the real daemon (the response waits for delivery; 413, 503), and
in-process with a scripted sink for the outcomes the runtime rarely produces (500, 504)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from headrace.contract.context import PluginContext
from headrace.plugins.onramps.http import HttpOnramp, HttpOnrampConfig
from tests.plugins.peers import json_lines, wait_connectable, wait_until
from tests.support.daemon import Daemon, free_port, metric


def post(url: str, body: bytes | Iterable[bytes], headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")  # type: ignore[arg-type]
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, dict(exc.headers), json.loads(raw) if exc.headers.get_content_type() == "application/json" else raw


def test_http_post_one_and_many_answered_after_delivery(tmp_path: Path, write: Any) -> None:
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps:
  web: {{type: http, codec: json, config: {{port: {port}, path: /ingest, max_body_bytes: 1024}}}}
pipelines:
  main: [{{op: set, set: {{seen: "True"}}}}]
offramps:
  out: {{type: file, codec: json, with_meta: true, config: {{path: out.ndjson}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{web: [main], web/err: [dlq], main: [out]}}
""")
    url = f"http://127.0.0.1:{port}/ingest"
    out = tmp_path / "out.ndjson"
    d = Daemon(cfg)
    try:
        wait_connectable(port)
        status, _, body = post(url, b'{"id": 1}', {"X-Trace": "abc", "Authorization": "Bearer secret"})
        assert (status, body) == (200, {"events": 1, "rejected": 0})
        got = json_lines(out)  # read right when the response arrived: already written
        assert [e["event"] for e in got] == [{"id": 1, "seen": True}]
        meta = got[0]["meta"]
        assert meta["http_path"] == "/ingest" and meta["http_method"] == "POST"
        assert meta["http_headers"]["x-trace"] == "abc" and "authorization" not in meta["http_headers"]

        status, _, body = post(url, b'{"id": 2}\n{"id": 3}\r\n{oops}\n{"id": 4}')
        assert (status, body) == (200, {"events": 4, "rejected": 0})
        assert [e["event"]["id"] for e in json_lines(out)] == [1, 2, 3, 4]
        assert [e["meta"]["error"]["type"] for e in json_lines(tmp_path / "dlq.ndjson")] == ["DecodeError"]

        status, _, body = post(url, b"x" * 5000)  # Content-Length over the limit: refused unread
        assert status == 413 and "max_body_bytes" in body["error"]
        status, _, body = post(url, iter([b'{"id": 5}\n'] * 200))  # chunked, no length: cut off at the limit
        assert status == 413
        status, _, _ = post(f"http://127.0.0.1:{port}/elsewhere", b"{}")
        assert status == 404
        assert len(json_lines(out)) == 4
    finally:
        assert d.stop() == 0, d.stderr()


def test_http_503_while_too_many_events_are_in_flight(tmp_path: Path, write: Any) -> None:
    port = free_port()
    write("stages.py", "import asyncio\n\nasync def slow(event, meta):\n    await asyncio.sleep(0.6)\n    return event\n")
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{web: {{type: http, codec: json, config: {{port: {port}, max_pending_events: 2, retry_after: 3}}}}}}
pipelines:
  main: [{{op: python, fn: "stages:slow"}}]
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{web: [main], main: [out]}}
""")
    url = f"http://127.0.0.1:{port}/"
    d = Daemon(cfg)
    try:
        wait_connectable(port)
        first: list[Any] = []
        t = threading.Thread(target=lambda: first.append(post(url, b'{"id": 1}\n{"id": 2}\n')))
        t.start()
        time.sleep(0.25)  # the first request's two events are in the slow stage
        status, headers, _ = post(url, b'{"id": 3}\n')
        assert status == 503 and headers["Retry-After"] == "3"
        t.join(10)
        assert first[0][0] == 200 and first[0][2]["events"] == 2
        assert post(url, b'{"id": 3}\n')[0] == 200  # room again
        assert [e["id"] for e in json_lines(tmp_path / "out.ndjson")] == [1, 2, 3]
    finally:
        assert d.stop() == 0, d.stderr()


class ScriptedSink:
    """Stands in for the runtime: frames lines, and acks, fails or never answers each request."""

    def __init__(self, plugin: HttpOnramp) -> None:
        self.plugin = plugin
        self.outcome = "ack"
        self.payloads: list[bytes] = []

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None) -> None: ...

    async def end_of_stream(self, meta: dict[str, Any] | None = None) -> None: ...

    async def reject(self, rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None = None) -> None: ...

    def stream(self) -> ScriptedSink:
        return self

    def frame(self, data: bytes) -> Iterator[tuple[list[bytes], list[tuple[bytes, str]]]]:
        yield [x for x in data.splitlines() if x], []

    async def records(self, payloads: list[bytes], metas: list[dict[str, Any]] | None = None, ack: Any = None, group: Any = None) -> None:
        self.payloads.extend(payloads)
        if self.outcome != "never":
            done = self.plugin.ack if self.outcome == "ack" else self.plugin.fail
            asyncio.get_running_loop().call_later(0.01, done, ack)


def test_http_500_when_delivery_fails_and_504_when_not_done_in_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        plugin = HttpOnramp(HttpOnrampConfig(port=port, ack_timeout=0.3, batch_size=2), PluginContext("web", tmp_path))
        sink = ScriptedSink(plugin)
        task = asyncio.create_task(plugin.run(sink))
        while not plugin.ready:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{port}/"
        try:
            async with aiohttp.ClientSession() as client:
                sink.outcome = "fail"
                async with client.post(url, data=b"a\nb\nc\n") as r:  # two batches of one request
                    assert r.status == 500 and (await r.json())["error"] == "delivery failed"
                sink.outcome = "never"
                async with client.post(url, data=b"d\n") as r:
                    assert r.status == 504
                assert plugin.pending == 1  # still in flight: it counts against max_pending_events
                sink.outcome = "ack"
                async with client.post(url, data=b"e\nf\n") as r:
                    assert r.status == 200 and await r.json() == {"events": 2, "rejected": 0}
                async with client.get(url) as r:
                    assert r.status == 405
            assert sink.payloads == [b"a", b"b", b"c", b"d", b"e", b"f"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await plugin.stop()

    asyncio.run(scenario())


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def _closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``s`` within ``seconds`` (reading what it sent), and what it sent."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        pass
    return True, got


def _one_response(s: socket.socket, seconds: float) -> bytes:
    """One whole HTTP response read from ``s`` (headers and a Content-Length body), within ``seconds``."""
    s.settimeout(seconds)
    got = b""
    while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + _length(got):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


LIMITS = """
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{mport}"}}}}
onramps:
  web: {{type: http, codec: json, config: {{port: {port}, path: /in, {limits}}}}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{web: [out]}}
"""


def _kept_alive(port: int) -> socket.socket | None:
    """A connection on which one empty POST was answered 200 and that stays open, or None if it was refused
    (a connection of the moment before may still count: the server frees its slot when its handler ends)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    answer = s.recv(65536)
    if answer.startswith(b"HTTP/1.1 200 "):
        return s
    s.close()
    return None


def _refused(mport: int, reason: str) -> float:
    return metric(mport, f'headrace_onramp_refused_total{{component_id="web",reason="{reason}"}}')


def test_http_caps_connections_with_503(tmp_path: Path, write: Any) -> None:
    port, mport = free_port(), free_port()
    cfg = write("c.yaml", LIMITS.format(port=port, mport=mport, limits="max_connections: 2, retry_after: 7"))
    d = Daemon(cfg)
    idle: list[socket.socket] = []
    try:
        wait_connectable(port)
        for _ in range(2):  # two keep-alive connections, each served once, then idle: every slot taken
            idle.append(wait_until(lambda: _kept_alive(port), what="a connection served (not refused)"))
        answer = _raw(port, b'POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"id": 1}\n')
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 7" in answer and b"max_connections 2" in answer, answer
        idle[0].close()  # a slot frees up
        wait_until(lambda: post(f"http://127.0.0.1:{port}/in", b'{"id": 2}\n')[0] == 200, what="a request once a slot is free")
        assert _refused(mport, "max_connections") >= 1
    finally:
        for s in idle:
            s.close()
        assert d.stop() == 0, d.stderr()
    assert [e["id"] for e in json_lines(tmp_path / "out.ndjson")] == [2]


def test_http_slow_headers_and_slow_bodies_are_cut_off(tmp_path: Path, write: Any) -> None:
    port, mport = free_port(), free_port()
    cfg = write("c.yaml", LIMITS.format(port=port, mport=mport, limits="header_timeout: 1s, body_timeout: 1s"))
    d = Daemon(cfg)
    try:
        wait_connectable(port)
        loris = socket.create_connection(("127.0.0.1", port), timeout=5)
        t0 = time.monotonic()
        loris.sendall(b"POST /in HTTP/1.1\r\nHost: x\r\n")  # and the rest of the headers never
        closed, _ = _closed_within(loris, 5)
        header_s = time.monotonic() - t0
        loris.close()
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        t0 = time.monotonic()
        slow.sendall(b'POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"id":')  # and the rest of the body never
        body_closed, answer = _closed_within(slow, 5)
        body_s = time.monotonic() - t0
        slow.close()
        assert post(f"http://127.0.0.1:{port}/in", b'{"id": 1}\n')[0] == 200  # others are served meanwhile
        assert _refused(mport, "body_timeout") == 1
    finally:
        assert d.stop() == 0, d.stderr()
    assert closed and 0.9 < header_s < 3, (closed, header_s)
    assert body_closed and answer.startswith(b"HTTP/1.1 408 ") and 0.9 < body_s < 3, (answer[:100], body_s)


def test_http_bytes_in_flight_are_capped_with_503(tmp_path: Path, write: Any) -> None:
    port, mport = free_port(), free_port()
    cfg = write("c.yaml", LIMITS.format(port=port, mport=mport, limits="max_inflight_bytes: 1MiB, retry_after: 2"))
    d = Daemon(cfg)
    try:
        wait_connectable(port)
        first = socket.create_connection(("127.0.0.1", port), timeout=5)  # 700 KB announced, 100 KB sent: held
        first.sendall(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 700000\r\n\r\n" + b" " * 100_000)
        wait_until(lambda: metric(mport, 'headrace_component_buffered_bytes{component_id="web"}') == 700_000, what="the first body held")
        status, headers, body = post(f"http://127.0.0.1:{port}/in", b" " * 400_000 + b'{"id": 1}\n')
        assert status == 503 and headers["Retry-After"] == "2" and "max_inflight_bytes" in body["error"], (status, body)
        chunked = iter([b" " * 200_000, b" " * 200_000, b'{"id": 2}\n'])  # no length: held as it arrives, refused at the cap
        assert post(f"http://127.0.0.1:{port}/in", chunked)[0] == 503
        assert post(f"http://127.0.0.1:{port}/in", b'{"id": 3}\n')[0] == 200  # small ones still fit
        first.sendall(b" " * 599_990 + b'{"id": 4}\n')
        assert _one_response(first, 10).startswith(b"HTTP/1.1 200 ")
        first.close()
        wait_until(lambda: metric(mport, 'headrace_component_buffered_bytes{component_id="web"}') == 0, what="nothing held")
        assert _refused(mport, "max_inflight_bytes") == 2
    finally:
        assert d.stop() == 0, d.stderr()
    assert sorted(e["id"] for e in json_lines(tmp_path / "out.ndjson")) == [3, 4]


def test_http_refuses_posts_from_foreign_browser_pages(tmp_path: Path, write: Any) -> None:
    port, mport = free_port(), free_port()
    cfg = write("c.yaml", LIMITS.format(port=port, mport=mport, limits='allowed_origins: ["https://app.example"]'))
    d = Daemon(cfg)
    url = f"http://127.0.0.1:{port}/in"
    try:
        wait_connectable(port)
        form = {"Content-Type": "text/plain"}  # what any web page may post cross-origin without a preflight
        status, _, body = post(url, b'{"id": 1}\n', {**form, "Origin": "https://evil.example"})
        assert status == 403 and "allowed_origins" in body["error"]
        assert post(url, b'{"id": 2}\n', {**form, "Origin": "null"})[0] == 403  # a sandboxed page or a file
        assert post(url, b'{"id": 3}\n', {**form, "Origin": "https://app.example"})[0] == 200
        assert post(url, b'{"id": 4}\n', form)[0] == 200  # no Origin: not a browser page (curl, a client library)
        assert _refused(mport, "origin") == 2
    finally:
        assert d.stop() == 0, d.stderr()
    assert sorted(e["id"] for e in json_lines(tmp_path / "out.ndjson")) == [3, 4]


def test_http_stop_closes_idle_keepalive_connections_at_once_and_answers_the_request_in_flight(tmp_path: Path, write: Any) -> None:
    """SIGTERM while one client holds an idle keep-alive connection and another waits for its
    answer: the idle connection is closed at once (it held the stop for the whole 5 s grace),
    the request in flight is answered 200 once its record is delivered, and nothing is lost."""
    import http.client
    import signal

    port, admin = free_port(), free_port()
    (tmp_path / "stages.py").write_text("import asyncio\n\nasync def slow(event, meta):\n    await asyncio.sleep(1.0)\n    return event\n")
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{admin}"}}}}
onramps: {{web: {{type: http, codec: json, config: {{port: {port}}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:slow"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{web: [main], main: [out]}}
""")
    out = tmp_path / "out.ndjson"
    d = Daemon(cfg)
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        wait_connectable(port)
        idle.request("POST", "/", body=b'{"id": 1}')  # answered, then kept open and idle
        resp = idle.getresponse()
        assert resp.status == 200 and resp.getheader("Connection", "keep-alive").lower() != "close"
        resp.read()
        answers: list[Any] = []
        client = threading.Thread(target=lambda: answers.append(post(f"http://127.0.0.1:{port}/", b'{"id": 2}')))
        client.start()
        received = 'headrace_component_sent_events_total{component_id="web",component_kind="onramp",port="out"}'
        wait_until(lambda: metric(admin, received) == 2, timeout=10)  # the second record is in the stage, its request unanswered
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.stderr()
        took = time.monotonic() - t0
        client.join(15)
        assert answers and answers[0][0] == 200 and answers[0][2] == {"events": 1, "rejected": 0}
        assert sorted(e["id"] for e in json_lines(out)) == [1, 2]
        assert took < 4.0, f"the stop took {took:.1f} s"  # the second record's 1 s stage, not the 5 s grace
    finally:
        idle.close()
        if d.proc.poll() is None:
            d.stop()
