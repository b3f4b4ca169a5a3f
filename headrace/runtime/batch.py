"""Batches: the unit that moves on every edge (never one asyncio hop per event).

A batch is columnar. ``payloads`` holds encoded records in ``codec`` (an entry is None
once that event was modified); ``values`` holds decoded values when some stage needed
them. ``acks`` (one ref per event, or None for sources without acks) carry delivery
tracking. ``origin`` names the onramp, whose ``err`` port receives decode failures.
"""

from __future__ import annotations

from collections.abc import Hashable
from itertools import chain
from operator import itemgetter
from typing import Any

from headrace.contract.acks import AckRef


class Batch:
    __slots__ = ("acks", "codec", "group", "ingest", "ingest_wire", "metas", "nbytes", "origin", "payloads", "unchecked", "values", "wire")

    def __init__(
        self,
        *,
        payloads: list[bytes | None] | None = None,
        values: list[Any] | None = None,
        metas: list[dict[str, Any]] | None = None,
        ingest: list[int],
        acks: list[AckRef] | None = None,
        codec: str | None = None,
        nbytes: int | None = None,
        origin: str = "",
        group: Hashable = None,
        unchecked: bool = False,
        wire: tuple[bytes, tuple[bytes, ...]] | None = None,
        ingest_wire: bytes | None = None,
    ) -> None:
        self.payloads = payloads
        self.values = values
        self.metas = metas
        self.ingest = ingest
        self.acks = acks
        self.codec = codec
        self.origin = origin
        self.group = group
        self.unchecked = unchecked  # straight from a source: no stage decoded (validated) the records yet
        # the payloads as a worker job carries them, when a source already had them so: (lengths
        # as array('I') bytes, blobs of the records joined); valid only for ``payloads`` as they are
        self.wire = wire
        self.ingest_wire = ingest_wire  # ``ingest`` as array('q') bytes, when made cheaply at the source
        if nbytes is None:
            nbytes = _size(payloads) if payloads is not None else 64 * len(ingest)
        self.nbytes = nbytes

    def __len__(self) -> int:
        return len(self.ingest)

    def meta(self, i: int) -> dict[str, Any]:
        return self.metas[i] if self.metas is not None else {}


def _size(payloads: list[bytes | None]) -> int:
    try:
        return sum(map(len, payloads))  # type: ignore[arg-type]
    except TypeError:  # some events were modified (None): estimate them
        return sum(len(p) if p is not None else 64 for p in payloads)


def joinable(a: Batch, b: Batch) -> bool:
    """Whether ``b`` can follow ``a`` in one batch (same columns, codec, origin and ack kind)."""
    return ((a.payloads is None) == (b.payloads is None) and (a.values is None) == (b.values is None) and a.codec == b.codec
            and a.origin == b.origin and (a.acks is None) == (b.acks is None) and a.unchecked == b.unchecked)  # fmt: skip


def take(column: list[Any], idx: list[int]) -> list[Any]:
    """``[column[i] for i in idx]`` without a Python step per element."""
    if len(idx) == 1:
        return [column[idx[0]]]
    return list(itemgetter(*idx)(column)) if idx else []


def _cat(columns: list[Any]) -> list[Any]:
    return list(chain.from_iterable(columns))  # C-level concatenation, no Python step per event


def join(parts: list[Batch]) -> Batch:
    """One batch holding the events of ``parts`` in order (see ``joinable``)."""
    first = parts[0]
    metas = None
    if any(p.metas is not None for p in parts):
        metas = _cat([p.metas if p.metas is not None else [{} for _ in range(len(p))] for p in parts])
    return Batch(
        payloads=_cat([p.payloads for p in parts]) if first.payloads is not None else None,
        values=_cat([p.values for p in parts]) if first.values is not None else None,
        metas=metas, ingest=_cat([p.ingest for p in parts]),
        acks=_cat([p.acks for p in parts]) if first.acks is not None else None,
        codec=first.codec, nbytes=sum(p.nbytes for p in parts), origin=first.origin, group=first.group,
        unchecked=first.unchecked, wire=join_wire(parts),
        ingest_wire=b"".join(p.ingest_wire for p in parts) if all(p.ingest_wire is not None for p in parts) else None,  # type: ignore[misc]
    )  # fmt: skip


def join_wire(parts: list[Batch]) -> tuple[bytes, tuple[bytes, ...]] | None:
    """The wire form of joined batches: the lengths joined (small), the blobs kept as they are
    (the socket write gathers them; no copy here)."""
    wires = [p.wire for p in parts]
    if any(w is None for w in wires):
        return None
    return b"".join(w[0] for w in wires), tuple(b for w in wires for b in w[1])  # type: ignore[index]


SHARE_PROBE = 64  # metas looked at before deciding whether sharing pays in this list
# value types whose equal values are interchangeable: 1, 1.0 and True stay apart (types differ), and
# float is left out (NaN, and 0.0 == -0.0), as are subclasses (an IntEnum equals its int)
_SHAREABLE = frozenset({str, int, bool, bytes, type(None)})
_KEYS = frozenset({str})


def share_equal(metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Equal metas as one object, so pickle sends each distinct meta once and the parent
    unpickles it once (a classifier gives thousands of events a handful of metas).

    Equal means interchangeable: the same ``str`` keys in the same order, each with a value
    of the same exact type and an equal value, among the types in ``_SHAREABLE``. Only flat
    metas take part: a nested dict or list would stay shared after ``unshare``, which copies
    one level. When the first metas are mostly distinct (per-event offsets), the list is
    returned as it is. Whoever mutates metas calls ``unshare`` first.
    """
    seen: dict[tuple[Any, ...], list[Any]] = {}  # items -> [first meta with them, its value types or None]
    out: list[dict[str, Any]] = []
    hits = 0
    keys = _KEYS
    for k, m in enumerate(metas):
        if k == SHARE_PROBE and hits < SHARE_PROBE // 2:  # mostly distinct so far (per-event offsets): not worth it
            return metas
        try:
            entry = seen.get(items := tuple(m.items()))
        except TypeError:  # an unhashable value (nested): not shared
            out.append(m)
            continue
        if entry is None:
            seen[items] = [m, _UNCHECKED]
            out.append(m)
            continue
        first, types = entry
        if types is _UNCHECKED:  # checked at its first repeat only: the distinct ones cost no more
            types = entry[1] = _value_types(first)
        if types is not None and types == tuple(map(type, m.values())) and keys.issuperset(map(type, m)):
            hits += 1
            out.append(first)
        else:
            out.append(m)
    return out


_UNCHECKED = object()


def _value_types(meta: dict[str, Any]) -> tuple[type, ...] | None:
    """The types of the values of ``meta`` when it can stand for its equals, else None."""
    types = tuple(map(type, meta.values()))
    return types if _SHAREABLE.issuperset(types) and _KEYS.issuperset(map(type, meta)) else None


def unshare(metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event its own meta dict (copies of the repeats ``share_equal`` made), before stages
    that may write to them; the list itself when nothing is shared."""
    if len(set(map(id, metas))) == len(metas):
        return metas
    seen: set[int] = set()
    out = []
    for m in metas:
        if id(m) in seen:
            m = dict(m)
        else:
            seen.add(id(m))
        out.append(m)
    return out
