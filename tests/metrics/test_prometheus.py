"""A real Prometheus server scrapes a running daemon; rates come back through its query API.

``prometheus`` comes with the Debian package ``prometheus`` (scripts/ensure-system-deps.sh);
the test fails, not skips, without it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.metrics.conftest import Ticking
from tests.support.daemon import free_port


@contextmanager
def prometheus(folder: Path, target: str) -> Iterator[str]:
    """A Prometheus server on 127.0.0.1 scraping ``target`` every second; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: install the Debian package 'prometheus' (scripts/ensure-system-deps.sh)"
    folder.mkdir()
    config = folder / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: headrace
    static_configs: [{{targets: ["{target}"]}}]
""")
    port = free_port()
    log = (folder / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=log, cwd=folder)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (folder / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready:\n" + (folder / "prometheus.log").read_text()
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def poll(base: str, promql: str, ok: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = query(base, promql)
        if ok(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{promql}: last result {result}")


def test_prometheus_reads_a_positive_rate(ticking: Ticking, tmp_path: Path) -> None:
    with prometheus(tmp_path / "prom", f"127.0.0.1:{ticking.port}") as base:
        up = poll(base, 'up{job="headrace"}', lambda r: r and r[0]["value"][1] == "1")
        assert up[0]["metric"]["instance"] == f"127.0.0.1:{ticking.port}"
        promql = 'rate(headrace_component_received_events_total{component_id="tick"}[5s])'
        res = poll(base, promql, lambda r: r and float(r[0]["value"][1]) > 0)
        assert 20 < float(res[0]["value"][1]) < 200  # a metronome every 10 ms
        assert res[0]["metric"]["component_kind"] == "onramp"
        # the per-worker gauge, and the build info, as the dashboard reads them
        busy = poll(base, "headrace_worker_busy_ratio", lambda r: len(r) == 2)
        assert {r["metric"]["worker"] for r in busy} == {"0", "1"}
        assert all(0 <= float(r["value"][1]) <= 1 for r in busy)
        assert query(base, "headrace_build_info")[0]["metric"]["version"]
    assert ticking.daemon.proc.poll() is None
