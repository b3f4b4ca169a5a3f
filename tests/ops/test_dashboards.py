"""Checks of the Prometheus/Grafana artifacts in dashboards/.

The promtool-based tests need `promtool` (Debian package `prometheus`, installed by
scripts/ensure-system-deps.sh). They fail, not skip, when it is missing: CI installs it,
and a silently skipped check would let a broken query or alert slip through.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
DASHBOARD_JSON = DASHBOARDS / "headrace.json"
ALERTS = DASHBOARDS / "alerts.yaml"
ALERTS_TEST = DASHBOARDS / "alerts_test.yaml"

# every core metric (the first ones of docs/reference/metrics.md) must be shown somewhere on the dashboard.
CORE_METRICS = [
    "headrace_component_received_events_total",
    "headrace_component_sent_events_total",
    "headrace_component_received_bytes_total",
    "headrace_component_sent_bytes_total",
    "headrace_component_errors_total",
    "headrace_component_discarded_events_total",
    "headrace_queue_events",
    "headrace_queue_bytes",
    "headrace_event_latency_seconds",
    "headrace_event_loop_lag_seconds",
    "headrace_loop_blocked_seconds_total",
    "headrace_worker_busy_ratio",
    "headrace_worker_occupied_ratio",
    "headrace_worker_restarts_total",
    "headrace_kafka_consumer_lag",
    "headrace_kafka_committed_offset",
    "headrace_config_reloads_total",
    "headrace_config_last_reload_successful",
    "headrace_build_info",
]

EXPECTED_ALERTS = {
    "HeadraceNoEventsReceived",
    "HeadraceErrorsRising",
    "HeadraceKafkaLagGrowing",
    "HeadraceWorkerRestarts",
    "HeadraceReloadFailed",
    "HeadraceEventsStuck",
    "HeadraceNoWorkerUp",
    "HeadraceErrorBudgetExceeded",
    "HeadraceLoopBlocked",
}

# Grafana's built-in annotation source is not a Prometheus data source.
GRAFANA_BUILTIN_UID = "-- Grafana --"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found on PATH: install the Debian package 'prometheus' (scripts/ensure-system-deps.sh does it)")
    return path


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(DASHBOARD_JSON.read_text(encoding="utf-8")))


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def iter_exprs(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every PromQL expression: panel targets and annotations."""
    for panel in iter_panels(dash["panels"]):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for ann in dash.get("annotations", {}).get("list", []):
        if "expr" in ann:
            yield f"annotation {ann.get('name')!r}", ann["expr"]


