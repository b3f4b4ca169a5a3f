"""``headrace test CONFIG``: run the config's unit tests and report each as PASS or FAIL.

Each test gets a fresh in-process graph (``IsolatedGraph``): its injections go in, the
graph drains (end of input flushes windows and batches), then every expectation is
checked against what arrived. A failed ``events`` expectation prints a unified diff
of the pretty JSON. Exit code: 0 all passed, 1 a test failed (or there are none),
78 the config or a test file is invalid.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from headrace.config.errors import ConfigError
from headrace.config.graph import Graph
from headrace.config.load import load_file
from headrace.contract.expr import compile_expr
from headrace.errors import EX_CONFIG
from headrace.testing.cases import Expectation, LoadedCase, case_files, load_cases
from headrace.testing.harness import Captured, IsolatedGraph

SHOWN = 3  # events shown when a where does not hold


def _plain(value: Any) -> Any:
    """A JSON-like value for comparing and printing (bytes as text, tuples as lists)."""
    return json.loads(json.dumps(value, default=_default, sort_keys=True))


def _default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return repr(value)


def _pretty(value: Any) -> str:
    return json.dumps(_plain(value), indent=2, sort_keys=True, ensure_ascii=False)


def diff(expected: list[Any], actual: list[Any]) -> list[str]:
    """A unified diff of the pretty JSON of two event lists."""
    return list(difflib.unified_diff(_pretty(expected).splitlines(), _pretty(actual).splitlines(), "expected", "actual", lineterm=""))


def check(exp: Expectation, got: Captured) -> list[str]:
    """What is wrong with ``got`` for ``exp``: an empty list when it holds."""
    problems: list[str] = []
    values = [v for v, _ in got]
    if exp.count is not None and len(got) != exp.count:
        problems.append(f"expected {exp.count} event(s), got {len(got)}")
    if exp.events is not None and _plain(exp.events) != _plain(values):
        problems.append(f"events differ ({len(exp.events)} expected, {len(values)} arrived):")
        problems += ["  " + line for line in diff(exp.events, values)]
    if exp.where is not None:
        pred: Callable[..., Any] = compile_expr(exp.where)
        bad: list[str] = []
        for value, meta in got:
            try:
                ok = bool(pred(value, meta))
                reason = "false"
            except Exception as exc:
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            if not ok:
                bad.append(
                    f"  {reason} for event {json.dumps(_plain(value), sort_keys=True)} meta {json.dumps(_plain(meta), sort_keys=True)}"
                )
        if bad:
            problems.append(f"where {exp.where!r} does not hold for {len(bad)} of {len(got)} event(s):")
            problems += bad[:SHOWN] + ([f"  ... and {len(bad) - SHOWN} more"] if len(bad) > SHOWN else [])
    return problems


def run_case(graph: Graph, lc: LoadedCase) -> list[str]:
    """Run one test; the list of failures (empty when it passed)."""
    try:
        isolated = IsolatedGraph(graph, lc.case, lc.injections, lc.expectations)
        outcome = asyncio.run(isolated.run())
    except ConfigError as exc:  # a stand-in for a pipeline port did not resolve: report, do not crash
        return [f"cannot build the graph for this test: {exc}"]
    except Exception as exc:
        return [f"the test could not run: {type(exc).__name__}: {exc}"]
    if outcome.error is not None:
        return [outcome.error]
    failures: list[str] = []
    for j, (exp, point) in enumerate(zip(lc.case.expect, lc.expectations, strict=True)):
        problems = check(exp, outcome.captured[str(point)])
        if problems:
            failures.append(f"expect[{j}] at {exp.at}: " + problems[0])
            failures += problems[1:]
    if outcome.unacked:
        failures.append(f"{outcome.unacked} injected batch(es) were never acknowledged: an event was held and forgotten")
    return failures


def run_config_tests(path: str, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    try:
        graph = load_file(path)
        cases = load_cases(graph)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    if not cases:
        print(f"{path}: no tests (add a tests: list, or {Path(path).stem}_test.yaml beside it)", file=sys.stderr)
        return 1
    sources = ", ".join([*(["the config"] if graph.tests else []), *(p.name for p in case_files(graph.file))])
    print(f"{path}: {len(cases)} test(s) from {sources}", file=stream)
    failed = 0
    for lc in cases:
        failures = run_case(graph, lc)
        if failures:
            failed += 1
            print(f"FAIL  {lc.case.name}  ({lc.position})", file=stream)
            for line in failures:
                print(f"      {line}", file=stream)
        else:
            print(f"PASS  {lc.case.name}", file=stream)
    print(f"{len(cases) - failed} passed, {failed} failed", file=stream)
    return 1 if failed else 0
