"""Error text that cannot fail, and the process exit codes.

Error metadata is built from objects a user's stage made (its exception, its return value);
their ``__str__``/``__repr__`` may raise. Turning them into text must never fail: the record
then still reaches ``err`` with what can be said about it.
"""

from __future__ import annotations

from typing import Any

EX_OK = 0  # stopped as asked, everything in flight delivered
EX_FAIL = 1  # a runtime failure: a component could not start or died, or a forced stop
EX_CONFIG = 78  # EX_CONFIG from sysexits.h: the config is invalid

MAX_TEXT = 4096  # characters of an error message kept in an event's meta


def safe_str(obj: Any) -> str:
    """``str(obj)``, or a description when that raises; at most ``MAX_TEXT`` characters."""
    try:
        text = str(obj)
    except BaseException as exc:  # any object, any failure
        return f"<{type(obj).__name__} whose str() raised {type(exc).__name__}>"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def safe_repr(obj: Any) -> str:
    """``repr(obj)``, or a description when that raises; at most ``MAX_TEXT`` characters."""
    try:
        text = repr(obj)
    except BaseException as exc:
        return f"<{type(obj).__name__} whose repr() raised {type(exc).__name__}>"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
