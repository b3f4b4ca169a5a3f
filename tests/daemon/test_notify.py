"""sd_notify through a real datagram socket named by NOTIFY_SOCKET, around a reload and a stop."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon

STAGES = '''
import time

def work(event, meta):
    if event.get("wedge"):
        time.sleep(600)
    return event
'''


class Listener:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass

    def until(self, predicate: Any, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.drain(0.1)
            if predicate():
                return
        raise AssertionError(f"not seen in time: {self.messages}")

    def states(self) -> list[str]:
        out = []
        for _, m in self.messages:
            for line in m.splitlines():
                if line.split("=")[0] in ("READY", "RELOADING", "STOPPING"):
                    out.append(line.split("=")[0])
        return out


def test_ready_reloading_ready_stopping_and_watchdog(tmp_path: Path, write: Any) -> None:
    write("stages.py", STAGES)
    write("in.ndjson", '{"id": 1}\n')
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 1, metrics: {listen: null}, stage_timeout: 600s}
onramps: {src: {type: file, config: {path: in.ndjson, follow: true, poll_interval: 50ms}}}
pipelines: {main: [{op: python, fn: "stages:work"}]}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
""")
    listener = Listener(tmp_path / "notify.sock")
    d = Daemon(cfg, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"})
    try:
        listener.until(lambda: "READY" in listener.states())
        listener.until(lambda: sum("WATCHDOG=1" in m for _, m in listener.messages) >= 2)
        assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for _, m in listener.messages)
        d.signal(signal.SIGHUP)
        listener.until(lambda: listener.states().count("READY") >= 2)
        reloading = [m for _, m in listener.messages if m.startswith("RELOADING=1")]
        assert reloading and "MONOTONIC_USEC=" in reloading[0]
        usec = int(reloading[0].split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 30
        # wedge the worker: the watchdog pings stop
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write('{"id": 2, "wedge": true}\n')
        listener.drain(2.0)  # longer than two watchdog intervals: the job is now overdue
        listener.messages.clear()
        listener.drain(2.0)
        assert not any("WATCHDOG=1" in m for _, m in listener.messages), listener.messages
    finally:
        d.signal(signal.SIGTERM)
        listener.until(lambda: "STOPPING" in listener.states())
        d.signal(signal.SIGTERM)  # the wedged batch would hold the drain: the second signal forces
        assert d.wait(30) == 1
    assert listener.states()[-1] == "STOPPING"


def test_sd_notify_order_without_workers(tmp_path: Path, write: Any) -> None:
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {tick: {type: metronome, config: {interval: 20ms}}}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {tick: [out]}
""")
    listener = Listener(tmp_path / "n.sock")
    d = Daemon(cfg, env={"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
    listener.until(lambda: "READY" in listener.states())
    d.signal(signal.SIGHUP)
    listener.until(lambda: listener.states().count("READY") == 2)
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0
    listener.drain(0.3)
    assert listener.states() == ["READY", "RELOADING", "READY", "STOPPING"]
