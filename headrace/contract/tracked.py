"""Events that notice their own modification: a stage needs no ``readonly`` hint for speed.

A decoded record reaches a ``def`` stage as a ``TrackedDict`` (or ``TrackedList`` for a
record that is an array): a real ``dict`` subclass holding the decoded values, whose
mutating methods set the process's write flag (``DIRTY``). A nested dict or list is wrapped
the first time a stage reaches it (``event["a"]``, ``.get``, ``.items()``, iteration,
``dict(event)``, ``copy.copy``...), so ``event["a"]["b"].append(x)`` sets it too. A record
returned with the flag still clear leaves as its original bytes: no encode, and the parent
forwards those bytes. A written one is encoded as before. While the flag is set, reads hand
out nested containers unwrapped (the record is encoded anyway).

Reading costs a Python call per ``[]``/``get`` at each wrapped level (about 0.1 us); writing
one field costs the same plus the encode a plain dict would have paid. Nothing is decoded
lazily: the codec's parser builds the whole value, so ``orjson.dumps(event)`` and every other
reader of the dict's storage see all of it.

What differs from a plain dict (the python stage's page lists it): ``type(event) is dict`` is
false (``isinstance`` is true); ``copy.copy``, ``copy.deepcopy``, ``.copy()`` and ``pickle``
give plain dicts and lists; changing the storage around the methods (``dict.__setitem__(event,
k, v)``, a C extension writing with ``PyDict_SetItem``) is not noticed. A stage that does that
sets ``track_writes: false`` and gets plain dicts, always encoded again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, SupportsIndex

_MISSING = object()
READONLY_WROTE = "the stage is declared readonly but wrote to its event"


class ReadonlyViolation(Exception):
    """A ``readonly`` stage wrote to its event: the record goes to err with this."""


def track(value: Any) -> Any:
    """``value`` (a freshly decoded record) as a tracked root; other values as they are."""
    t = type(value)
    if t is dict:
        return TrackedDict(value)
    if t is list:
        return TrackedList(value)
    return value


DIRTY = [False]
"""Set by every write to any tracked container. The runtime clears it before a stage is called
with one record and reads it after: one flag for the process, not one per record, so a root
costs nothing beyond its shallow copy. A write to another record's container (one a stateful
stage kept) also sets it: that record is then encoded again, which is never wrong. Stages that
run several records at once (``async def``) are not tracked."""


def clean() -> None:
    """Before a stage is called with one record."""
    DIRTY[0] = False


def written() -> bool:
    """After it returned: whether any tracked container was written since ``clean()``."""
    return DIRTY[0]


class Adaptive:
    """Whether the next batch of a stage (or fused chain) is tracked: not while nearly every record
    it returns is written anyway (a tracked value then only adds its copy and the checks, about
    0.4 us a record, for nothing); a batch is tracked again every ``PROBE`` batches, so a stage
    that stops writing gets its bytes kept again. Never for ``readonly`` stages: there the
    tracking is the assertion."""

    PROBE = 32
    __slots__ = ("skip",)

    def __init__(self) -> None:
        self.skip = 0

    def track_next(self) -> bool:
        if self.skip:
            self.skip -= 1
            return False
        return True

    def saw(self, records: int, unchanged: int) -> None:
        """A tracked batch of ``records`` gave ``unchanged`` records back unwritten."""
        if records >= 16 and unchanged * 20 < records:  # under 5 % unwritten
            self.skip = self.PROBE


def _wrap(value: Any) -> Any:
    """A nested plain container as a tracked one (a shallow copy in C; its own children are
    wrapped when reached)."""
    return TrackedDict(value) if type(value) is dict else TrackedList(value)


class TrackedDict(dict):  # type: ignore[type-arg]
    """A dict whose writes mark its record's root dirty (see the module doc)."""

    __slots__ = ()

    # -- reads that may hand out a nested container --------------------------------------

    def __getitem__(self, key: Any) -> Any:
        v = dict.__getitem__(self, key)
        t = type(v)
        if (t is dict or t is list) and not DIRTY[0]:
            v = _wrap(v)
            dict.__setitem__(self, key, v)
        return v

    def get(self, key: Any, default: Any = None) -> Any:
        v = dict.get(self, key, _MISSING)
        if v is _MISSING:
            return default
        t = type(v)
        if (t is dict or t is list) and not DIRTY[0]:
            v = _wrap(v)
            dict.__setitem__(self, key, v)
        return v

    def _adopt_all(self) -> None:
        if not DIRTY[0]:
            for k, v in dict.items(self):  # replacing values keeps the size: the iteration stays valid
                t = type(v)
                if t is dict or t is list:
                    dict.__setitem__(self, k, _wrap(v))

    def keys(self) -> Any:
        self._adopt_all()  # dict(event), {**event} and update(event) read keys() then [] (see __iter__)
        return dict.keys(self)

    def values(self) -> Any:
        self._adopt_all()
        return dict.values(self)

    def items(self) -> Any:
        self._adopt_all()
        return dict.items(self)

    def __iter__(self) -> Any:
        # defined so that CPython's dict merge (dict(x), {**x}, d.update(x)) takes its generic
        # path through keys() and [] instead of copying the storage with plain nested values
        return dict.__iter__(self)

    def __reversed__(self) -> Any:
        return dict.__reversed__(self)

    def copy(self) -> dict[Any, Any]:
        self._adopt_all()
        return dict(dict.items(self))

    __copy__ = copy

    def __or__(self, other: Any) -> Any:
        if not isinstance(other, dict):
            return NotImplemented
        self._adopt_all()
        out = dict(dict.items(self))
        out.update(other)
        return out

    def __ror__(self, other: Any) -> Any:
        if not isinstance(other, dict):
            return NotImplemented
        self._adopt_all()
        out = dict(other)
        out.update(dict.items(self))
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        memo[id(self)] = out
        for k, v in dict.items(self):
            out[copy.deepcopy(k, memo)] = copy.deepcopy(v, memo)
        return out

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return dict, (dict(dict.items(self)),)  # nested tracked values reduce themselves the same way

    @classmethod
    def fromkeys(cls, keys: Iterable[Any], value: Any = None) -> dict[Any, Any]:
        return dict.fromkeys(keys, value)

    # -- writes ----------------------------------------------------------------------------

    def __setitem__(self, key: Any, value: Any) -> None:
        DIRTY[0] = True
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        DIRTY[0] = True

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if dict.__contains__(self, key):
            return self[key]
        DIRTY[0] = True
        dict.__setitem__(self, key, default)
        return default

    def pop(self, key: Any, *default: Any) -> Any:
        if dict.__contains__(self, key):
            DIRTY[0] = True
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[Any, Any]:
        item = dict.popitem(self)
        DIRTY[0] = True
        return item

    def clear(self) -> None:
        if dict.__len__(self):
            DIRTY[0] = True
        dict.clear(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        DIRTY[0] = True
        dict.update(self, *args, **kwargs)

    def __ior__(self, other: Any) -> Any:
        DIRTY[0] = True
        dict.update(self, other)
        return self


class TrackedList(list):  # type: ignore[type-arg]
    """A list whose writes mark its record's root dirty (see the module doc)."""

    __slots__ = ()

    # -- reads -----------------------------------------------------------------------------

    def __getitem__(self, index: Any) -> Any:
        if type(index) is slice:
            self._adopt_all()
            return list.__getitem__(self, index)
        v = list.__getitem__(self, index)
        t = type(v)
        if (t is dict or t is list) and not DIRTY[0]:
            v = _wrap(v)
            list.__setitem__(self, index, v)
        return v

    def _adopt_all(self) -> None:
        if not DIRTY[0]:
            for i, v in enumerate(list.__iter__(self)):
                t = type(v)
                if t is dict or t is list:
                    list.__setitem__(self, i, _wrap(v))

    def __iter__(self) -> Any:
        self._adopt_all()
        return list.__iter__(self)

    def __reversed__(self) -> Any:
        self._adopt_all()
        return list.__reversed__(self)

    def copy(self) -> list[Any]:
        self._adopt_all()
        return list(list.__iter__(self))

    __copy__ = copy

    def __add__(self, other: Any) -> Any:
        if not isinstance(other, list):
            return NotImplemented
        self._adopt_all()
        return [*list.__iter__(self), *other]

    def __radd__(self, other: Any) -> Any:
        if not isinstance(other, list):
            return NotImplemented
        self._adopt_all()
        return [*other, *list.__iter__(self)]

    def __mul__(self, n: SupportsIndex) -> Any:
        self._adopt_all()
        return list(list.__iter__(self)) * n

    __rmul__ = __mul__

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        out: list[Any] = []
        memo[id(self)] = out
        out.extend(copy.deepcopy(v, memo) for v in list.__iter__(self))
        return out

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return list, (list(list.__iter__(self)),)

    # -- writes ----------------------------------------------------------------------------

    def __setitem__(self, index: Any, value: Any) -> None:
        DIRTY[0] = True
        list.__setitem__(self, index, value)

    def __delitem__(self, index: Any) -> None:
        list.__delitem__(self, index)
        DIRTY[0] = True

    def append(self, value: Any) -> None:
        DIRTY[0] = True
        list.append(self, value)

    def extend(self, values: Iterable[Any]) -> None:
        DIRTY[0] = True
        list.extend(self, values)

    def insert(self, index: SupportsIndex, value: Any) -> None:
        DIRTY[0] = True
        list.insert(self, index, value)

    def pop(self, index: SupportsIndex = -1) -> Any:
        v = list.pop(self, index)
        DIRTY[0] = True
        return v

    def remove(self, value: Any) -> None:
        list.remove(self, value)
        DIRTY[0] = True

    def clear(self) -> None:
        if list.__len__(self):
            DIRTY[0] = True
        list.clear(self)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        DIRTY[0] = True
        list.sort(self, *args, **kwargs)

    def reverse(self) -> None:
        DIRTY[0] = True
        list.reverse(self)

    def __iadd__(self, other: Any) -> Any:
        DIRTY[0] = True
        list.extend(self, other)
        return self

    def __imul__(self, n: SupportsIndex) -> Any:
        DIRTY[0] = True
        return list.__imul__(self, n)


# error messages name the type a plain value would have ("'list' object has no attribute 'get'"),
# so that a record that fails says the same as without tracking; type() still shows this module
TrackedDict.__name__ = TrackedDict.__qualname__ = "dict"
TrackedList.__name__ = TrackedList.__qualname__ = "list"
