"""TCP onramp and offramp through the real daemon with the test as the peer; client mode and
the connection limit in-process against the test's own asyncio peer."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headrace.contract.context import PluginContext
from headrace.metrics.defs import Metrics
from headrace.plugins.onramps.tcp import TcpOnramp, TcpOnrampConfig
from headrace.plugins.processors.lines import LinesPreprocessor
from tests.plugins.peers import LineServer, LoopThread, json_lines, wait_connectable, wait_ready, wait_until
from tests.support.daemon import Daemon, free_port, scrape


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_tcp_server_frames_each_connection_on_its_own(tmp_path: Path, write: Any) -> None:
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps:
  src: {{type: tcp, codec: json, preprocessors: [{{name: lines, max_line_bytes: 64}}], config: {{port: {port}}}}}
pipelines:
  main: [{{op: set, set: {{peer: "meta['tcp_peer']"}}}}]
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], src/err: [dlq], main: [out]}}
""")
    d = Daemon(cfg)
    try:
        wait_connectable(port)
        a, b, c = connect(port), connect(port), connect(port)
        a.sendall(b'{"id": 1}\n{"id": ')  # a line cut in two by another connection's traffic
        b.sendall(b'{"id": 2}\n{not json}\n')
        time.sleep(0.1)
        a.sendall(b'3}\n{"id": 4}')  # the last line has no newline: delivered when the connection closes
        b.close()
        a.close()
        c.sendall(b"x" * 200)  # an over-long line without a newline
        c.close()
        out, dlq = tmp_path / "out.ndjson", tmp_path / "dlq.ndjson"
        wait_until(lambda: len(json_lines(out)) >= 4 and len(json_lines(dlq)) >= 2, what="all events")
        got = json_lines(out)
        assert sorted(e["id"] for e in got) == [1, 2, 3, 4]
        assert len({e["peer"] for e in got}) == 2 and all(e["peer"].startswith("127.0.0.1:") for e in got)
        errors = {e["meta"]["error"]["type"]: e for e in json_lines(dlq)}
        assert set(errors) == {"DecodeError", "FramingError"}
        assert errors["DecodeError"]["event"] == "{not json}"
        assert errors["FramingError"]["meta"]["error"]["message"] == "line longer than 64 bytes"
        assert len({e["meta"]["tcp_peer"] for e in json_lines(dlq)}) == 2
    finally:
        assert d.stop() == 0, d.stderr()


def test_tcp_offramp_reconnects_after_the_server_restarts(tmp_path: Path, write: Any, peer_loop: LoopThread) -> None:
    in_port, out_port = free_port(), free_port()
    server = LineServer(peer_loop, out_port).start()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: tcp, codec: json, config: {{port: {in_port}}}}}}}
