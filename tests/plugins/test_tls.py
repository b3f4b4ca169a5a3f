"""TLS on the tcp and http onramps and offramps, and credentials on the http onramp (issue 18),
against real daemons and real TLS peers (certificates made by openssl in the test)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import HttpSink
from tests.support.certs import Certs, make_certs
from tests.support.daemon import Daemon, free_port, headrace, json_lines, metric


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _client_ctx(certs: Certs, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if with_cert:
        ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return ctx


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _closed_by_server(sock: socket.socket) -> bool:
    """Reads until the server closes or resets: True once it did."""
    sock.settimeout(10)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError, OSError):
        pass
    return True


def test_a_tls_tcp_source_reads_tls_clients_and_nothing_from_plain_ones(tmp_path: Path, certs: Certs) -> None:
    src = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: tcp, codec: json, config: {{port: {src}, tls: {{cert: {certs.server_cert}, key: {certs.server_key}}}}}}}}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _listening(src), timeout=30)
        with socket.create_connection(("127.0.0.1", src), timeout=10) as plain:  # no handshake: plain text
            plain.sendall(b"".join(b'{"id": %d, "plain": true}\n' % i for i in range(100)))
            assert _closed_by_server(plain)
        with socket.create_connection(("127.0.0.1", src), timeout=10) as raw, _client_ctx(certs).wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"".join(b'{"id": %d}\n' % i for i in range(100)))
        d.wait_for(lambda: _lines(tmp_path / "out.ndjson") == 100, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    events = json_lines(tmp_path / "out.ndjson")
    assert [e["id"] for e in events] == list(range(100)) and not any("plain" in e for e in events)
    assert "Traceback" not in d.stderr(), "a client that does not speak TLS is no error of the daemon's"


def test_client_auth_takes_only_clients_with_a_certificate_from_its_ca_and_names_them(tmp_path: Path, certs: Certs) -> None:
    src = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps:
  src: {{type: tcp, codec: json, config: {{port: {src}, tls: {{cert: {certs.server_cert}, key: {certs.server_key}, ca: {certs.ca},
                                                               client_auth: true}}}}}}
offramps: {{out: {{type: file, codec: json, with_meta: true, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _listening(src), timeout=30)
        with socket.create_connection(("127.0.0.1", src), timeout=10) as raw:  # a TLS client without a certificate
            try:
                with _client_ctx(certs).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b'{"id": -1}\n')
                    assert _closed_by_server(s)
            except (ssl.SSLError, ConnectionResetError):
                pass  # refused during the handshake (TLS 1.2) or right after it (TLS 1.3)
        with socket.create_connection(("127.0.0.1", src), timeout=10) as raw, \
                _client_ctx(certs, with_cert=True).wrap_socket(raw, server_hostname="127.0.0.1") as s:  # fmt: skip
            s.sendall(b"".join(b'{"id": %d}\n' % i for i in range(10)))
        d.wait_for(lambda: _lines(tmp_path / "out.ndjson") == 10, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    events = json_lines(tmp_path / "out.ndjson")
    assert "Traceback" not in d.stderr()
    assert [e["event"]["id"] for e in events] == list(range(10))
    assert {e["meta"]["tls_client_cn"] for e in events} == {"client-one"}


class _TlsLineServer:
    """A TLS server (stdlib, a thread) collecting the lines its clients send."""

    def __init__(self, port: int, certs: Certs) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
        self.data = bytearray()
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as s:
                while chunk := s.recv(65536):
                    with self.lock:
                        self.data += chunk
        except (ssl.SSLError, OSError):
            pass

    def ids(self) -> list[Any]:
        with self.lock:
            return [json.loads(x)["id"] for x in bytes(self.data).split(b"\n") if x.strip()]

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


def _file_to(tmp_path: Path, n: int, offramp: str) -> Path:
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    cfg = tmp_path / "c.yaml"
    port = free_port()
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, shutdown_timeout: 2s, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
offramps: {{out: {offramp}}}
links: {{src: [out]}}
""")
    return cfg


def test_a_tls_tcp_sink_verifies_its_server_and_delivers_everything(tmp_path: Path, certs: Certs) -> None:
    port = free_port()
    server = _TlsLineServer(port, certs)
    try:
        cfg = _file_to(tmp_path, 1000, f"{{type: tcp, codec: json, config: {{port: {port}, tls: {{ca: {certs.ca}}}}}}}")
        d = Daemon(cfg)
        assert d.wait(60) == 0, d.stderr()
        assert sorted(server.ids()) == list(range(1000))
        # a server whose certificate does not chain to the configured CA: refused, retried, nothing delivered
        cfg = _file_to(tmp_path, 10, f"{{type: tcp, codec: json, config: {{port: {port}, tls: {{ca: {certs.other_ca}}}}}}}")
        before = len(server.ids())
        d = Daemon(cfg)
        try:
            d.wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in d.stderr(), timeout=30)
        finally:
            d.stop()
        assert len(server.ids()) == before
    finally:
        server.stop()


