"""``MetaColumns``: the metas of a batch of records as columns, each record's dict built only on demand.

A source that reads many records sharing most of their metadata (a Kafka batch: one topic
and partition, consecutive offsets, a key, a timestamp and headers per record) hands them to
the graph as columns instead of one dict per record::

    MetaColumns(len(msgs), [
        ("kafka_topic", CONST, tp.topic),            # one value for every record
        ("kafka_offset", COLUMN, range(first, last + 1)),
        ("kafka_key", COLUMN, keys),                  # a list, one value per record
        ("kafka_headers", COLUMN, raw, header_dict),  # converted when a record's dict is built
    ])

It is a ``Sequence`` of dicts: ``metas[i]`` builds record ``i``'s dict (a new one each time,
with the keys in the order given; a stage may change it freely), ``iter``, ``len`` and ``==``
with a list of dicts behave as on that list. The runtime moves it without building any
dict: ``take`` (some records), slicing, ``join`` (batches of the same layout), ``column``
(one key's values, e.g. the Kafka offramp's default key). Values of ``CONST`` and plain
``COLUMN`` fields are shared by the dicts built from them: give immutable ones (str, int,
bytes, None), or a converter that makes a fresh object (``header_dict``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain, pairwise, repeat
from operator import itemgetter
from typing import Any

CONST = 0  # one value for every record
COLUMN = 1  # a sequence (list, range, tuple) of one value per record

Metas = Sequence[dict[str, Any]]  # what a batch's metas are: a list of dicts or ``MetaColumns``
Field = tuple[Any, ...]  # (name, CONST, value) | (name, COLUMN, values) | (name, COLUMN, values, convert)


def header_dict(raw: Any) -> dict[Any, Any]:
    """Kafka headers as a client hands them ((name, value) pairs) as the dict a meta holds."""
    return dict(raw) if raw else {}


class MetaColumns(Sequence[dict[str, Any]]):
    __slots__ = ("_fields", "_n")
    __hash__ = None  # type: ignore[assignment]  # compared like a list

    def __init__(self, n: int, fields: Sequence[Field]) -> None:
        fields = tuple(tuple(f) for f in fields)
        for f in fields:
            if f[1] == COLUMN and len(f[2]) != n:
                raise ValueError(f"meta column {f[0]!r} has {len(f[2])} values for {n} records")
            if f[1] not in (CONST, COLUMN) or len(f) not in (3, 4) or (len(f) == 4 and f[1] != COLUMN):
                raise ValueError(f"not a meta field: {f!r}")
        self._n = n
        self._fields = fields

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(self._n)
            if step != 1:
                return self.take(list(range(start, stop, step)))
            return MetaColumns(max(0, stop - start), [_part(f, slice(start, stop)) for f in self._fields])
        n = self._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("meta index out of range")
        out: dict[str, Any] = {}
        for f in self._fields:
            if f[1] == CONST:
                out[f[0]] = f[2]
            elif len(f) == 4:
                out[f[0]] = f[3](f[2][i])
            else:
                out[f[0]] = f[2][i]
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = [f[0] for f in self._fields]
        cols = [repeat(f[2], self._n) if f[1] == CONST else (map(f[3], f[2]) if len(f) == 4 else f[2]) for f in self._fields]
        return (dict(zip(names, row, strict=True)) for row in zip(*cols, strict=True)) if cols else (dict() for _ in range(self._n))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MetaColumns):
            return self._n == other._n and (self._fields == other._fields or list(self) == list(other))
        if isinstance(other, (list, tuple)):
            return len(other) == self._n and list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"MetaColumns({self._n}, {list(self._fields)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return MetaColumns, (self._n, self._fields)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f[0] for f in self._fields)

    def column(self, name: str) -> Sequence[Any]:
        """Every record's value of ``name`` (KeyError when the records have no such key)."""
        for f in self._fields:
            if f[0] == name:
                if f[1] == CONST:
                    return [f[2]] * self._n
                return list(map(f[3], f[2])) if len(f) == 4 else f[2]
        raise KeyError(name)

    def materialize(self) -> list[dict[str, Any]]:
        return list(self)

    def with_column(self, name: str, values: Sequence[Any]) -> MetaColumns:
        """These metas and one more key, ``values`` one per record (a range stays a range)."""
        return MetaColumns(self._n, [*self._fields, (name, COLUMN, values)])

    # -- moving ----------------------------------------------------------------------------------
    def take(self, idx: Sequence[int]) -> MetaColumns:
        """The metas of the records at ``idx`` (in that order, repeats allowed)."""
        return MetaColumns(len(idx), [_pick(f, idx) for f in self._fields])

    def shape(self) -> tuple[Any, ...]:
        """What two batches must share to be joined as columns: the keys in order and their converters."""
        return tuple((f[0], f[3] if len(f) == 4 else None) for f in self._fields)


