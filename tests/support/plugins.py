"""Third-party plugins for a daemon subprocess, installed the way pip would: a module and a
``*.dist-info`` folder with ``entry_points.txt`` on the daemon's ``PYTHONPATH``.

Tests use it for plugins that misbehave on purpose (a codec raising an unexpected exception,
an onramp that dies), which no built-in does.
"""

from __future__ import annotations

import os
from pathlib import Path


def install(folder: Path, name: str, modules: dict[str, str], entry_points: dict[str, dict[str, str]]) -> dict[str, str]:
    """Write ``modules`` (module name -> source) and a distribution ``name`` declaring
    ``entry_points`` (group -> {plugin name: "module:attr"}) into ``folder``; returns the
    environment for a subprocess that should see them."""
    folder.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(source)
    dist = folder / f"{name}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, plugins in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{plugin} = {target}" for plugin, target in plugins.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{folder}{os.pathsep}{path}" if path else str(folder)}
