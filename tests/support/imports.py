"""Undo what loading configs in-process does to the interpreter: stage imports put the config's
folder on ``sys.path`` and its modules in ``sys.modules``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def restored_imports() -> Iterator[None]:
    """``sys.path`` and ``sys.modules`` as they were on entry, once the block ends. headrace's own
    modules first imported in the block stay: dropping one would leave a second copy of it (a new
    ``headrace.contract.tracked`` with its own write flag, say) beside modules that hold the first."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            if name != "headrace" and not name.startswith("headrace."):
                del sys.modules[name]
