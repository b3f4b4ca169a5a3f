"""Signals that arrive before the event loop runs: recorded, not fatal.

A service manager may stop or reload the daemon while it still imports, loads its
config or starts workers. Until the loop installs its own handlers, SIGTERM, SIGINT and
SIGHUP are recorded here and handed to the loop, which then drains (an empty graph
exits 0) or reloads, instead of the process dying with the default action.
"""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = ((signal.SIGTERM, "term"), (signal.SIGINT, "term"), (signal.SIGHUP, "hup"))


def record_early_signals() -> list[str]:
    """Start recording; the returned list fills with "term"/"hup" as signals come."""
    got: list[str] = []
    names = dict(SIGNALS)

    def record(signum: int, _frame: FrameType | None) -> None:
        got.append(names[signal.Signals(signum)])

    for sig, _ in SIGNALS:
        signal.signal(sig, record)
    return got