offramps: {{out: {{type: tcp, codec: json, config: {{port: {out_port}}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        wait_connectable(in_port)
        src = connect(in_port)
        src.sendall(b'{"id": 1}\n{"id": 2}\n')
        wait_until(lambda: len(server.lines) >= 2, what="the first events")
        server.stop()
        src.sendall(b'{"id": 3}\n')  # written while the peer is down: retried, not lost
        time.sleep(0.5)
        server.start()
        src.sendall(b'{"id": 4}\n')
        wait_until(lambda: len(server.lines) >= 4, what="events after the restart")
        src.close()
        assert sorted(r["id"] for r in server.records()) == [1, 2, 3, 4]
        assert server.connections == 2
        assert "cannot connect to 127.0.0.1" in d.stderr()
    finally:
        assert d.stop() == 0, d.stderr()
        server.stop()


class LineSink:
    """Stands in for the runtime's sink: newline framing per stream, records kept with their meta."""

    def __init__(self, got: list[tuple[bytes, dict[str, Any] | None]] | None = None) -> None:
        self.got = got if got is not None else []
        self.pre = LinesPreprocessor()

    def stream(self) -> LineSink:
        return LineSink(self.got)

    def frame(self, data: bytes) -> Iterator[tuple[list[bytes], list[tuple[bytes, str]]]]:
        yield [data], []

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None) -> None:
        out: list[bytes] = []
        self.pre.feed(data, out, [])
        self.got.extend((r, meta) for r in out)

    async def end_of_stream(self, meta: dict[str, Any] | None = None) -> None:
        out: list[bytes] = []
        self.pre.finish(out, [])
        self.got.extend((r, meta) for r in out)

    async def records(self, payloads: list[bytes], metas: list[dict[str, Any]] | None = None, ack: Any = None, group: Any = None) -> None: ...

    async def reject(self, rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None = None) -> None: ...


def test_tcp_client_mode_reconnects_and_frames_each_connection(tmp_path: Path) -> None:
    async def scenario() -> list[bytes]:
        sessions = iter([b"a\nb", b"c\n"])  # the first ends mid-line: flushed at its close

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(next(sessions, b""))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        onramp = TcpOnramp(TcpOnrampConfig(mode="client", port=port, reconnect_max=0.2), PluginContext("src", tmp_path))
        sink = LineSink()
        task = asyncio.create_task(onramp.run(sink))
        try:
            for _ in range(200):
                if len(sink.got) >= 3:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await onramp.stop()
            server.close()
        assert all(meta and meta["tcp_peer"] == f"127.0.0.1:{port}" for _, meta in sink.got)
        return [r for r, _ in sink.got]

    assert asyncio.run(scenario()) == [b"a", b"b", b"c"]


def test_tcp_server_resets_connections_over_max_connections_and_counts_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        metrics = Metrics()
        onramp = TcpOnramp(TcpOnrampConfig(port=port, max_connections=1), PluginContext("src", tmp_path, metrics=metrics))
        sink = LineSink()
        task = asyncio.create_task(onramp.run(sink))
        while not onramp.ready:
            await asyncio.sleep(0.01)
        try:
            _, first = await asyncio.open_connection("127.0.0.1", port)
            first.write(b"one\n")
            await first.drain()
            while not sink.got:
                await asyncio.sleep(0.01)
            second_r, second = await asyncio.open_connection("127.0.0.1", port)
            with pytest.raises(ConnectionResetError):  # refused loudly: a reset, not a clean end of stream
                await asyncio.wait_for(second_r.read(), 5)
            second.close()
            first.close()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert [r for r, _ in sink.got] == [b"one"]
        assert metrics["headrace_onramp_refused_total"].labels("src", "max_connections")._value.get() == 1

    asyncio.run(scenario())


def test_idle_connections_are_closed_so_they_cannot_lock_out_other_producers(tmp_path: Path, write: Any) -> None:
    port, mport = free_port(), free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{mport}"}}}}
onramps:
  src: {{type: tcp, codec: json, config: {{port: {port}, max_connections: 2, idle_timeout: 1s}}}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
links: {{src: [out]}}
""")
    out = tmp_path / "out.ndjson"
    d = Daemon(cfg)
    try:
        wait_ready(mport)  # not a probe connection: it could hold one of the two slots a moment
        idle, busy = connect(port), connect(port)  # every slot taken: one says nothing, one keeps talking
        idle_since = time.monotonic()
        busy.sendall(b'{"id": 1}\n')
        wait_until(lambda: len(json_lines(out)) == 1, what="the busy connection's first record")
        refused = connect(port)
        with pytest.raises(ConnectionResetError):  # a reset: its client knows it was refused (a clean close looks like an end)
            refused.recv(1)
        refused.close()
        t0 = time.monotonic()
        idle.settimeout(5)
        n = 1
        while True:  # the busy one writes every 0.3 s: never idle for 1 s
            n += 1
            busy.sendall(b'{"id": %d}\n' % n)
            try:
                idle.settimeout(0.3)
                if idle.recv(1) == b"":
                    break
            except TimeoutError:
                pass
            assert time.monotonic() - t0 < 5, "the idle connection was never closed"
        idle_s = time.monotonic() - idle_since
        late = connect(port)  # its slot is free again
        late.sendall(b'{"id": 1000}\n')
        late.close()
        busy.sendall(b'{"id": 1001}\n')
        busy.close()
        wait_until(lambda: {1000, 1001} <= {e["id"] for e in json_lines(out)}, what="the late producer's record")
        assert sorted(e["id"] for e in json_lines(out)) == [*range(1, n + 1), 1000, 1001]
        m = scrape(mport)
        assert m['headrace_onramp_refused_total{component_id="src",reason="max_connections"}'] == 1
        assert m['headrace_onramp_refused_total{component_id="src",reason="idle_timeout"}'] == 1
        assert 0.9 < idle_s < 4, idle_s
    finally:
        assert d.stop() == 0, d.stderr()
    assert "reset a connection from {'tcp_peer': '127.0.0.1:" in d.stderr() and "(max_connections; " in d.stderr()
