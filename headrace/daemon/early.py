"""Signals that arrive before the event loop runs: recorded, not fatal.

A service manager may stop or reload the daemon while it still imports, loads its
config or starts workers. Until the loop installs its own handlers, SIGTERM, SIGINT and
SIGHUP are recorded here and handed to the loop, which then drains (an empty graph
exits 0) or reloads, instead of the process dying with the default action. A second
SIGTERM/SIGINT before the loop runs stops start-up at once (exit 1).
"""

from __future__ import annotations

import signal
from types import FrameType

from headrace.errors import EX_FAIL

SIGNALS = ((signal.SIGTERM, "term"), (signal.SIGINT, "term"), (signal.SIGHUP, "hup"))


def record_early_signals() -> list[str]:
    """Start recording; the returned list fills with "term"/"hup" as signals come."""
    got: list[str] = []
    names = dict(SIGNALS)

    def record(signum: int, _frame: FrameType | None) -> None:
        name = names[signal.Signals(signum)]
        if name == "term" and "term" in got:  # a second stop before the loop runs: give up starting at once
            raise SystemExit(EX_FAIL)
        got.append(name)

    for sig, _ in SIGNALS:
        signal.signal(sig, record)
    return got
