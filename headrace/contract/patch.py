"""The event an *appender* stage gets on workers: a read-only view of the record plus the
top-level fields the stage set, kept aside (see ``headrace.plugins.operators.readproof``).

Only the operations the proof lets such a stage use exist: ``event[k]``, ``event.get(k[, d])``,
``k in event``, ``len(event)``, truth, iteration (keys, in a dict's order: the record's, then
the new ones) and ``event["const"] = value``. Each behaves as on the dict the record would
decode to, with the fields set so far applied.

Where the record leaves, ``splice`` writes it as its original bytes with the new fields added
before the closing brace, encoded alone; None when that would not be what encoding the whole
dict gives after parsing (a field the record has already: a dict keeps its place, and JSON
readers differ on repeated names) or when the codec cannot write a value alone: the worker then
decodes the record whole, applies the fields (``materialize``) and encodes it as for any writer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from headrace.contract.bytesearch import contains


class Patch:
    __slots__ = ("adds", "view")

    def __init__(self, view: Any) -> None:
        self.view = view
        self.adds: dict[str, Any] = {}

    def __getitem__(self, key: Any) -> Any:
        adds = self.adds
        if adds and key in adds:
            return adds[key]
        if type(key) is not str:  # a record's names are text: a dict has no other key (the view takes bytes, refuses ints)
            hash(key)
            raise KeyError(key)
        try:
            return self.view[key]
        except KeyError:
            raise KeyError(key) from None  # a dict's message (the view's names its parser's error)

    def get(self, key: Any, default: Any = None) -> Any:
        adds = self.adds
        if adds and key in adds:
            return adds[key]
        if type(key) is not str:
            hash(key)
            return default
        return self.view.get(key, default)

    def __contains__(self, key: Any) -> bool:
        if key in self.adds:
            return True
        return type(key) is str and key in self.view

    def __len__(self) -> int:
        view = self.view
        return len(view) + sum(1 for k in self.adds if k not in view)

    def __bool__(self) -> bool:
        return bool(self.adds) or len(self.view) > 0

    def __iter__(self) -> Iterator[Any]:
        view = self.view
        yield from view
        for k in self.adds:
            if k not in view:
                yield k

    def __setitem__(self, key: str, value: Any) -> None:
        self.adds[key] = value

    def __repr__(self) -> str:
        return f"Patch({self.view!r}, adds={self.adds!r})"


_WS = frozenset(b" \t\r\n")
OPEN_OR_WS = frozenset(b" \t\r\n{")
_CACHED = (bool, int, str, type(None))  # values whose encoding is remembered per (name, value)
_FIELDS: dict[tuple[str, type, Any], bytes] = {}


class PlainPatch(Patch):
    """A Patch whose reads hand out plain copies (dicts, lists) instead of views: for a stage
    proven only in the proof's relaxed mode, which passes what it reads to pure code (``str``,
    ``.lower()``, arithmetic, f-strings) that must see what a dict would give."""

    __slots__ = ("plain",)

    def __init__(self, view: Any, plain: Callable[[Any], Any]) -> None:
        super().__init__(view)
        self.plain = plain

    # ``plain`` leaves what is not a view as it is: the fields set and a default come back unchanged
    def __getitem__(self, key: Any) -> Any:
        return self.plain(Patch.__getitem__(self, key))

    def get(self, key: Any, default: Any = None) -> Any:
        return self.plain(Patch.get(self, key, default))


_ESCAPED_NAME = re.compile(rb'\\.[^"\\]*"[ \t\r\n]*:', re.S)


def names_may_be_escaped(blob: bytes) -> bool:
    """Whether a name (an object's key) in ``blob`` may be spelled with a backslash escape, which a
    byte search for the name would miss. A backslash in a value (an escaped quote, ``\\n``) is not
    enough: the search tries each backslash as the last escape of a string, the rest of which
    then holds no backslash, and wants ``":`` at its end. Every escaped name has such a last
    escape; a value's last escape is followed by its closing quote and then ``,`` ``}`` or ``]``.
    Each try ends at the next backslash or quote: one pass over the blob (0.27 us a record of
    bench 1b's with two escaped quotes each, against 0.75 us for listing each record's names)."""
    return b"\\" in blob and _ESCAPED_NAME.search(blob) is not None


class JobNames:
    """Which names occur anywhere in one job's records (the blob of them joined), each searched
    once per job: a name absent from the whole job is absent from each of its records, so the
    common record (its names never include the new fields) costs no search of its own."""

    __slots__ = ("blob", "escapes", "present")

    def __init__(self, blob: bytes | memoryview, escapes: bool) -> None:
        self.blob = blob
        self.escapes = escapes  # a backslash in the job: names may be spelled with escapes
        self.present: dict[str, bool] = {}

    def has(self, key: str) -> bool:
        hit = self.present.get(key)
        if hit is None:
            blob = self.blob
            hit = self.present[key] = self.escapes or (contains(blob, needle(key)) if type(blob) is bytes else needle(key) in blob)
        return hit




def splice(raw: bytes, patch: Patch, plain: Callable[[Any], Any], encode: Callable[[Any], bytes | None], escapes: bool = True,
           job: JobNames | None = None) -> bytes | None:  # fmt: skip
    """``raw`` with ``patch``'s fields added before its closing brace (``encode`` writes one field as
    an object; ``plain`` turns views into values), or None when that cannot stand for the whole
    record encoded (see the module doc). ``escapes=False``: the caller knows ``raw`` has no backslash.
    ``job``: the names of the job ``raw`` is part of (then ``escapes`` is the job's)."""
    cut = splice_at(raw, patch, plain, encode, escapes, job)
    if cut is None:
        return None
    at, tail = cut
    return raw[:at] + tail


def splice_at(raw: bytes, patch: Patch, plain: Callable[[Any], Any], encode: Callable[[Any], bytes | None], escapes: bool = True,
              job: JobNames | None = None) -> tuple[int, bytes] | None:  # fmt: skip
    """``splice`` as (where the record's bytes are cut, what follows them): the record spliced is
    ``raw[:at] + tail``."""
    adds = patch.adds
    if len(adds) == 1 and job is not None and not job.escapes and len(raw) > 1 and raw[-1] == 0x7D and raw[-2] not in OPEN_OR_WS:
        # the common case, in the fewest steps: one field, a record ending in ...x} (no blank, not {})
        for key, value in adds.items():
            hit = job.present.get(key)
            if hit is None:
                hit = job.has(key)
            if hit and needle(key) in raw and key in set(patch.view.keys()):
                return None
            cls = value.__class__
            inner = _FIELDS.get((key, cls, value)) if cls in _CACHED else None
            if inner is None:
                inner = _field(key, value, plain, encode)
                if inner is None:
                    return None
            return len(raw) - 1, b"," + inner + b"}"
    if not adds:
        return len(raw), b""
    names = None
    for key in adds:
        # a record without a backslash spells every name it has as its UTF-8 between quotes: a
        # name not found so is not there (a lookup in the view that misses costs more than a
        # parse; its list of names, a third of that)
        if job is not None and not job.has(key):
            continue
        if (escapes and b"\\" in raw) or needle(key) in raw:
            if names is None:
                names = set(patch.view.keys())  # a generator: taken once
            if key in names:
                return None
    if len(adds) == 1:
        [(key, value)] = adds.items()
        inner = _field(key, value, plain, encode)
        if inner is None:
            return None
    else:
        fields = []
        for key, value in adds.items():
            field = _field(key, value, plain, encode)
            if field is None:
                return None
            fields.append(field)
        inner = b",".join(fields)
    end = len(raw) - 1
    if end > 1 and raw[end] == 0x7D and raw[end - 1] not in _WS and raw[end - 1] != 0x7B:  # ...x}: the common record
        return end, b"," + inner + b"}"
    while end > 0 and raw[end] in _WS:
        end -= 1
    if end <= 0 or raw[end] != 0x7D:  # "}"
        return None
    j = end - 1
    while j > 0 and raw[j] in _WS:
        j -= 1
    return j + 1, (b"" if raw[j] == 0x7B else b",") + inner + b"}"  # "{": the record is {}


def _field(key: str, value: Any, plain: Callable[[Any], Any], encode: Callable[[Any], bytes | None]) -> bytes | None:
    """One field as it is written inside an object (``"key":value``), or None when ``encode``
    cannot write it alone."""
    cls = value.__class__
    cached = cls in _CACHED
    if cached:
        field = _FIELDS.get((key, cls, value))
        if field is not None:
            return field
    try:
        data = encode({key: plain(value)})
    except Exception:  # the whole record's encoding decides what happens to it
        return None
    if data is None:
        return None
    data = data.strip()
    if data[:1] != b"{" or data[-1:] != b"}":
        return None
    field = data[1:-1].strip()
    if cached and len(_FIELDS) < 4096 and (cls is not str or len(value) <= 64):
        _FIELDS[(key, cls, value)] = field
    return field


_NEEDLES: dict[str, bytes] = {}


def needle(key: str) -> bytes:
    """``key`` as a record without backslashes spells it: its UTF-8 between quotes."""
    found = _NEEDLES.get(key)
    if found is not None:
        return found
    found = b'"' + key.encode("utf-8", "surrogatepass") + b'"'
    if len(_NEEDLES) < 4096:
        _NEEDLES[key] = found
    return found


def materialize(decoded: dict[str, Any], patch: Patch, plain: Callable[[Any], Any]) -> dict[str, Any]:
    """The record decoded whole, with ``patch``'s fields set on it in order (a dict keeps the place
    of a field it had)."""
    for k, v in patch.adds.items():
        decoded[k] = plain(v)
    return decoded
