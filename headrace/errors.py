"""Error text that cannot fail, and the process exit codes.

Error metadata is built from objects a user's stage made (its exception, its return value);
their ``__str__``/``__repr__`` may raise, return something that is not a string, or return
megabytes. The report of that record's failure must still be made, and making it must not
fail the other records of its job. Plugins may use these too (this module imports nothing
of headrace).
"""

from __future__ import annotations

from typing import Any

EX_OK = 0  # stopped as asked, everything in flight delivered
EX_FAIL = 1  # a runtime failure: a component could not start or died, or a forced stop
EX_CONFIG = 78  # EX_CONFIG from sysexits.h: the config is invalid

MAX_MESSAGE = 64 * 1024  # characters of an exception message kept in an error meta


def type_name(obj: Any) -> str:
    try:
        name = type(obj).__name__
    except BaseException:  # a metaclass can make even this raise
        return "?"
    return name if isinstance(name, str) else "?"


def safe_str(obj: Any, limit: int | None = MAX_MESSAGE) -> str:
    """``str(obj)``, or a note saying why it could not be had; cut to ``limit`` characters."""
    return _bounded(_text(str, obj), limit)


def safe_repr(obj: Any, limit: int | None = None) -> str:
    """``repr(obj)``, or a note saying why it could not be had."""
    return _bounded(_text(repr, obj), limit)


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of an exception, safely."""
    return f"{type_name(exc)}: {safe_str(exc)}"


def _text(fn: Any, obj: Any) -> str:
    try:
        text = fn(obj)
    except BaseException as exc:  # whatever it raises is the object's fault, not the caller's
        return f"<{type_name(obj)} object: {fn.__name__}() raised {type_name(exc)}>"
    if type(text) is not str:  # a str subclass could misbehave later (its __len__, __add__ ...)
        return f"<{type_name(obj)} object: {fn.__name__}() returned {type_name(text)}>"
    return text


def _bounded(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"