def _part(f: Field, s: slice) -> Field:
    return f if f[1] == CONST else (f[0], COLUMN, f[2][s], *f[3:])


def take(column: Sequence[Any], idx: Sequence[int]) -> list[Any]:
    """``[column[i] for i in idx]`` without a Python step per element (any sequence: a list, a range)."""
    if len(idx) == 1:
        return [column[idx[0]]]
    return list(itemgetter(*idx)(column)) if idx else []


def _pick(f: Field, idx: Sequence[int]) -> Field:
    return f if f[1] == CONST else (f[0], COLUMN, take(f[2], idx), *f[3:])


def join_metas(parts: Sequence[Sequence[dict[str, Any]] | None], sizes: Sequence[int]) -> Sequence[dict[str, Any]] | None:
    """The metas of batches joined in order (``sizes``: their lengths; None: empty metas): columns
    when every part has columns with the same keys in the same order (a constant that differs
    between parts, such as the partition, becomes a column), else a list of dicts (None when no
    part had metas)."""
    if all(p is None for p in parts):
        return None
    if all(isinstance(p, MetaColumns) for p in parts):
        cols: list[MetaColumns] = parts  # type: ignore[assignment]
        first = cols[0].shape()
        if all(c.shape() == first for c in cols[1:]):
            fields: list[Field] = []
            for k, f in enumerate(cols[0]._fields):
                mine = [c._fields[k] for c in cols]
                if f[1] == CONST and all(g[1] == CONST and g[2] == f[2] and type(g[2]) is type(f[2]) for g in mine):
                    fields.append(f)
                else:
                    values = [g[2] if g[1] == COLUMN else [g[2]] * len(c) for g, c in zip(mine, cols, strict=True)]
                    fields.append((f[0], COLUMN, _concat(values), *f[3:]))
            return MetaColumns(sum(len(c) for c in cols), fields)
    return list(chain.from_iterable(p if p is not None else [{} for _ in range(n)] for p, n in zip(parts, sizes, strict=True)))


def _concat(cols: list[Sequence[Any]]) -> Sequence[Any]:
    """Columns one after the other; consecutive ranges (offsets) stay one range."""
    ranges = [c for c in cols if isinstance(c, range) and c.step == 1]
    if len(ranges) == len(cols) and all(a.stop == b.start for a, b in pairwise(ranges)):
        return range(ranges[0].start, ranges[-1].stop)
    return list(chain.from_iterable(cols))


def take_metas(metas: Sequence[dict[str, Any]], idx: Sequence[int]) -> Sequence[dict[str, Any]]:
    """``[metas[i] for i in idx]``, as columns when ``metas`` are columns."""
    return metas.take(idx) if isinstance(metas, MetaColumns) else take(metas, idx)


def destinations(default: str, meta_key: str | None, n: int, metas: Metas | None) -> list[str]:
    """Where each of ``n`` records goes: the text of its meta's ``meta_key`` (bytes decoded), else
    ``default`` (also for every record when no key is set or the records have no metas)."""
    if meta_key is None or metas is None:
        return [default] * n
    out = []
    for i in range(n):
        v = metas[i].get(meta_key)
        out.append(v.decode() if isinstance(v, bytes) else str(v) if v is not None else default)
    return out
