"""tcp and unix offramps count a write as delivered only once the peer confirmed it (issue 12 item 2).

The peer here is a plain socket the test drives by hand: it takes the daemon's first
connection and never reads from it, then either closes it on the unread data (a peer
that crashed or went away: the kernel answers with a reset) or just keeps it (a hung
peer). Until then the records sit in socket buffers, which the old offramp took for
delivered. A second connection is then read whole: every record must be there.
"""

from __future__ import annotations

import fcntl
import json
import socket
import struct
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port

N = 300  # ~30 KB in one batch: more than the peer's small receive buffer, less than what a write hands to the kernel


def listener(kind: str, tmp_path: Path) -> tuple[socket.socket, str]:
    """A listening socket whose connections have a small receive buffer, and the offramp config that reaches it."""
    if kind == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by accepted connections
        port = free_port()
        s.bind(("127.0.0.1", port))
        where = f"port: {port}"
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / "out.sock"))
        where = "path: out.sock"
    s.listen()
    s.settimeout(20)
    return s, where


def unread(conn: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


def read_all(conn: socket.socket) -> list[int]:
    conn.settimeout(20)
    data = b""
    while chunk := conn.recv(1 << 16):
        data += chunk
    return [json.loads(x)["id"] for x in data.splitlines() if x.strip()]


@pytest.mark.parametrize("peer", ["closes on unread data", "hangs"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_records_in_socket_buffers_are_not_delivered_until_the_peer_confirms(tmp_path: Path, write: Any, kind: str, peer: str) -> None:
    server, where = listener(kind, tmp_path)
    if peer == "hangs":
        where += ", ack_timeout: 1s"
    write("in.ndjson", "".join(json.dumps({"id": i, "pad": "x" * 80}) + "\n" for i in range(N)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}, batch_size: {N}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
offramps: {{out: {{type: {kind}, codec: json, config: {{{where}}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    first: socket.socket | None = None
    try:
        first, _ = server.accept()
        d.wait_for(lambda: unread(first) > 0)  # the records are on their way; the peer reads none
        if peer == "closes on unread data":
            first.close()  # the kernel resets the connection; what sat in buffers is gone
        t0 = time.monotonic()
        second, _ = server.accept()  # the offramp did not take the write for delivered: it connects again
        reconnect_s = time.monotonic() - t0
        with second:
            got = read_all(second)  # until the daemon, done, closes the connection
        assert d.wait(20) == 0, d.stderr()
    finally:
        d.stop()
        server.close()
        if first is not None:
            first.close()
    assert sorted(set(got)) == list(range(N)), f"missing: {sorted(set(range(N)) - set(got))[:10]}"
    assert len(got) == N, "the batch was written whole once on the new connection"
    if peer == "hangs":
        assert reconnect_s >= 0.5, f"gave up on a live connection after {reconnect_s:.2f}s (ack_timeout 1s)"
