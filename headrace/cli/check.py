"""``headrace check``: validate configs without touching files, sockets or brokers.

Each argument is a config file or a glob (``'conf.d/*.yaml'``, ``'**/*.yaml'``, quoted so
that the shell leaves it alone). Errors and warnings are printed with the path as given,
in the order of the file; exit 0 when every file is valid, 78 (EX_CONFIG) otherwise (and
with ``--deny-warnings``, when there is a warning).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headrace.cli.environment import Environment, read_env_file, read_unit
from headrace.config.errors import ConfigError, ConfigIssue, Position, in_file_order
from headrace.errors import EX_CONFIG, EX_OK

log = logging.getLogger("headrace.check")


@dataclass
class Checked:
    file: str  # as given
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # onramps, nodes, offramps of a valid config

    def ok(self, deny_warnings: bool) -> bool:
        return not self.errors and not (deny_warnings and self.warnings)


def expand(patterns: list[str]) -> list[Checked | str]:
    """The files named: a pattern's matches (sorted), a plain name as given; a pattern matching nothing is an error."""
    out: list[Checked | str] = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            out.append(pattern)
            continue
        matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not matches:
            out.append(Checked(pattern, [ConfigIssue(Position(pattern, 1, 1), "no file matches this pattern")]))
        # a file two patterns match is checked once; NAME_test.yaml holds tests, not a config (`headrace test` reads it)
        out += [m for m in matches if m not in out and not Path(m).stem.endswith("_test")]
    return out


def environment(env_files: list[str], unit: str | None) -> Environment:
    env = Environment()
    if unit is not None:
        read_unit(Path(unit), env)
        log.debug("environment of the unit %s: %s", unit, ", ".join(sorted(env.variables)) or "nothing")
    else:
        env.variables.update(os.environ)
    for name in env_files:
        read_env_file(Path(name), env)
        log.debug("environment file %s read", name)
    return env


def check_file(path: str, env: dict[str, str]) -> Checked:
    from headrace.config.load import load_file

    result = Checked(path)
    try:
        graph = load_file(path, env=env)
    except ConfigError as exc:
        result.errors = exc.issues
        return result
    result.warnings = in_file_order(graph.warnings)
    result.counts = {kind: len(graph.of_kind(kind[:-1])) for kind in ("onramps", "nodes", "offramps")}  # type: ignore[arg-type]
    return result


def _issue(issue: ConfigIssue) -> dict[str, Any]:
    p = issue.position
    return {"file": p.file, "line": p.line, "column": p.col, "message": issue.message}


def _text(results: list[Checked], env: Environment, deny_warnings: bool) -> None:
    for issue in env.errors:
        print(issue, file=sys.stderr)
    for issue in env.warnings:
        print(f"{issue.position}: warning: {issue.message}", file=sys.stderr)
    for r in results:
        lines = [(i.position, str(i)) for i in r.errors] + [(i.position, f"{i.position}: warning: {i.message}") for i in r.warnings]
        for _, line in sorted(lines, key=lambda pl: (pl[0].line, pl[0].col)):
            print(line, file=sys.stderr)
        if r.errors:
            continue
        if not r.ok(deny_warnings):
            print(f"{r.file}: {len(r.warnings)} warning(s), refused by --deny-warnings", file=sys.stderr)
            continue
        c = r.counts
        extra = f", {len(r.warnings)} warning(s)" if r.warnings else ""
        print(f"{r.file}: ok ({c['onramps']} onramps, {c['nodes']} nodes, {c['offramps']} offramps{extra})")


def _json(results: list[Checked], env: Environment, deny_warnings: bool, ok: bool) -> None:
    files = [{"file": r.file, "ok": r.ok(deny_warnings), **r.counts, "errors": [_issue(i) for i in r.errors],
              "warnings": [_issue(i) for i in r.warnings]} for r in results]  # fmt: skip
    doc = {"ok": ok, "files": files, "errors": [_issue(i) for i in env.errors], "warnings": [_issue(i) for i in env.warnings]}
    print(json.dumps(doc, indent=2))


def run_check(patterns: list[str], *, env_files: list[str], unit: str | None, deny_warnings: bool, fmt: str) -> int:
    env = environment(env_files, unit)
    results = [item if isinstance(item, Checked) else check_file(item, env.variables) for item in expand(patterns)]
    ok = not env.errors and all(r.ok(deny_warnings) for r in results)
    if fmt == "json":
        _json(results, env, deny_warnings, ok)
    else:
        _text(results, env, deny_warnings)
    return EX_OK if ok else EX_CONFIG
