"""Run-time bounds of expressions: whatever the event data, one evaluation takes bounded time
and memory. ``headrace.contract.expr`` rewrites the allow-listed AST to call these.

- Operators that can make a result much larger than their operands (``**``, ``*``, ``<<``,
  ``%`` on strings) and the methods that can (``replace``, ``join``), ``range`` and format
  specs (``f"{x:>{w}}"``, ``"%*d"``) check the size of what they would make first.
- Comprehensions and generator expressions, the only loops, draw on one budget per
  evaluation (``Budget``): each step of a ``for`` counts, each element made counts its
  approximate size, and a deadline caps the time.

Every bound raises ``OverflowError`` with the bound in its message; the operator running the
expression then sends the event to ``err`` with it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

MAX_POW_EXPONENT = 256
MAX_SEQ_REPEAT = 1_000_000  # items a repeat (``s * n``) may make
MAX_INT_BITS = 100_000  # bounds integers built by repeated **, * and << (e.g. ((9**256)**256)**256)
MAX_RESULT_ITEMS = 4 << 20  # characters of one ``replace`` or ``join`` result (a few times a large record)
MAX_FORMAT_WIDTH = 100_000  # a width or precision in a format spec
MAX_RANGE = 1 << 20  # items of a range
MAX_STEPS = 1 << 20  # steps of all comprehension loops in one evaluation
MAX_BYTES = 64 << 20  # approximate bytes of the elements comprehensions make in one evaluation
MAX_SECONDS = 1.0  # wall time of the comprehension loops of one evaluation
_SIZE_DEPTH = 3  # levels of nested containers whose items an element's size counts
_ITEM = 16  # approximate bytes of one element (a pointer and a small object)

_PERCENT = re.compile(rb"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.DOTALL)
_DIGITS = re.compile(r"\d+")


def _too_big(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise OverflowError(f"the result would have more than {MAX_INT_BITS} bits")


def safe_pow(a: Any, b: Any) -> Any:
    if isinstance(b, (int, float)) and abs(b) > MAX_POW_EXPONENT and isinstance(a, (int, float)) and abs(a) > 1:
        raise OverflowError(f"exponent {b} is larger than {MAX_POW_EXPONENT}")
    if isinstance(a, int) and isinstance(b, int) and b > 0:
        _too_big(a.bit_length() * b)
    return a**b


def safe_mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and n * max(len(seq), 1) > MAX_SEQ_REPEAT:
            raise OverflowError(f"repeat of {n} exceeds {MAX_SEQ_REPEAT} items")
    if isinstance(a, int) and isinstance(b, int):
        _too_big(a.bit_length() + b.bit_length())
    return a * b


def safe_lshift(a: Any, b: Any) -> Any:
    if isinstance(b, int) and b > 4096:
        raise OverflowError(f"shift by {b} is larger than 4096")
    if isinstance(a, int) and isinstance(b, int) and b > 0:
        _too_big(a.bit_length() + b)
    return a << b


def _width(value: Any) -> None:
    if isinstance(value, int) and abs(value) > MAX_FORMAT_WIDTH:
        raise OverflowError(f"format width or precision {value} is larger than {MAX_FORMAT_WIDTH}")


def safe_mod(a: Any, b: Any) -> Any:
    """``a % b``; for a string ``a`` (printf-style formatting) its widths and precisions are checked first,
    ``*`` ones taken from the arguments."""
    if isinstance(a, (str, bytes)):
        spec = a.encode("utf-8", "surrogatepass") if isinstance(a, str) else a
        args = b if isinstance(b, tuple) else (b,)
        used = 0
        for m in _PERCENT.finditer(spec):
            if m.group(3) == b"%":
                continue
            for part in (m.group(1), m.group(2)):
                if part == b"*":
                    _width(args[used] if used < len(args) else None)
                    used += 1
                elif part:
                    _width(int(part))
            used += 1
    return a % b


def safe_format(value: Any, conversion: int, spec: str) -> str:
    """What an f-string's ``{value!conversion:spec}`` gives, once every number in ``spec`` is checked."""
    if conversion == ord("s"):
        value = str(value)
    elif conversion == ord("r"):
        value = repr(value)
    elif conversion == ord("a"):
        value = ascii(value)
    if spec:
        for digits in _DIGITS.findall(spec):
            _width(int(digits) if len(digits) < 10 else MAX_FORMAT_WIDTH + 1)
    return format(value, spec)


