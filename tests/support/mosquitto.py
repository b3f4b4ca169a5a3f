"""A real mosquitto broker (Debian's package) on a free loopback port, stopped by its PID; with
persistence in a folder (a stop and a start keep the sessions), no limit on a session's queue and
1000 messages in flight per client."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.daemon import free_port, stop_server


class Mosquitto:
    def __init__(self, folder: Path) -> None:
        exe = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None)
        if exe is None:
            raise RuntimeError("mosquitto is missing: scripts/ensure-system-deps.sh installs it (Debian package mosquitto)")
        self.exe = exe
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (folder / "mosquitto.conf").write_text(f"""
listener {self.port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {folder}/
autosave_interval 1
max_queued_messages 0
max_inflight_messages 1000
log_dest file {folder}/mosquitto.log
""")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.folder / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {(self.folder / 'mosquitto.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 20 s")

    def stop(self) -> None:
        stop_server(self.proc)
        self.proc = None
