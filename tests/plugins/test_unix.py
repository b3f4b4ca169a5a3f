"""Unix stream socket onramp and offramp through the real daemon."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.peers import LineServer, LoopThread, json_lines, wait_connectable, wait_ready, wait_until
from tests.support.daemon import Daemon, free_port, headrace, metric


def test_unix_in_and_out_replacing_a_stale_socket(tmp_path: Path, write: Any, peer_loop: LoopThread) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "in.sock"))  # left behind by a crashed process: nobody listens
    stale.close()
    server = LineServer(peer_loop, path=tmp_path / "out.sock").start()
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: unix, codec: json, config: {path: in.sock}}}
pipelines:
  main: [{op: set, set: {via: "meta['unix_path']"}}]
offramps: {out: {type: unix, codec: json, config: {path: out.sock}}}
links: {src: [main], main: [out]}
""")
    d = Daemon(cfg)
    try:
        wait_connectable(path=tmp_path / "in.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as a, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as b:
            a.connect(str(tmp_path / "in.sock"))
            b.connect(str(tmp_path / "in.sock"))
            a.sendall(b'{"id": 1}\n{"id"')
            b.sendall(b'{"id": 2}\n')
            a.sendall(b': 3}')  # completed at close
        wait_until(lambda: len(server.lines) >= 3, what="events at the unix peer")
        records = server.records()
        assert sorted(r["id"] for r in records) == [1, 2, 3]
        assert {r["via"] for r in records} == {str(tmp_path / "in.sock")}
    finally:
        assert d.stop() == 0, d.stderr()
        server.stop()
    assert not (tmp_path / "in.sock").exists()  # the server removes its socket on stop


@pytest.mark.parametrize("occupant", ["file", "live socket"])
def test_unix_refuses_to_replace_a_regular_file_or_a_live_socket(tmp_path: Path, write: Any, occupant: str) -> None:
    path = tmp_path / "in.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if occupant == "file":
        path.write_text("not a socket")
    else:
        live.bind(str(path))
        live.listen()
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: unix, config: {path: in.sock}}}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [out]}
""")
    d = Daemon(cfg)
    try:
        expected = "exists and is not a socket" if occupant == "file" else "another process is listening on"
        d.wait_for(lambda: expected in d.stderr() or d.proc.poll() is not None, timeout=10)
        assert expected in d.stderr()
    finally:
        d.stop()
        live.close()
    assert path.exists()


def test_unix_path_too_long_is_a_config_error(tmp_path: Path, write: Any) -> None:
    cfg = write("c.yaml", f"""
version: 1
onramps: {{src: {{type: unix, config: {{path: {"d" * 120}.sock}}}}}}
offramps: {{out: {{type: stdout}}}}
links: {{src: [out]}}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78 and "longer than 107 bytes" in res.stderr.decode()


def test_unix_idle_connections_are_closed_and_refusals_are_counted(tmp_path: Path, write: Any) -> None:
    mport = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{mport}"}}}}
onramps: {{src: {{type: unix, config: {{path: in.sock, max_connections: 1, idle_timeout: 500ms}}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
""")
    path = str(tmp_path / "in.sock")
    d = Daemon(cfg)
    try:
        wait_ready(mport)  # not a probe connection: it could hold the one slot (max_connections: 1) a moment
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
            idle.connect(path)
            idle.settimeout(5)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as refused:
                refused.connect(path)
                refused.settimeout(5)
                assert refused.recv(1) == b""
                with pytest.raises(BrokenPipeError):  # no reset on a unix socket, but a write after the close fails at once
                    refused.sendall(b'{"id": -1}\n')
            assert idle.recv(1) == b""  # closed after 500 ms with nothing to read: the slot is free
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late:
            late.connect(path)
            late.sendall(b'{"id": 1}\n')
        wait_until(lambda: json_lines(tmp_path / "out.ndjson") == [{"id": 1}], what="the late producer's record")
        wait_until(lambda: metric(mport, 'headrace_onramp_refused_total{component_id="src",reason="idle_timeout"}') == 1, what="idle count")
        assert metric(mport, 'headrace_onramp_refused_total{component_id="src",reason="max_connections"}') == 1
    finally:
        assert d.stop() == 0, d.stderr()
