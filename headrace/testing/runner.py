"""``headrace test PATH...``: run configs' unit tests and report each as PASS or FAIL.

A PATH is a config, or a folder searched recursively for configs that have tests (a
``tests:`` list, or ``<name>_test.yaml`` / ``<name>_*_test.yaml`` beside them; hidden folders
are skipped). Each test gets a fresh in-process graph (``IsolatedGraph``): its injections go
in, the graph drains (end of input flushes windows and batches), then every expectation is
checked against what arrived. A failed ``events`` expectation prints a unified diff of the
pretty JSON. ``--name`` runs only the tests whose name contains a text (or matches it as a
shell pattern); ``--junit-xml`` also writes the results as JUnit XML for CI. Exit code: 0 all
passed, 1 a test failed (or none ran), 78 a config or a test file is invalid.
"""

from __future__ import annotations

import asyncio
import difflib
import fnmatch
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

from headrace.config.errors import ConfigError
from headrace.config.graph import Graph
from headrace.config.load import load_file
from headrace.contract.expr import compile_expr
from headrace.errors import EX_CONFIG
from headrace.testing.cases import Expectation, LoadedCase, case_files, load_cases
from headrace.testing.harness import Captured, IsolatedGraph
from headrace.testing.junit import CaseResult, SuiteResult, write_junit

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


def _has_tests(config: Path) -> bool:
    if case_files(config):
        return True
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "onramps" in data and bool(data.get("tests"))


def discover(paths: list[str]) -> list[str]:
    """The configs to test: each file given, and under each folder the configs that have tests (as paths under it)."""
    found: list[str] = []
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            found.append(given)
            continue
        for path in sorted([*root.rglob("*.yaml"), *root.rglob("*.yml")]):
            rel = path.relative_to(root)
            if any(part.startswith(".") for part in rel.parts) or path.stem.endswith("_test") or not _has_tests(path):
                continue
            found.append(str(root / rel))
    return list(dict.fromkeys(found))


def selected(name: str, patterns: list[str]) -> bool:
    return not patterns or any(p in name or fnmatch.fnmatchcase(name, p) for p in patterns)


def run_suite(path: str, names: list[str], stream: TextIO) -> SuiteResult:
    """The tests of one config, printed as they run."""
    began = time.perf_counter()
    suite = SuiteResult(path)
    try:
        graph = load_file(path)
        cases = load_cases(graph, shown_dir=Path(path).parent)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        suite.error = str(exc)
        return suite
    chosen = [lc for lc in cases if selected(lc.case.name, names)]
    if not cases:
        print(f"{path}: no tests (add a tests: list, or {Path(path).stem}_test.yaml beside it)", file=sys.stderr)
        return suite
    sources = ", ".join([*(["the config"] if graph.tests else []), *(p.name for p in case_files(graph.file))])
    picked = f" ({len(chosen)} selected by --name)" if names else ""
    print(f"{path}: {len(cases)} test(s) from {sources}{picked}", file=stream)
    for lc in chosen:
        t0 = time.perf_counter()
        failures = run_case(graph, lc)
        suite.cases.append(CaseResult(lc.case.name, lc.position, failures, time.perf_counter() - t0))
        if failures:
            print(f"FAIL  {lc.case.name}  ({lc.position})", file=stream)
            for line in failures:
                print(f"      {line}", file=stream)
        else:
            print(f"PASS  {lc.case.name}", file=stream)
    suite.seconds = time.perf_counter() - began
    print(f"{suite.passed} passed, {suite.failed} failed", file=stream)
    return suite


def run_config_tests(paths: str | list[str], out: TextIO | None = None, *, names: list[str] | None = None,
                     junit_xml: str | None = None) -> int:  # fmt: skip
    stream = out or sys.stdout
    given = [paths] if isinstance(paths, str) else paths
    configs = discover(given)
    if not configs:
        print(f"no config with tests under {', '.join(given)}", file=sys.stderr)
        return 1
    suites = [run_suite(path, names or [], stream) for path in configs]
    if len(suites) > 1:
        passed, failed = sum(s.passed for s in suites), sum(s.failed for s in suites)
        print(f"total: {passed} passed, {failed} failed in {len(suites)} config(s)", file=stream)
    if junit_xml is not None:
        write_junit(junit_xml, suites)
    if any(s.error for s in suites):
        return EX_CONFIG
    ran = sum(len(s.cases) for s in suites)
    if names and not ran:
        print(f"no test name matches {' or '.join(repr(n) for n in names)}", file=sys.stderr)
    return 1 if not ran or any(s.failed for s in suites) else 0
