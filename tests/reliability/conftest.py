"""The reliability suite: a ``figures`` fixture each row reports its numbers to, printed as a
table at the end of the run (and written as JSON lines to ``$RELIABILITY_FIGURES`` if set)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.reliability.harness import OffsetWatcher
from tests.support.kafka_broker import KafkaBroker

Figures = Callable[..., None]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """figures(row=N, lost=..., duplicates=..., recovery_s=..., rss_mb=..., note=...)"""

    def add(**values: Any) -> None:
        request.node.user_properties.append(("figures", values))

    return add


@pytest.fixture
def watcher(kafka_broker: KafkaBroker) -> Any:
    w = OffsetWatcher(kafka_broker)
    try:
        yield w
    finally:
        w.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for outcome in ("passed", "failed", "xfailed", "xpassed"):
        for rep in terminalreporter.stats.get(outcome, []):
            if getattr(rep, "when", "call") != "call" or "tests/reliability/" not in rep.nodeid:
                continue
            merged: dict[str, Any] = {}
            for key, value in rep.user_properties:
                if key == "figures":
                    merged.update(value)
            if merged:
                rows.append((rep.nodeid.split("::")[-1], outcome, {**merged, "seconds": round(rep.duration, 1)}))
    if not rows:
        return
    rows.sort(key=lambda r: (r[2].get("row", 99), r[0]))
    terminalreporter.section("reliability figures")
    for name, outcome, values in rows:
        terminalreporter.write_line(f"{outcome:8} {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        with open(target, "a") as f:
            for name, outcome, values in rows:
                f.write(json.dumps({"test": name, "outcome": outcome, **values}) + "\n")
