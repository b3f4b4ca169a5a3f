"""Benchmark of the metrics endpoint (issue: observability): what a scrape costs under load.

The bench-1 passthrough (blaster -> read-only stage on 2 workers -> blackhole) runs with
the metrics endpoint on; one run alternates one-second phases without scraping and
with a scrape of /metrics every 100 ms from a thread (ABBA order, so drift of the
machine hits both alike; separate runs differ by far more than 2% on a shared machine).
Throughput per phase is the offramp's encoded bytes (``headrace_component_sent_bytes_total``
of the sink, the bytes bench 1 counts), read at the phase boundaries in both kinds of
phase. The cost is the median over the pairs of 1 - scraped/unscraped of the two
adjacent phases (a pair straddles no more drift than two seconds; one hiccup moves a
median little), shown with the pairs' interquartile range. The scraping client runs on the
same two cores as the daemon (its CPU per scrape is printed), so the cost includes it.
Reported: the scrape latency p99 under load, the throughput cost, and the daemon's CPU
time per scrape measured on an idle daemon from /proc.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import BENCH, data_file, line, tmpdir

SCRAPE_EVERY = 0.1
PHASE_SECS = 1.0
PAIRS = 16
WARMUP = 2.0
CPU_SCRAPES = 300
SINK_BYTES = b'headrace_component_sent_bytes_total{component_id="sink",component_kind="offramp"}'


@contextmanager
def daemon(config: str) -> Iterator[tuple[int, str]]:
    """A ``headrace run`` subprocess with metrics on a free port: yields (pid, metrics URL) once it serves."""
    from tests.support.daemon import free_port

    folder = tmpdir()
    port = free_port()
    cfg = folder / "bench.yaml"
    cfg.write_text(config.replace("LISTEN", f"127.0.0.1:{port}"))
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    err = open(folder / "stderr.txt", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "headrace", "run", str(cfg)], cwd=folder, stdout=subprocess.DEVNULL, stderr=err, env=env)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url.replace("/metrics", "/ready"), timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"daemon did not come up:\n{(folder / 'stderr.txt').read_text()[-3000:]}") from None
                time.sleep(0.1)
        yield proc.pid, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        err.close()


def _config(folder: Path, source: str) -> str:
    return f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: "LISTEN"}}}}
onramps: {{src: {source}}}
pipelines: {{main: [{{op: python, fn: "bench.stages:read_only"}}]}}
offramps: {{sink: {{type: blackhole, codec: json, config: {{warmup_secs: 0, stop_after_secs: 3600}}}}}}
links: {{src: [main], main: [sink]}}
"""


def scrape(url: str) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
    return time.perf_counter() - t0, body


def sink_bytes(url: str) -> float:
    for row in scrape(url)[1].splitlines():
        if row.startswith(SINK_BYTES):
            return float(row.rsplit(b" ", 1)[1])
    return 0.0


def phase(url: str, scraping: bool, latencies: list[float], client_cpu: list[float]) -> float:
    """MiB/s through the sink over one phase; scrapes every ``SCRAPE_EVERY`` s when ``scraping``."""
    b0, t0 = sink_bytes(url), time.perf_counter()
    while (now := time.perf_counter()) - t0 < PHASE_SECS:
        if scraping:
            mine = time.thread_time()
            latencies.append(scrape(url)[0])
            client_cpu.append(time.thread_time() - mine)
        time.sleep(max(SCRAPE_EVERY - (time.perf_counter() - now), 0.0))
    b1, t1 = sink_bytes(url), time.perf_counter()
    return (b1 - b0) / (t1 - t0) / 1048576


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_per_scrape() -> tuple[float, int]:
    """(CPU seconds the daemon spends per /metrics request, series in the exposition), on an idle daemon."""
    with daemon(_config(tmpdir(), "{type: metronome, config: {interval: 100ms}}")) as (pid, url):
        time.sleep(1.5)  # every series exists: histograms observed, workers sampled
        c0, t0 = _cpu_seconds(pid), time.perf_counter()
        time.sleep(1.0)
        idle = (_cpu_seconds(pid) - c0) / (time.perf_counter() - t0)
        body = b""
        c0, t0 = _cpu_seconds(pid), time.perf_counter()
        for _ in range(CPU_SCRAPES):
            body = scrape(url)[1]
        spent = _cpu_seconds(pid) - c0 - idle * (time.perf_counter() - t0)
    series = sum(1 for row in body.splitlines() if row and not row.startswith(b"#"))
    return max(spent, 0.0) / CPU_SCRAPES, series


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(int(p * len(s)), len(s) - 1)] if s else float("nan")


