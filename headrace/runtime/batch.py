"""Batches: the unit that moves on every edge (never one asyncio hop per event).

A batch is columnar. ``payloads`` holds encoded records in ``codec`` (an entry is None
once that event was modified); ``values`` holds decoded values when some stage needed
them. ``acks`` (one ref per event, or None for sources without acks) carry delivery
tracking. ``origin`` names the onramp, whose ``err`` port receives decode failures.
``metas`` is a list of dicts, or ``MetaColumns`` (a source's metas as columns: no dict per
event is built until something reads one); every verb here keeps columns as columns.

The runtime makes batches only through this module's verbs: ``Batch.source`` (what an
onramp read), ``select`` and ``slice`` (some of the events), ``join`` (several batches as
one), ``fanout_copy`` (for a second node that may modify), ``failed`` (events to an ``err``
port, with the reason in their meta), ``Batch.rejected`` (chunks that never became records),
``Batch.of_events`` (what stages emitted) and ``remade`` (events with new encodings, from a
worker). Verbs whose batch will be sent on take one delivery share per event (``share=True``,
or always for ``failed`` and ``of_events``): the sender's own share is released by whoever
held it, through ``headrace.contract.acks``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Hashable
from itertools import chain
from typing import Any

from headrace.contract.acks import AckRef, add_each
from headrace.contract.metas import MetaColumns, Metas, join_metas, take, take_metas
from headrace.contract.stage import Ev

_I64 = struct.Struct("q")  # one ingest time as a worker job carries it (native, like array('q'))
_I64_BYTES = _I64.size


class Batch:
    __slots__ = ("acks", "codec", "group", "ingest", "ingest_wire", "metas", "nbytes", "origin", "payloads", "unchecked", "values", "wire")

    def __init__(
        self,
        *,
        payloads: list[bytes | None] | None = None,
        values: list[Any] | None = None,
        metas: Metas | None = None,
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

    # -- verbs ---------------------------------------------------------------------------------
    @classmethod
    def source(cls, payloads: list[bytes], *, codec: str, origin: str, group: Hashable, ack: AckRef | None = None,
               metas: Metas | None = None, nbytes: int | None = None, wire: tuple[bytes, tuple[bytes, ...]] | None = None,
               ingest_ns: int | None = None) -> Batch:  # fmt: skip
        """What an onramp read: records not decoded (validated) yet, all of one ingest time, one ack ref."""
        n = len(payloads)
        now = time.time_ns() if ingest_ns is None else ingest_ns
        return cls(payloads=payloads, metas=metas, ingest=[now] * n, ingest_wire=_I64.pack(now) * n,  # type: ignore[arg-type]
                   acks=[ack] * n if ack is not None else None, codec=codec, nbytes=nbytes, origin=origin, group=group,
                   unchecked=True, wire=wire)  # fmt: skip

    @classmethod
    def decoded(cls, values: list[Any], metas: Metas | None, *, codec: str, origin: str, group: Hashable,
                ack: AckRef | None = None) -> Batch:  # fmt: skip
        """Events given as values (a test's injections), all of one ingest time, one ack ref."""
        n = len(values)
        return cls(values=values, metas=metas, ingest=[time.time_ns()] * n, acks=[ack] * n if ack is not None else None, codec=codec,
                   origin=origin, group=group)  # fmt: skip

    @classmethod
    def empty(cls, origin: str, group: Hashable) -> Batch:
        """No events: the parent of what a stage makes by itself (a tick, a flush)."""
        return cls(ingest=[], origin=origin, group=group)

    @classmethod
    def rejected(cls, chunks: list[tuple[bytes, str]], stage: str, kind: str, meta: dict[str, Any] | None, *, origin: str,
                 group: Hashable) -> Batch:  # fmt: skip
        """Input that never became records (framing refused it), for an ``err`` port: each chunk
        (a sample) as text, with the reason in its meta. No ack: the source reads on."""
        metas = []
        for _, reason in chunks:
            m = dict(meta or {})
            m["error"] = {"stage": stage, "type": kind, "message": reason}
            metas.append(m)
        now = time.time_ns()
        payloads: list[bytes | None] = [c for c, _ in chunks]
        return cls(payloads=payloads, values=[c.decode("utf-8", "backslashreplace") for c, _ in chunks], metas=metas,
                   ingest=[now] * len(chunks), codec="binary", origin=origin, group=group)  # fmt: skip

    @classmethod
    def of_events(cls, evs: list[Ev], parent: Batch, refs: list[AckRef] | None, decoded: bool = True) -> Batch:
        """What stages emitted on one port; original bytes are kept for events no stage modified.
        ``decoded`` is False when the stages only read meta (the events are still just bytes).
        An event's own ``ack`` wins over ``refs[ev.src]`` (an event made from held events carries
        a ``MergedAck``). Takes a share of each ack."""
        acks = [ev.ack if ev.ack is not None else refs[ev.src] for ev in evs] if refs is not None else None
        add_each(acks, 1)
        return cls(payloads=[ev.raw for ev in evs], values=[ev.value for ev in evs] if decoded else None, metas=[ev.meta for ev in evs],
                   ingest=[ev.ingest for ev in evs], acks=acks, codec=parent.codec, origin=parent.origin, group=parent.group)  # fmt: skip

    def select(self, idx: list[int], share: bool = False) -> Batch:
        """The events at ``idx`` (in that order), every column kept; ``share``: take a share of their acks."""
        if len(idx) == len(self) and idx == list(range(len(self))):
            part = self
        else:
            part = Batch(
                payloads=take(self.payloads, idx) if self.payloads is not None else None,
                values=take(self.values, idx) if self.values is not None else None,
                metas=take_metas(self.metas, idx) if self.metas is not None else None,
                ingest=take(self.ingest, idx), acks=take(self.acks, idx) if self.acks is not None else None,
                codec=self.codec, origin=self.origin, group=self.group, unchecked=self.unchecked,
            )  # fmt: skip
        if share:
            add_each(part.acks, 1)
        return part

    def slice(self, start: int, stop: int) -> Batch:
        """Events ``start:stop``, with their wire form when they have one (a worker job's chunk)."""
        return Batch(
            payloads=self.payloads[start:stop] if self.payloads is not None else None,
            values=self.values[start:stop] if self.values is not None else None,
            metas=self.metas[start:stop] if self.metas is not None else None,
            ingest=self.ingest[start:stop], acks=self.acks[start:stop] if self.acks is not None else None,
            ingest_wire=self.ingest_wire[start * _I64_BYTES : stop * _I64_BYTES] if self.ingest_wire is not None else None,
            codec=self.codec, origin=self.origin, group=self.group, unchecked=self.unchecked,
        )  # fmt: skip

    def fanout_copy(self) -> Batch:
        """The same events for a second node, which may modify decoded values and metas: its own copies."""
        import copy

        return Batch(
            payloads=self.payloads, values=copy.deepcopy(self.values) if self.values is not None else None,
            metas=_own_metas(self.metas), ingest=self.ingest,
            acks=self.acks, codec=self.codec, nbytes=self.nbytes, origin=self.origin, group=self.group, unchecked=self.unchecked,
        )  # fmt: skip

    def failed(self, reasons: list[tuple[int, str]], stage: str, kind: str, *, as_text: bool = False, sample: int | None = None,
               payloads: list[bytes] | None = None, codec: str | None = None, extra: dict[str, Any] | None = None) -> Batch:  # fmt: skip
        """The events at the indices of ``reasons`` for an ``err`` port, each with
        ``meta.error = {stage, type: kind, message: reason}``; takes a share of their acks.

        ``as_text``: records that are not valid in their codec travel as their text, or as their
        exact bytes when they are not UTF-8 (JSON writes those as ``{"base64": ...}``), ``sample``
        bytes of them at most. ``payloads``/``codec``: their encodings in another codec
        (what an offramp made), replacing theirs. ``extra``: more keys of ``meta.error``."""
        idx = [i for i, _ in reasons]
        metas = []
        for i, reason in reasons:
            m = dict(self.meta(i))
            m["error"] = {"stage": stage, "type": kind, "message": reason, **(extra or {})}
            metas.append(m)
        acks = take(self.acks, idx) if self.acks is not None else None
        add_each(acks, 1)
        ingest = take(self.ingest, idx)
        if payloads is not None:
            return Batch(payloads=payloads, metas=metas, ingest=ingest, acks=acks, codec=codec, origin=self.origin, group=self.group)  # type: ignore[arg-type]
        if as_text:
            raws = [(self.payloads[i] or b"") if self.payloads is not None else b"" for i in idx]
            if sample is not None:
                raws = [r[:sample] for r in raws]
            return Batch(payloads=raws, values=[_text_or_bytes(r) for r in raws], metas=metas, ingest=ingest,  # type: ignore[arg-type]
                         acks=acks, codec="binary", origin=self.origin, group=self.group)  # fmt: skip
        return Batch(payloads=take(self.payloads, idx) if self.payloads is not None else None,
                     values=take(self.values, idx) if self.values is not None else None, metas=metas, ingest=ingest, acks=acks,
                     codec=self.codec, origin=self.origin, group=self.group)  # fmt: skip

    def remade(self, src: list[int] | None, payloads: list[bytes | None] | list[bytes], metas: Metas | None, codec: str,
               nbytes: int | None = None, share: bool = True, values: list[Any] | None = None) -> Batch:  # fmt: skip
        """Events of this batch (``src``: their indices, repeats allowed; None: all, in order) with new
        encodings and metas (a worker's answer, an offramp's records); ``share``: take a share of each ack.
        ``values``: the events as values (a worker's answer its codec could not hold; payloads all None)."""
        if src is None:
            acks = self.acks
            if share:
                add_each(acks, 1)
            same = payloads is self.payloads
            return Batch(payloads=payloads, metas=metas, ingest=self.ingest, acks=acks, codec=codec, nbytes=nbytes, origin=self.origin,  # type: ignore[arg-type]
                         group=self.group, wire=self.wire if same else None, ingest_wire=self.ingest_wire if same else None)  # fmt: skip
        acks = take(self.acks, src) if self.acks is not None else None
        if share:
            add_each(acks, 1)
        return Batch(payloads=payloads, values=values, metas=metas, ingest=take(self.ingest, src), acks=acks, codec=codec, nbytes=nbytes,  # type: ignore[arg-type]
                     origin=self.origin, group=self.group)  # fmt: skip


def _own_metas(metas: Metas | None) -> Metas | None:
    """Metas a second node may change without the first seeing it (columns build new dicts anyway)."""
    if metas is None or isinstance(metas, MetaColumns):
        return metas
    return [dict(m) for m in metas]


def _text_or_bytes(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _size(payloads: list[bytes | None]) -> int:
    try:
        return sum(map(len, payloads))  # type: ignore[arg-type]
    except TypeError:  # some events were modified (None): estimate them
        return sum(len(p) if p is not None else 64 for p in payloads)


def joinable(a: Batch, b: Batch) -> bool:
    """Whether ``b`` can follow ``a`` in one batch (same columns, codec, origin and ack kind)."""
    return ((a.payloads is None) == (b.payloads is None) and (a.values is None) == (b.values is None) and a.codec == b.codec
            and a.origin == b.origin and (a.acks is None) == (b.acks is None) and a.unchecked == b.unchecked)  # fmt: skip


def _cat(columns: list[Any]) -> list[Any]:
    return list(chain.from_iterable(columns))  # C-level concatenation, no Python step per event


def join(parts: list[Batch]) -> Batch:
    """One batch holding the events of ``parts`` in order (see ``joinable``)."""
    first = parts[0]
    metas = join_metas([p.metas for p in parts], [len(p) for p in parts])
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


def unshare(metas: Metas) -> list[dict[str, Any]]:
    """Each event its own meta dict (copies of the repeats ``share_equal`` made, or the dicts of
    columns), before stages that may write to them; the list itself when nothing is shared."""
    if isinstance(metas, MetaColumns):
        return metas.materialize()
    assert isinstance(metas, list)
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