def _https_sink(port: int, certs: Certs) -> HttpSink:
    sink = HttpSink(port)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    sink.server.socket = ctx.wrap_socket(sink.server.socket, server_side=True)
    return sink


def test_an_https_sink_is_verified_with_the_configured_ca(tmp_path: Path, certs: Certs) -> None:
    port = free_port()
    sink = _https_sink(port, certs)
    try:
        cfg = _file_to(tmp_path, 500, f'{{type: http, codec: json, config: {{url: "https://127.0.0.1:{port}/", tls: {{ca: {certs.ca}}}}}}}')
        d = Daemon(cfg)
        assert d.wait(60) == 0, d.stderr()
        assert sorted(sink.ids()) == list(range(500))
    finally:
        sink.stop()


def _post(url: str, body: bytes, ctx: ssl.SSLContext, auth: str | None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize("kind", ["bearer", "basic"])
def test_an_https_source_with_credentials_answers_401_without_them_and_lets_nothing_in(tmp_path: Path, certs: Certs, kind: str) -> None:
    port, web = free_port(), free_port()
    secret = "s3cret-token-0123456789"
    auth = "{type: bearer, token: \"${TOKEN}\"}" if kind == "bearer" else "{type: basic, user: ingest, password: \"${TOKEN}\"}"
    good = f"Bearer {secret}" if kind == "bearer" else "Basic " + base64.b64encode(f"ingest:{secret}".encode()).decode()
    bad = f"Bearer {secret}x" if kind == "bearer" else "Basic " + base64.b64encode(b"ingest:wrong-password").decode()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps:
  web: {{type: http, codec: json, config: {{port: {web}, auth: {auth}, tls: {{cert: {certs.server_cert}, key: {certs.server_key}}}}}}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{web: [out]}}
""")
    d = Daemon(cfg, env={"TOKEN": secret})
    url = f"https://127.0.0.1:{web}/"
    ctx = _client_ctx(certs)
    try:
        d.wait_for(lambda: _listening(web), timeout=30)
        for header in (None, bad, "Token " + secret):
            status, headers, _ = _post(url, b'{"id": -1}\n', ctx, header)
            assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer" if kind == "bearer" else "Basic")
        status, _, body = _post(url, b"".join(b'{"id": %d}\n' % i for i in range(20)), ctx, good)
        assert status == 200 and json.loads(body)["events"] == 20
        assert metric(port, 'headrace_onramp_refused_total{component_id="web",reason="auth"}') == 3
    finally:
        assert d.stop() == 0, d.stderr()
    assert [e["id"] for e in json_lines(tmp_path / "out.ndjson")] == list(range(20)), "nothing of a refused request entered"
    assert secret not in d.stderr()


@pytest.mark.parametrize(("onramp", "message"), [
    ("{type: tcp, config: {port: 9, tls: {key: k.pem}}}", "a listening side needs `cert`"),
    ("{type: tcp, config: {port: 9, tls: {cert: c.pem, client_auth: true}}}", "client_auth needs `ca`"),
    ("{type: http, config: {port: 9, auth: {type: bearer}}}", "type bearer takes `token`"),
    ("{type: http, config: {port: 9, auth: {type: bearer, token: short}}}", "at least 16 characters"),
    ("{type: http, config: {port: 9, auth: {type: basic, user: a, password: long-enough, token: 0123456789abcdefgh}}}", "no token"),
])  # fmt: skip
def test_tls_and_auth_settings_that_cannot_work_are_config_errors(tmp_path: Path, onramp: str, message: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
onramps: {{src: {onramp}}}
offramps: {{out: {{type: stdout}}}}
links: {{src: [out]}}
""")
    r = headrace("check", str(cfg))
    out = (r.stdout + r.stderr).decode()
    assert r.returncode == 78, out
    assert message in out


def test_a_certificate_file_that_cannot_be_read_fails_the_start_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a certificate")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: tcp, config: {{port: {free_port()}, tls: {{cert: c.pem}}}}}}}}
offramps: {{out: {{type: stdout}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    code = d.wait(30)
    assert code != 0
    assert "tls: cannot load cert/key" in d.stderr() and "c.pem" in d.stderr()
