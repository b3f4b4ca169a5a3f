"""The stdout offramp and a reader that does not keep up: the offramp waits, the daemon does not."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.support.daemon import HEADRACE, free_port


def test_a_full_stdout_pipe_holds_the_offramp_not_the_event_loop(tmp_path: Path) -> None:
    """A blocking stdout pipe nobody reads used to block the loop inside ``os.write``: /health,
    /metrics and every other component stopped. Now the write waits in a thread."""
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{tick: {{type: metronome, config: {{interval: 1ms}}}}}}
pipelines: {{main: [{{op: set, set: {{pad: "'x' * 2000"}}}}]}}
offramps: {{out: {{type: stdout, codec: json}}}}
links: {{tick: [main], main: [out]}}
""")
    proc = subprocess.Popen([*HEADRACE, "run", str(cfg)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while True:  # until the daemon serves /health: it started
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the daemon never served /health"
                time.sleep(0.05)
        time.sleep(0.5)  # 2 KiB records every ms: the 64 KiB pipe is full long before this
        for _ in range(5):  # the loop still answers while the offramp waits for the reader
            t0 = time.monotonic()
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
            assert time.monotonic() - t0 < 2
            time.sleep(0.1)
        got = 0
        deadline = time.monotonic() + 10
        while got < 200_000:  # read: the writes go on
            try:
                got += len(proc.stdout.read(1 << 16) or b"")  # type: ignore[union-attr]
            except BlockingIOError:
                assert time.monotonic() < deadline, f"only {got} bytes came out once read"
                time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while proc.poll() is None:  # keep reading while it drains
            try:
                proc.stdout.read(1 << 16)  # type: ignore[union-attr]
            except BlockingIOError:
                time.sleep(0.01)
            assert time.monotonic() < deadline, "the daemon did not stop"
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

