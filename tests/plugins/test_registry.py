"""The registry's built-in table (used when running from a source tree) and the entry points
in pyproject.toml (used when installed) must name the same plugins, so the two ways of running
headrace offer the same things."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

from headrace import registry
from tests.support.plugins import install

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_table_matches_the_entry_points_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = project["entry-points"]
    for kind in registry.KINDS:
        declared = groups.get(f"headrace.{kind}", {})
        assert declared == registry.BUILTINS[kind], f"headrace.{kind}: pyproject.toml and registry.BUILTINS differ"
    assert set(groups) == {f"headrace.{k}" for k in registry.KINDS}, "an entry-point group the registry does not read"


def test_every_builtin_loads_and_has_its_name() -> None:
    for kind in registry.KINDS:
        for name in registry.BUILTINS[kind]:
            cls = registry.load(kind, name)
            assert getattr(cls, "name", None) == name, f"{kind[:-1]} '{name}' declares name {getattr(cls, 'name', None)!r}"


def test_installed_plugins_are_read_again_when_the_path_changes(tmp_path: Path) -> None:
    """The plugin table is cached (a scan of every distribution costs ~3 ms a lookup), but a plugin
    installed into a folder of the path, or a folder added to it, is seen at the next lookup."""
    assert "cached_probe" not in registry.names("operators")
    calls = []
    real = registry.entry_points

    def counting(**params: Any) -> Any:
        calls.append(params)
        return real(**params)

    folder = tmp_path / "site"
    folder.mkdir()
    sys.path.insert(0, str(folder))
    registry.entry_points = counting  # type: ignore[assignment]
    try:
        registry.names("operators")
        registry.names("operators")
        assert len(calls) <= 1, "the second lookup, the path unchanged, is answered from the cache"
        install(folder, "probe", {"cached_probe_mod": "class Op:\n    name = 'cached_probe'\n"},
                {"headrace.operators": {"cached_probe": "cached_probe_mod:Op"}})
        assert "cached_probe" in registry.names("operators"), "installed into a folder of the path: read again"
    finally:
        registry.entry_points = real  # type: ignore[assignment]
        sys.path.remove(str(folder))
    assert "cached_probe" not in registry.names("operators"), "its folder left the path: gone"
