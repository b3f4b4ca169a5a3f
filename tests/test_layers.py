"""The layers of the package, checked on its import graph (every import statement, also those
inside functions): the contract is the base both the runtime and the plugins stand on; the
runtime loads plugins by name through the registry and never imports one; plugins never
reach into the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "headrace"

# package -> the headrace packages it must not import
RULES = {
    "contract": ("runtime", "plugins", "config", "daemon", "cli", "metrics", "testing", "registry"),
    "runtime": ("plugins", "cli", "daemon", "testing"),
    "plugins": ("runtime", "config", "daemon", "cli", "testing"),
}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: -node.level]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "headrace":  # `from headrace import registry`
                found += [(node.lineno, f"headrace.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_layers_import_only_what_is_below_them(package: str) -> None:
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for line, module in imports(path):
            parts = module.split(".")
            if parts[0] == "headrace" and len(parts) > 1 and parts[1] in RULES[package]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}")
    assert not bad, "\n".join(bad)


def test_the_rule_sees_imports_inside_functions(tmp_path: Path) -> None:
    probe = PACKAGE / "runtime" / "_layers_probe.py"
    probe.write_text("def f():\n    from headrace.plugins.operators import python\n")
    try:
        assert (2, "headrace.plugins.operators") in imports(probe)
    finally:
        probe.unlink()
