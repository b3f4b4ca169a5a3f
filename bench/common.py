"""Shared bench plumbing: the data set, running the real daemon, reading its report."""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
# the benchmark data lives beside the repository (shared/), referenced, never copied
DATA = BENCH.parent.parent / "shared" / "data" / "tremor-json-throughput" / "data.json.xz"


def records() -> list[bytes]:
    """Tremor's json-throughput records, or generated ones of the same shape when absent."""
    if DATA.exists():
        return [line for line in lzma.decompress(DATA.read_bytes()).split(b"\n") if line.strip()]
    out = []
    for i in range(100):
        out.append(orjson.dumps({
            "about": "lorem ipsum dolor sit amet " * 14, "guid": f"{i:08d}-0000-4000-8000-000000000000", "abool": i % 2 == 0,
            "aint": i, "short_message": ["info", "ERROR", "INFO"][i % 3], "tags": [f"tag{(i + k) % 5 + 1}" for k in range(5)],
            "array": list(range(10)), "index_type": ["applog_app4", "syslog_app1", "sqlserverlog", "applog_app6"][i % 4],
            "logger_name": f"logger{i % 4}", "syslog_hostname": f"host{i % 7}", "application": f"app{i % 7}", "type": "syslog",
            "doc-type": "doc",
        }))  # fmt: skip
    return out


def data_file(folder: Path) -> Path:
    if DATA.exists():
        return DATA
    p = folder / "data.ndjson"
    p.write_bytes(b"\n".join(records()) + b"\n")
    return p


def bare_loop_mib_s(seconds: float = 3.0, set_field: bool = False) -> tuple[float, float]:
    """The baseline: one process, orjson loads (+ one top-level field set) + dumps over the same
    records. (MiB/s, events/s)"""
    recs = records()
    loads, dumps = orjson.loads, orjson.dumps
    n = nbytes = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        if set_field:
            for r in recs:
                d = loads(r)
                d["h"] = 1
                nbytes += len(dumps(d))
        else:
            for r in recs:
                nbytes += len(dumps(loads(r)))
        n += len(recs)
    return nbytes / elapsed / 1048576, n / elapsed


def _bare_in_child(set_field: bool, conn: Any) -> None:
    conn.send(bare_loop_mib_s(set_field=set_field)[0])


def two_bare_loops_mib_s(set_field: bool = False) -> float:
    """Two bare loops at once, in two processes: their MiB/s together. What two workers could do
    at best on this machine, whose two cores do not give twice one (measured in the same run)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [ctx.Process(target=_bare_in_child, args=(set_field, w)) for _, w in pipes]
    for p in procs:
        p.start()
    total = sum(r.recv() for r, _ in pipes)
    for p in procs:
        p.join()
    return float(total)


def run_daemon(config: str, folder: Path, timeout: float = 120) -> dict[str, Any]:
    """Run ``headrace run`` on ``config``; returns the blackhole's report (if any) and timings."""
    cfg = folder / "bench.yaml"
    cfg.write_text(config)
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "headrace", "run", str(cfg)], cwd=folder, capture_output=True, timeout=timeout, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"daemon failed ({proc.returncode}):\n{proc.stderr.decode()[-3000:]}")
    report = folder / "report.json"
    out: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    out["wall_s"] = wall
    out["stdout"] = proc.stdout.decode()
    out["stderr"] = proc.stderr.decode()
    return out


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="headrace-bench-"))


def line(name: str, value: str, target: str, ok: bool) -> str:
    return f"{name:<52} {value:<44} target {target:<14} {'OK' if ok else 'BELOW TARGET'}"


def run_daemon_async(config: str, folder: Path, until: Any, timeout: float = 300,
                     on_start: Callable[[subprocess.Popen[bytes]], None] | None = None) -> None:  # fmt: skip
    """Run ``headrace run`` until ``until()`` is true (polled every 0.1 s), then SIGTERM it.

    ``on_start`` is given the daemon's process (its pid) once it is started."""
    import signal

    cfg = folder / "bench.yaml"
    cfg.write_text(config)
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    err = open(folder / "stderr.txt", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "headrace", "run", str(cfg)], cwd=folder, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        if on_start is not None:
            on_start(proc)
        deadline = time.monotonic() + timeout
        while not until():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daemon ended or timed out:\n{(folder / 'stderr.txt').read_text()[-3000:]}")
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        err.close()
