"""Searching bytes for bytes faster than CPython's own search, where the needle's last byte is common."""

from __future__ import annotations

from collections.abc import Callable


def _memmem() -> Callable[[bytes, bytes], bool]:
    """``needle in haystack`` for bytes, by the C library's ``memmem`` when there is one: CPython's
    search tests the needle's last byte at each place, and a name's closing quote is everywhere in
    JSON (measured on Tremor's records: 397 against 89 ns a record for ``"seen"``; a run of 19
    "0"s in a job's digits mapped to "0": 316 against 76 us a 1.5 MiB job)."""
    try:
        import ctypes

        memmem = ctypes.CDLL(None).memmem
    except (OSError, AttributeError):  # no C library symbols to look up here
        return bytes.__contains__
    memmem.restype = ctypes.c_void_p
    memmem.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]

    def contains(haystack: bytes, needle: bytes) -> bool:
        return memmem(haystack, len(haystack), needle, len(needle)) is not None

    return contains


contains = _memmem()  # ``needle in haystack`` for two bytes objects
