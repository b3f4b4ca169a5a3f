"""Every config the repository holds: the examples, and the YAML configs the tests write.

Tests write their configs from string literals and f-strings; ``embedded_configs`` finds
them by reading the tests' source (an f-string's replacement fields become ``1``, which
keeps ports, counts and paths valid). Which of them ``check`` accepts is for the caller to
find out: some are meant to be invalid, some name stage modules a test writes at run time
(``stub_stage_modules`` writes stand-ins for those).
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "1"


@dataclass(frozen=True)
class ConfigText:
    origin: str  # file:line, for messages
    folder: Path  # where the config lives (relative paths resolve here)
    text: str


def example_configs() -> list[ConfigText]:
    return [ConfigText(str(p.relative_to(ROOT)), p.parent, p.read_text()) for p in sorted((ROOT / "examples").glob("*.yaml"))
            if not p.name.endswith("_test.yaml")]  # fmt: skip


def _literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values)
    return None


def embedded_configs() -> list[ConfigText]:
    """YAML mappings with an ``onramps`` key written as string literals in the tests' source."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            text = _literal_text(node)
            if text is None or "onramps" not in text:
                continue
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and "onramps" in data:
                found.append(ConfigText(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}", path.parent, text))
    return found


def _stage_refs(data: Any) -> list[str]:
    refs: list[str] = []
    for pipe in (data.get("pipelines") or {}).values() if isinstance(data.get("pipelines"), dict) else []:
        nodes = pipe if isinstance(pipe, list) else list((pipe.get("nodes") or {}).values()) if isinstance(pipe, dict) else []
        refs += [n["fn"] for n in nodes if isinstance(n, dict) and isinstance(n.get("fn"), str) and ":" in n["fn"]]
    return refs


def stub_stage_modules(data: Any, folder: Path) -> None:
    """Write a module for each ``fn: "module:callable"`` that cannot be imported, with a stage of that name."""
    for ref in _stage_refs(data):
        module, _, name = ref.partition(":")
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            continue
        path = folder.joinpath(*module.split(".")).with_suffix(".py")
        for package in list(path.relative_to(folder).parents)[:-1]:
            (folder / package).mkdir(parents=True, exist_ok=True)
            (folder / package / "__init__.py").touch()
        source = path.read_text() if path.exists() else ""
        path.write_text(source + f"\n\ndef {name}(event, meta):\n    return event\n")
