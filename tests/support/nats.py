"""A real nats-server with JetStream (Debian's package) on a free loopback port, stopped by its
PID; its JetStream store in a folder, so a stop and a start keep the streams."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.daemon import free_port, stop_server


def nats_server_binary() -> str:
    exe = shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).exists()), None)
    if exe is None:
        raise RuntimeError("nats-server is missing: scripts/ensure-system-deps.sh installs it (Debian package nats-server)")
    return exe


class NatsServer:
    def __init__(self, folder: Path) -> None:
        self.exe = nats_server_binary()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        path = self.folder / "nats.log"
        offset = path.stat().st_size if path.exists() else 0  # a restart appends: only what this start wrote counts
        log = open(path, "ab")  # noqa: SIM115 - the server writes it while it runs
        self.proc = subprocess.Popen([self.exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.folder / "js")],
                                     stdout=log, stderr=log)  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited ({self.proc.returncode}): {(self.folder / 'nats.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"INFO") and b"Server is ready" in path.read_bytes()[offset:]:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nats-server was not ready within 20 s")

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None
