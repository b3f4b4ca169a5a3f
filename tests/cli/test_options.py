"""Global options and help through the real command: flags before or after the verb, HEADRACE_LOG_LEVEL,
--log-level debug that shows something, UTC ISO 8601 times in text logs, --version, help with units,
and every option documented in docs/cli.md."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from headrace.cli.main import parser
from tests.support.daemon import headrace

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """\
version: 1
onramps: {src: {type: stdin}}
pipelines: {main: [{op: filter, where: "True"}]}
offramps: {out: {type: stdout}}
links: {src: [main], main: [out]}
"""
TEXT_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (DEBUG|INFO|WARNING|ERROR)\s+(headrace[.\w]*): ")


def debug_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if " DEBUG " in line]


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_log_level_before_or_after_the_verb_or_from_the_environment(tmp_path: Path, where: str) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    args = {"before": ["--log-level", "debug", "check", "c.yaml"], "after": ["check", "c.yaml", "--log-level", "debug"],
            "env": ["check", "c.yaml"]}[where]  # fmt: skip
    r = headrace(*args, cwd=tmp_path, env={"HEADRACE_LOG_LEVEL": "debug" if where == "env" else "info"})
    assert r.returncode == 0, r.stderr.decode()
    lines = debug_lines(r.stderr)
    # debug shows what was loaded: the file, each plugin and where it comes from, the resolved edges
    assert any("headrace.config: config c.yaml (" in line for line in lines), lines
    assert any("headrace.plugins: operator 'filter': headrace.plugins.operators.filter:FilterOperator (built-in)" in line for line in lines)
    assert any("headrace.config: c.yaml: src/out -> main.filter" in line for line in lines), lines


def test_info_shows_no_debug_and_the_flag_after_the_verb_wins(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    r = headrace("check", "c.yaml", cwd=tmp_path, env={"HEADRACE_LOG_LEVEL": "info"})
    assert r.returncode == 0 and r.stderr == b""
    r = headrace("--log-level", "debug", "check", "c.yaml", "--log-level", "info", cwd=tmp_path)
    assert r.returncode == 0 and debug_lines(r.stderr) == []
    r = headrace("check", "c.yaml", "--log-format", "json", "--log-level", "debug", cwd=tmp_path)
    docs = [json.loads(line) for line in r.stderr.decode().splitlines()]
    assert docs and all(d["level"] == "debug" for d in docs)


def test_a_bad_log_level_in_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    r = headrace("check", "c.yaml", cwd=tmp_path, env={"HEADRACE_LOG_LEVEL": "loud"})
    assert r.returncode != 0
    assert r.stderr.decode() == "headrace: HEADRACE_LOG_LEVEL='loud': expected one of debug, info, warning, error\n"


def test_text_logs_carry_utc_iso_8601_times(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    before = datetime.now(UTC)
    r = headrace("--log-level", "debug", "check", "c.yaml", cwd=tmp_path, env={"TZ": "America/Los_Angeles"})  # far from UTC
    after = datetime.now(UTC)
    lines = debug_lines(r.stderr)
    assert lines
    for line in lines:
        m = TEXT_LINE.match(line)
        assert m, line
        ts = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before.replace(microsecond=0) <= ts.replace(microsecond=0) <= after, (line, before, after)


def test_version_names_python() -> None:
    r = headrace("--version")
    assert re.fullmatch(r"headrace \S+ \(Python 3\.\d+\.\d+\S*, \w+, \w+\)\n", r.stdout.decode()), r.stdout


def _verbs() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_help_texts_say_their_units_and_defaults() -> None:
    top = headrace("top", "--help").stdout.decode()
    assert "seconds between refreshes (default: 1.0)" in top
    check = headrace("check", "--help").stdout.decode()
    for option in ("--deny-warnings", "--format {text,json}", "--env-file FILE", "--unit UNIT_FILE", "--log-level", "CONFIG [CONFIG ...]"):
        assert option in check, option
    test = headrace("test", "--help").stdout.decode()
    assert "--name TEXT" in test and "--junit-xml FILE" in test and "recursively" in test
    plugins = headrace("plugins", "--help").stdout.decode()
    assert "KIND/NAME" in plugins and "--format {text,json}" in plugins
    assert "HEADRACE_LOG_LEVEL" in headrace("--help").stdout.decode()


def test_every_option_is_documented() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for verb, sub in _verbs().items():
        if f"headrace {verb}" not in doc:
            missing.append(verb)
        missing += [f"{verb} {o}" for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help" and o not in doc]
    missing += [v for v in ("HEADRACE_LOG_LEVEL", "HEADRACE_LOG_FORMAT", "--version") if v not in doc]
    assert missing == []
