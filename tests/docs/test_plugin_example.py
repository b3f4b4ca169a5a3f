"""The plugin package of docs/plugins.md (examples/plugin) installs with pip, passes its own
tests (the contract suites), is listed by ``headrace plugins`` and runs in a daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.support.daemon import headrace

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The example copied (pip builds in the source tree) and installed into a folder of its
    own, as ``pip install ./examples/plugin`` would beside headrace; the environment that sees it."""
    work = tmp_path_factory.mktemp("plugin")
    src = work / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "out"))
    site = work / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                           "--target", str(site), str(src)], capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(site.glob("headrace_example-0.1.0.dist-info/entry_points.txt"))
    path = os.environ.get("PYTHONPATH", "")
    return src, {"PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}


def test_the_example_package_passes_its_own_tests(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    src, env = installed
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t"), "tests"],
                          cwd=src, capture_output=True, text=True, timeout=300, env={**os.environ, **env}, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_headrace_lists_the_installed_plugins(installed: tuple[Path, dict[str, str]]) -> None:
    _, env = installed
    done = headrace("plugins", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    mine = {(p["kind"], p["name"]): p for p in json.loads(done.stdout) if p["name"] in ("redact", "logfmt")}
    assert mine[("operators", "redact")]["origin"] == "headrace_example.redact:RedactOperator" and mine[("operators", "redact")]["loads"]
    assert mine[("codecs", "logfmt")]["origin"] == "headrace_example.logfmt:LogfmtCodec" and mine[("codecs", "logfmt")]["loads"]
    one = headrace("plugins", "redact", env=env)
    assert one.returncode == 0 and b"fields" in one.stdout and b"mask" in one.stdout


def test_the_example_config_runs_with_the_plugins(installed: tuple[Path, dict[str, str]]) -> None:
    src, env = installed
    assert headrace("check", str(src / "example.yaml"), env=env).returncode == 0
    done = headrace("run", str(src / "example.yaml"), env=env)
    assert done.returncode == 0, done.stderr
    assert (src / "out" / "redacted.log").read_bytes().splitlines() == [b'user=ann password=*** msg="logged in"', b"user=bob msg=hello"]
    dead = [orjson.loads(line) for line in (src / "out" / "dead.ndjson").read_bytes().splitlines()]
    assert len(dead) == 1 and dead[0]["meta"]["error"]["type"] == "DecodeError" and "'=value'" in dead[0]["meta"]["error"]["message"]


def test_without_the_package_the_names_are_unknown(installed: tuple[Path, dict[str, str]]) -> None:
    src, _ = installed
    done = headrace("check", str(src / "example.yaml"))
    assert done.returncode == 78
    assert b"unknown codec 'logfmt'" in done.stderr and b"unknown operator 'redact'" in done.stderr
