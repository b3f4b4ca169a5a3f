"""The installed plugins read once per state of ``sys.path`` in the test process (tests/conftest.py).

``headrace.registry`` asks ``importlib.metadata.entry_points`` for its group on every lookup
(every ``load``, ``names``, ``make_codec``): a scan of every installed distribution, about 3 ms
each. A test that loads a config per hypothesis example (or builds a chain twice per example)
makes thousands of lookups and spent most of its time there (the parity test: 3 455 lookups,
17 s of its 20; 55 s of the run in all). Inside :func:`entry_points_read_once` each group is read
once and the same answer is given again as long as ``sys.path`` holds the same entries with the
same modification times: a distribution installed or removed in a folder of the path changes
that folder's time, and a folder added to the path is a new key, so the answer is always what a
fresh read would give (only an ``entry_points.txt`` rewritten in place would go unseen; no test
does that in this process). The registry still builds its table, looks the name up and imports
the plugin as it always does. Daemons that tests start as subprocesses are not affected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from headrace import registry


def _path_state() -> tuple[tuple[str, float], ...]:
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime))
        except OSError:
            state.append((entry, -1.0))
    return tuple(state)


@contextmanager
def entry_points_read_once() -> Iterator[None]:
    """Within the block, ``headrace.registry`` gets each entry-point group from a cache (see the module)."""
    names = vars(registry)  # the module's namespace: its ``entry_points`` is importlib.metadata's, imported by name
    real = names["entry_points"]
    cache: dict[tuple[Any, ...], Any] = {}

    def cached(**params: Any) -> Any:
        key = (tuple(sorted(params.items())), _path_state())
        if key not in cache:
            cache[key] = real(**params)
        return cache[key]

    names["entry_points"] = cached
    try:
        yield
    finally:
        names["entry_points"] = real
