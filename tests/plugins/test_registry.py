"""The registry's built-in table (used when running from a source tree) and the entry points
in pyproject.toml (used when installed) must name the same plugins, so the two ways of running
headrace offer the same things."""

from __future__ import annotations

import tomllib
from pathlib import Path

from headrace import registry

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
