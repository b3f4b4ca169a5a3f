"""Stage modules are found beside their own config, whatever was imported before in the process.

``headrace test`` runs configs from several folders in one process; a daemon reloads a config
that moved. Two folders may each hold a ``stages.py``: each config must get its own, and a
stage module named like a module the process already imported from elsewhere (not a stage
module) must be refused with a clear error, never silently replaced by the other code.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from headrace.plugins.operators.python import import_callable
from tests.support.imports import restored_imports


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    with restored_imports():
        yield


def folder(root: Path, name: str, answer: str, package: bool = False) -> Path:
    base = root / name
    if package:
        (base / "hr_pkg_stages").mkdir(parents=True)
        (base / "hr_pkg_stages" / "__init__.py").write_text("")
        (base / "hr_pkg_stages" / "stages.py").write_text(f"def f(event, meta):\n    return {answer!r}\n")
    else:
        base.mkdir(parents=True)
        (base / "hr_same_name.py").write_text(f"def f(event, meta):\n    return {answer!r}\n")
    return base


def test_two_folders_with_a_module_of_the_same_name_each_get_their_own(tmp_path: Path) -> None:
    a, b = folder(tmp_path, "a", "from a"), folder(tmp_path, "b", "from b")
    assert import_callable("hr_same_name:f", a)(None, {}) == "from a"
    assert import_callable("hr_same_name:f", b)(None, {}) == "from b"
    assert import_callable("hr_same_name:f", a)(None, {}) == "from a"


def test_a_package_of_stages_in_two_folders(tmp_path: Path) -> None:
    a, b = folder(tmp_path, "a", "pkg a", package=True), folder(tmp_path, "b", "pkg b", package=True)
    assert import_callable("hr_pkg_stages.stages:f", a)(None, {}) == "pkg a"
    assert import_callable("hr_pkg_stages.stages:f", b)(None, {}) == "pkg b"


def test_a_stage_module_named_like_a_module_imported_elsewhere_is_refused(tmp_path: Path) -> None:
    base = folder(tmp_path, "a", "x")
    (base / "hr_taken.py").write_text("def f(event, meta):\n    return 1\n")
    other = types.ModuleType("hr_taken")
    other.__file__ = str(tmp_path / "elsewhere" / "hr_taken.py")
    sys.modules["hr_taken"] = other  # what a test harness or a library imported under that name
    with pytest.raises(ImportError, match="the stage module 'hr_taken' beside the config has the name of a module already imported"):
        import_callable("hr_taken:f", base)


def test_the_config_folder_goes_first_even_when_already_on_the_path(tmp_path: Path) -> None:
    a, b = folder(tmp_path, "a", "from a"), folder(tmp_path, "b", "from b")
    sys.path[:0] = [str(b), str(a)]  # b would win the search if a stayed where it is
    assert import_callable("hr_same_name:f", a)(None, {}) == "from a"
    assert sys.path[0] == str(a)
