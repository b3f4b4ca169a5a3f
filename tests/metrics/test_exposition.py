"""The exposition is valid for Prometheus tooling, and covers every declaration.

``promtool`` comes with the Debian package ``prometheus`` (scripts/ensure-system-deps.sh);
these tests fail, not skip, without it.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

from headrace.docs import REFERENCES, default_docs_dir, generate, stale
from headrace.metrics.defs import METRICS, exposed_series, reference_markdown
from tests.metrics.conftest import Counted, Ticking


def exposition(port: int) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install the Debian package 'prometheus' (scripts/ensure-system-deps.sh)"
    return path


def test_promtool_check_metrics_prints_nothing(counted: Counted, ticking: Ticking) -> None:
    for port in (counted.port, ticking.port):
        text, content_type = exposition(port)
        assert content_type.startswith("text/plain")
        res = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False)
        assert (res.returncode, res.stdout, res.stderr) == (0, b"", b""), res.stdout.decode() + res.stderr.decode()


def test_every_declared_metric_is_exposed(counted: Counted) -> None:
    text, _ = exposition(counted.port)
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    helps = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# HELP ")}
    never_set_here = {"headrace_kafka_consumer_lag", "headrace_kafka_committed_offset", "headrace_worker_restarts_total",
                      "headrace_loop_blocked_seconds_total", "headrace_config_reloads_total", "headrace_onramp_refused_total",
                      "headrace_component_buffered_bytes", "headrace_error_budget_exceeded"}  # fmt: skip
    for d in METRICS:
        base = d.name.removesuffix("_total")
        assert base in helps or d.name in helps, f"{d.name} is not described (# HELP) in the exposition"
        if d.name not in never_set_here:
            assert set(exposed_series(d)) <= names, f"{d.name}: no series"
    assert "_created" not in text  # one series per counter, not two


def test_reference_doc_is_generated_from_the_declarations() -> None:
    assert "reference/metrics.md" in REFERENCES
    docs = default_docs_dir()
    assert generate()["reference/metrics.md"] == reference_markdown()
    assert (docs / "reference" / "metrics.md").read_text() == reference_markdown(), "run `make docs`"
    assert stale(docs) == []
    for d in METRICS:
        assert f"`{d.name}`" in reference_markdown()
