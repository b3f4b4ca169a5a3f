"""Running the examples (`make run`) changes no file of the repository: what they write is ignored by git."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.config.load import load_file
from headrace.contract.context import PluginContext
from headrace.plugins.offramps.file import FileOfframp
from tests.support.imports import restored_imports

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if not p.stem.endswith("_test"))


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    with restored_imports():
        yield


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
@pytest.mark.parametrize("config", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_what_an_example_writes_is_ignored_not_tracked(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    graph = load_file(config, env={})
    written = [FileOfframp(c.config, PluginContext(c.id, graph.base_dir)).path for c in graph.of_kind("offramp") if c.plugin == "file"]
    assert written, "each example writes a file (its errors or dead letters)"
    for path in written:
        rel = str(path.relative_to(ROOT))
        assert git("ls-files", "--error-unmatch", rel).returncode != 0, f"{rel} is tracked: running the example rewrites it"
        assert git("check-ignore", "-q", rel).returncode == 0, f"{rel} is not ignored: running the example leaves an untracked file"