def scrape_under_load() -> list[str]:
    folder = tmpdir()
    plain: list[float] = []
    scraped: list[float] = []
    latencies: list[float] = []
    client_cpu: list[float] = []
    with daemon(_config(folder, f"{{type: blaster, codec: json, config: {{source: {data_file(folder)}}}}}")) as (_pid, url):
        time.sleep(WARMUP)
        for i in range(PAIRS):
            for scraping in (False, True) if i % 2 == 0 else (True, False):
                (scraped if scraping else plain).append(phase(url, scraping, latencies, client_cpu))
    without, with_ = statistics.mean(plain), statistics.mean(scraped)
    costs = sorted(1 - s / p for p, s in zip(plain, scraped, strict=True))
    cost = statistics.median(costs)
    client_ms = statistics.mean(client_cpu) * 1000
    p50, p99 = _pct(latencies, 0.5) * 1000, _pct(latencies, 0.99) * 1000
    cpu, series = cpu_per_scrape()
    cores = len(os.sched_getaffinity(0))
    share = cpu / SCRAPE_EVERY / cores
    return [
        f"  passthrough, 2 workers, {PAIRS} x 2 alternating {PHASE_SECS:.0f} s phases: {without:.1f} MiB/s unscraped, "
        f"{with_:.1f} MiB/s scraped every {SCRAPE_EVERY * 1000:.0f} ms; the client spends {client_ms:.2f} ms CPU per scrape on the same cores",
        line("6. Scrape latency p99 under load", f"{p99:.1f} ms (p50 {p50:.1f} ms, {len(latencies)} scrapes)", "<100 ms", p99 < 100),
        line("7. Throughput cost of scraping every 100 ms", f"{cost * 100:.1f}% median of {PAIRS} pairs (IQR {_pct(costs, 0.25) * 100:.1f}..{_pct(costs, 0.75) * 100:.1f}%)",
             "<2%", cost < 0.02),
        line("7b. Daemon CPU per scrape (idle, /proc)", f"{cpu * 1000:.2f} ms x 10/s = {share * 100:.2f}% of {cores} cores ({series} series)",
             "<2%", share < 0.02),
    ]  # fmt: skip


class _Tap:
    """A ``GET /tap`` stream read in a thread (what ``headrace tap`` does), until ``close``."""

    def __init__(self, url: str, component: str, every: int) -> None:
        import threading

        self.seen = 0
        self.resp = urllib.request.urlopen(url.replace("/metrics", f"/tap?component={component}&every={every}"), timeout=30)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:  # big reads, lines counted in C: the client's own cost (it shares the cores) stays small
            while chunk := self.resp.read1(1 << 16):
                self.seen += chunk.count(b"\n")
        except Exception:  # the stream cut by close(): http.client fails in several ways then
            pass

    def close(self) -> None:
        try:
            self.resp.fp.raw._sock.shutdown(2)  # type: ignore[union-attr]  # end the stream now: the daemon detaches the tap
        except (AttributeError, OSError):
            pass
        self.resp.close()
        self.thread.join(5)


def tap_cost() -> list[str]:
    """Bench-1 passthrough with and without a 1/100 tap on the stage's out port, in alternating
    1 s phases (ABBA) of one run; the cost is the median over the pairs of 1 - tapped/untapped."""
    folder = tmpdir()
    plain: list[float] = []
    tapped: list[float] = []
    shown = 0
    with daemon(_config(folder, f"{{type: blaster, codec: json, config: {{source: {data_file(folder)}}}}}")) as (_pid, url):
        time.sleep(WARMUP)
        for i in range(PAIRS):
            for tapping in (False, True) if i % 2 == 0 else (True, False):
                tap = _Tap(url, "main.read_only", 100) if tapping else None
                try:
                    (tapped if tapping else plain).append(phase(url, False, [], []))
                finally:
                    if tap is not None:
                        tap.close()
                        shown += tap.seen
    costs = sorted(1 - t / p for p, t in zip(plain, tapped, strict=True))
    cost = statistics.median(costs)
    return [
        f"  passthrough, 2 workers, {len(plain)} x 2 alternating {PHASE_SECS:.0f} s phases: {statistics.mean(plain):.1f} MiB/s untapped, "
        f"{statistics.mean(tapped):.1f} MiB/s with a 1/100 tap on main.read_only/out ({shown} events shown); no tap attached costs "
        "one empty-dict check per batch sent",
        line("8. Throughput cost of a 1/100 tap", f"{cost * 100:.1f}% median of {len(costs)} pairs (IQR {_pct(costs, 0.25) * 100:.1f}.."
             f"{_pct(costs, 0.75) * 100:.1f}%)", "<5%", cost < 0.05),
    ]  # fmt: skip
