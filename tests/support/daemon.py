"""Run the real ``headrace`` command as a subprocess, as a user or systemd would."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tests.support.ports import free_port as free_port  # re-exported: tests import it from here

HEADRACE = [sys.executable, "-m", "headrace"]
RELOAD_HEADERS = {"Content-Type": "application/json"}  # what POST /reload needs (a cross-site form cannot send it)




def headrace(*args: str, cwd: Path | None = None, input: bytes | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """Run ``headrace ARGS`` to completion."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*HEADRACE, *args], cwd=cwd, input=input, capture_output=True, timeout=timeout, env=full_env, check=False)


LIVE: list[Daemon] = []  # every daemon a test started; the conftest kills what a failed test left running


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)``, returning the moment the process exits. ``Popen.wait`` with a timeout checks
    by sleeping up to 50 ms at a time (25 ms late on average, at every daemon's stop); a pidfd becomes
    readable when the process exits. Raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    if proc.returncode is None:
        deadline = time.monotonic() + timeout
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:  # no pidfd (an old kernel): Popen's own polling below
            return proc.wait(timeout)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(max(timeout, 0.0) * 1000)
        finally:
            os.close(fd)
        try:
            return proc.wait(max(deadline - time.monotonic(), 0.0))  # reaps it (at once when it exited)
        except subprocess.TimeoutExpired:
            raise subprocess.TimeoutExpired(proc.args, timeout) from None
    return proc.returncode


def kill_leftovers(keep: frozenset[int] = frozenset()) -> list[int]:
    """SIGKILL daemons still running (a test failed before stopping them), except those in
    ``keep`` (ids of daemons that broader fixtures own); their PIDs."""
    killed = []
    for d in list(LIVE):
        if id(d) in keep:
            continue
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)
            killed.append(d.pid)
        LIVE.remove(d)
    return killed


class Daemon:
    """A running ``headrace run`` subprocess; stopped by PID."""

    def __init__(self, config: Path, *extra: str, env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL,
                 run_args: tuple[str, ...] = (), preexec: Any = None) -> None:  # fmt: skip
        self.config = config
        self.stdout_path = config.parent / f"{config.stem}.stdout"
        self.stderr_path = config.parent / f"{config.stem}.stderr"
        self._out: IO[bytes] = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in wait()
        self._err: IO[bytes] = open(self.stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([*HEADRACE, *extra, "run", *run_args, str(config)], cwd=config.parent, stdout=self._out, stderr=self._err,
                                     stdin=stdin, env={**os.environ, **(env or {})}, preexec_fn=preexec)  # fmt: skip
        LIVE.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return wait_exit(self.proc, timeout)
        finally:
            self._out.flush()
            self._err.flush()

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(5)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def children(self) -> list[int]:
        """PIDs of processes whose parent is this daemon, or its fork server."""
        kids = []
        for pid in _all_pids():
            if _ppid(pid) == self.pid:
                kids.append(pid)
                kids.extend(p for p in _all_pids() if _ppid(p) == pid)
        return kids

    def worker(self) -> int | None:
        """The PID of a worker (a child of the fork server, not of the daemon itself), or None."""
        return next((p for p in self.children() if _ppid(p) not in (self.pid, -1)), None)

    def wait_for(self, predicate: Any, timeout: float = 20, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(interval)
        raise AssertionError(f"timed out waiting; stderr:\n{self.stderr()}")


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextmanager
def running(config: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    d = Daemon(config, *extra, env=env)
    try:
        yield d
    finally:
        d.stop()


def scrape(port: int) -> dict[str, float]:
    """Prometheus text from the daemon's /metrics as {series: value}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric(port: int, series: str, default: float = 0.0) -> float:
    """One series from /metrics, or ``default`` while the daemon is not listening yet."""
    try:
        return scrape(port).get(series, default)
    except OSError:
        return default


def json_lines(path: Path) -> list[Any]:
    """The complete JSON lines of a file a daemon may still be writing (it can end in half a line)."""
    import json

    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines() if x.strip()]


def lines_written(path: Path) -> int:
    """How many complete lines a file a daemon is writing has, without parsing them: cheap enough to
    poll often when a test must act (SIGKILL, SIGTERM) while the daemon is still busy."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


def ids_written(path: Path, key: Callable[[Any], Any] | None = None) -> list[Any]:
    """The ``id`` (or ``key(event)``) of every complete line of an ndjson file a running daemon is
    writing (a last line without its newline is still being written: left out), [] while the file
    does not exist."""
    import json

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    events = [json.loads(x) for x in data.split(b"\n")[:-1] if x.strip()]
    return [e["id"] for e in events] if key is None else list(map(key, events))


def stop_server(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop a server a test started, by its PID: ``sig`` (SIGTERM; PostgreSQL's fast shutdown is
    SIGINT), then SIGKILL if it does not exit within 20 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            wait_exit(proc, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