def safe_replace(s: Any, old: Any, new: Any, count: int = -1, /) -> Any:
    """``s.replace(old, new[, count])`` once the size of the result is known to be bounded."""
    if isinstance(s, (str, bytes)) and isinstance(old, (str, bytes)) and isinstance(new, (str, bytes)):
        grow = len(new) - len(old)
        if grow > 0:
            n = s.count(old) if old else len(s) + 1  # type: ignore[arg-type]
            if count >= 0:
                n = min(n, count)
            if len(s) + n * grow > MAX_RESULT_ITEMS:
                raise OverflowError(f"replace would make {len(s) + n * grow} characters, more than {MAX_RESULT_ITEMS}")
    return s.replace(old, new, count)


def safe_join(sep: Any, iterable: Any, /) -> Any:
    """``sep.join(iterable)`` once the size of the result is known to be bounded (``[s] * n`` repeats
    one string ``n`` times, so the items' own sizes count too)."""
    items = iterable if type(iterable) is list or type(iterable) is tuple else list(iterable)
    try:
        total = sum(map(len, items)) + len(sep) * (len(items) - 1)
    except TypeError:
        return sep.join(items)  # not strings: join says what is wrong
    if total > MAX_RESULT_ITEMS:
        raise OverflowError(f"join would make {total} characters, more than {MAX_RESULT_ITEMS}")
    return sep.join(items)


def safe_range(*args: Any) -> range:
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise OverflowError(f"range of {len(r)} items is longer than {MAX_RANGE}")
    return r


def safe_sum(iterable: Iterable[Any], /, start: Any = 0) -> Any:
    """``sum`` of numbers: summing sequences (``sum(lists, [])``) copies quadratically."""
    if not isinstance(start, (int, float, complex)):
        raise TypeError("sum() adds numbers only; to concatenate use a comprehension or join")
    return sum(iterable, start)


def approx_bytes(value: Any, depth: int = _SIZE_DEPTH) -> int:
    """Approximate bytes of ``value`` and of what it holds, ``depth`` levels of containers down (deeper
    ones count by their length). Cheap, and the same measure wherever a bound counts bytes of values."""
    t = type(value)
    if t is str or t is bytes or t is bytearray:
        return _ITEM + len(value)
    if t is list or t is tuple or t is set or t is frozenset:
        if depth <= 0:
            return _ITEM * (1 + len(value))
        return _ITEM + sum(approx_bytes(v, depth - 1) for v in value)
    if t is dict:
        if depth <= 0:
            return _ITEM * (1 + 2 * len(value))
        return _ITEM + sum(approx_bytes(k, depth - 1) + approx_bytes(v, depth - 1) for k, v in value.items())
    return _ITEM


class Budget:
    """The comprehension budget of one evaluation of one expression (``start`` resets it).

    Expressions run on one thread at a time (the event loop, or a worker process's only
    thread), so one budget per compiled expression is enough.
    """

    __slots__ = ("bytes", "deadline", "steps")

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.steps = MAX_STEPS
        self.bytes = MAX_BYTES
        self.deadline = time.perf_counter() + MAX_SECONDS

    def _over(self) -> None:
        if self.steps < 0:
            raise OverflowError(f"comprehensions took more than {MAX_STEPS} steps in one evaluation")
        raise OverflowError(f"comprehensions ran longer than {MAX_SECONDS:g}s in one evaluation")

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """The iterable of a comprehension's ``for``: each step counts, and is checked against the deadline."""
        clock = time.perf_counter
        for item in iterable:
            self.steps -= 1
            if self.steps < 0 or clock() > self.deadline:
                self._over()
            yield item

    def made(self, value: Any) -> Any:
        """An element a comprehension made and something may keep (a list, a join): its size counts."""
        t = type(value)
        self.bytes -= _ITEM if t is bool or t is int or t is float or value is None else approx_bytes(value)
        if self.bytes < 0:
            raise OverflowError(f"comprehensions made more than {MAX_BYTES >> 20} MiB in one evaluation")
        return value
