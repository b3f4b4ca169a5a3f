"""Undo what loading configs in-process does to the interpreter: stage imports put the config's
folder on ``sys.path`` and its modules in ``sys.modules``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def restored_imports() -> Iterator[None]:
    """``sys.path`` and ``sys.modules`` as they were on entry, once the block ends."""
    path, modules = list(sys.path), set(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]