def iter_datasources(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    """Every value of a "datasource" key anywhere in the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield path, value
            yield from iter_datasources(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_datasources(value, f"{path}[{i}]")


# Grafana's interval variables become plain durations; any other template variable
# (used in label matchers such as instance=~"$instance") becomes a literal value.
_GRAFANA_DURATIONS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute_grafana_variables(expr: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return _GRAFANA_DURATIONS.get(name, "placeholder")

    return _VAR_RE.sub(repl, expr)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, **kw)


# --------------------------------------------------------------------------- JSON


def test_dashboard_json_is_valid_with_fixed_uid(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "headrace-overview"
    assert dashboard["title"]
    assert isinstance(dashboard["panels"], list) and dashboard["panels"]
    assert "__inputs" not in dashboard, "export without 'share externally' inputs"


def test_dashboard_has_no_ds_prometheus_placeholder() -> None:
    assert "DS_PROMETHEUS" not in DASHBOARD_JSON.read_text(encoding="utf-8")


def test_dashboard_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"

    for name in ("job", "instance"):
        var = variables[name]
        assert var["type"] == "query"
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert query.startswith("label_values(headrace_build_info"), query
        assert query.endswith(f", {name})"), query
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_datasource_is_the_variable(dashboard: dict[str, Any]) -> None:
    refs = list(iter_datasources(dashboard))
    assert refs
    for path, ref in refs:
        if isinstance(ref, dict) and ref.get("uid") == GRAFANA_BUILTIN_UID:
            assert ref.get("type") == "grafana", path
            continue
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        assert uid == "${datasource}", f"{path}: datasource {ref!r} is not ${{datasource}}"
        if isinstance(ref, dict):
            assert ref.get("type") == "prometheus", path

    # Every panel that queries has a datasource, and so does each of its targets.
    for panel in iter_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}
            assert target.get("expr"), panel["title"]


def test_panels_have_unique_ids_and_do_not_overlap(dashboard: dict[str, Any]) -> None:
    panels = list(iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_core_metrics(dashboard: dict[str, Any]) -> None:
    text = "\n".join(expr for _, expr in iter_exprs(dashboard))
    text += "\n" + json.dumps(dashboard["templating"])
    missing = [m for m in CORE_METRICS if m not in text]
    assert not missing, f"metrics not on the dashboard: {missing}"


_METRIC_RE = re.compile(r"\bheadrace_[a-z0-9_]+")
_SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_created")


def declared_metrics() -> set[str]:
    """Metric names from the single declaration in headrace/metrics/defs.py."""
    defs = pytest.importorskip("headrace.metrics.defs")
    return {d.name for d in defs.METRICS}


def used_metrics(text: str) -> set[str]:
    names = set()
    for name in _METRIC_RE.findall(text):
        for suffix in _SERIES_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        names.add(name)
    return names


def test_dashboard_shows_every_declared_metric(dashboard: dict[str, Any]) -> None:
    declared = declared_metrics()
    text = "\n".join(expr for _, expr in iter_exprs(dashboard)) + json.dumps(dashboard["templating"])
    assert not declared - used_metrics(text), f"declared but not on the dashboard: {declared - used_metrics(text)}"


def test_dashboard_and_alerts_use_only_declared_metrics(dashboard: dict[str, Any]) -> None:
    declared = declared_metrics()
    text = "\n".join(expr for _, expr in iter_exprs(dashboard)) + json.dumps(dashboard["templating"])
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    text += "\n".join(r["expr"] for g in alerts["groups"] for r in g["rules"])
    unknown = used_metrics(text) - declared
    assert not unknown, f"queries use metrics headrace does not declare: {unknown}"


def test_substitution_of_grafana_variables() -> None:
    expr = 'sum(rate(x{instance=~"$instance", job=~"${job}"}[$__rate_interval])) / [[foo]]'
    assert substitute_grafana_variables(expr) == ('sum(rate(x{instance=~"placeholder", job=~"placeholder"}[5m])) / placeholder')


# --------------------------------------------------------------------------- promtool


def test_dashboard_queries_parse_with_promtool(promtool: str, dashboard: dict[str, Any], tmp_path: Path) -> None:
    exprs = list(iter_exprs(dashboard))
    assert len(exprs) >= 20
    rules = []
    for n, (where, expr) in enumerate(exprs):
        concrete = substitute_grafana_variables(expr)
        assert "$" not in concrete and "[[" not in concrete, f"{where}: unreplaced variable in {concrete}"
        rules.append({"record": f"headrace:panel_{n}", "expr": concrete})
    rules_file = tmp_path / "dashboard_rules.yaml"
    # JSON is valid YAML; this keeps the expressions byte-for-byte.
    rules_file.write_text(json.dumps({"groups": [{"name": "headrace-dashboard", "rules": rules}]}, indent=2))

    proc = run([promtool, "check", "rules", str(rules_file)])
    listing = "\n".join(f"headrace:panel_{n} = {where}: {e}" for n, (where, e) in enumerate(exprs))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- rules ---\n{listing}"
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout + proc.stderr


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    proc = run([promtool, "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_alert_unit_tests_pass(promtool: str) -> None:
    proc = run([promtool, "test", "rules", str(ALERTS_TEST)], cwd=DASHBOARDS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- structure


def test_alerts_have_severity_summary_description() -> None:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    alerts = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} == EXPECTED_ALERTS
    for a in alerts:
        assert a["labels"]["severity"] in {"info", "warning", "critical"}, a["alert"]
        assert a["annotations"]["summary"].strip(), a["alert"]
        assert a["annotations"]["description"].strip(), a["alert"]


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    assert doc["rule_files"] == ["alerts.yaml"]
    fires: set[str] = set()
    silent: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fires == EXPECTED_ALERTS, f"alerts never shown firing: {EXPECTED_ALERTS - fires}"
    assert silent == EXPECTED_ALERTS, f"alerts never shown silent: {EXPECTED_ALERTS - silent}"


def test_provisioning_files() -> None:
    providers = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]

    datasources = yaml.safe_load((DASHBOARDS / "provisioning" / "datasource.yaml").read_text())
    assert datasources["apiVersion"] == 1
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus"
    assert ds["url"].startswith("http")
