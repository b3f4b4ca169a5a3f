"""``MetaColumns``: a source's metas as columns behave as the list of dicts they stand for, through
every batch verb, pickling and a worker, and no dict is built until something reads one."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace.contract.metas import COLUMN, CONST, MetaColumns, header_dict, join_metas, take_metas
from headrace.runtime.batch import Batch, join, unshare

SCALARS = st.one_of(st.none(), st.integers(), st.binary(max_size=4), st.text(max_size=4), st.booleans())
HEADERS = st.lists(st.tuples(st.text(max_size=3), st.binary(max_size=3)), max_size=3).map(tuple)


@st.composite
def columns(draw: Any, n: int | None = None, names: list[str] | None = None) -> tuple[MetaColumns, list[dict[str, Any]]]:
    """Random columns and the list of dicts they stand for."""
    if n is None:
        n = draw(st.integers(0, 12))
    if names is None:
        names = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True, max_size=5))
    fields: list[tuple[Any, ...]] = []
    for name in names:
        kind = draw(st.sampled_from(["const", "list", "range", "headers"]))
        if kind == "const":
            fields.append((name, CONST, draw(SCALARS)))
        elif kind == "list":
            fields.append((name, COLUMN, draw(st.lists(SCALARS, min_size=n, max_size=n))))
        elif kind == "range":
            start = draw(st.integers(0, 1000))
            fields.append((name, COLUMN, range(start, start + n)))
        else:
            fields.append((name, COLUMN, draw(st.lists(HEADERS, min_size=n, max_size=n)), header_dict))
    ref = []
    for i in range(n):
        row = {}
        for f in fields:
            row[f[0]] = f[2] if f[1] == CONST else (f[3](f[2][i]) if len(f) == 4 else f[2][i])
        ref.append(row)
    return MetaColumns(n, fields), ref


def same(cols: Any, ref: list[dict[str, Any]]) -> None:
    assert len(cols) == len(ref)
    assert list(cols) == ref
    assert [cols[i] for i in range(len(ref))] == ref
    assert [list(m) for m in cols] == [list(m) for m in ref]  # key order too
    assert cols == ref


@given(data=st.data())
def test_columns_stand_for_their_dicts_through_take_slice_join_and_pickle(data: Any) -> None:
    cols, ref = data.draw(columns())
    same(cols, ref)
    same(pickle.loads(pickle.dumps(cols, protocol=5)), ref)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["take", "slice", "join_same", "join_other"]))
        if op == "take":
            idx = data.draw(st.lists(st.integers(0, max(0, len(ref) - 1)), max_size=8)) if ref else []
            was = isinstance(cols, MetaColumns)
            cols, ref = take_metas(cols, idx), [ref[i] for i in idx]
            assert isinstance(cols, MetaColumns) == was
        elif op == "slice":
            a, b = sorted(data.draw(st.lists(st.integers(-3, len(ref) + 3), min_size=2, max_size=2)))
            step = data.draw(st.sampled_from([None, 1, 2]))
            cols, ref = cols[a:b:step], ref[a:b:step]
        else:
            names = list(cols.names) if op == "join_same" and isinstance(cols, MetaColumns) else data.draw(st.lists(st.sampled_from(["a", "x"]), unique=True))
            other, oref = data.draw(columns(names=names))
            joined = join_metas([cols, other], [len(cols), len(other)])
            if op == "join_same" and isinstance(cols, MetaColumns) and cols.shape() == other.shape():
                assert isinstance(joined, MetaColumns)
            cols, ref = joined, ref + oref  # type: ignore[assignment]
        same(cols, ref)


def test_each_dict_is_new_so_a_stage_may_change_it() -> None:
    cols = MetaColumns(2, [("t", CONST, "topic"), ("h", COLUMN, [(("k", b"v"),), ()], header_dict)])
    first = cols[0]
    first["t"] = "changed"
    first["h"]["k"] = b"changed"
    assert cols[0] == {"t": "topic", "h": {"k": b"v"}}
    assert cols[-1] == {"t": "topic", "h": {}}
    with pytest.raises(IndexError):
        cols[2]


def test_batches_of_two_partitions_join_as_columns() -> None:
    a = MetaColumns(2, [("p", CONST, 0), ("o", COLUMN, range(5, 7))])
    b = MetaColumns(1, [("p", CONST, 1), ("o", COLUMN, range(9, 10))])
    c = MetaColumns(1, [("p", CONST, True), ("o", COLUMN, [3])])  # equal to 1, not the same value
    joined = join_metas([a, b, c], [2, 1, 1])
    assert isinstance(joined, MetaColumns)
    assert joined == [{"p": 0, "o": 5}, {"p": 0, "o": 6}, {"p": 1, "o": 9}, {"p": True, "o": 3}]
    assert type(joined[3]["p"]) is bool
    same_p = join_metas([a, MetaColumns(1, [("p", CONST, 0), ("o", COLUMN, [1])])], [2, 1])
    assert same_p._fields[0] == ("p", CONST, 0)  # type: ignore[union-attr]


def test_consecutive_offset_ranges_join_as_one_range() -> None:
    a = MetaColumns(3, [("o", COLUMN, range(10, 13))])
    b = MetaColumns(2, [("o", COLUMN, range(13, 15))])
    gap = MetaColumns(2, [("o", COLUMN, range(20, 22))])
    assert join_metas([a, b], [3, 2])._fields[0][2] == range(10, 15)  # type: ignore[union-attr]
    assert join_metas([a, gap], [3, 2]).column("o") == [10, 11, 12, 20, 21]  # type: ignore[union-attr]


def test_bad_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="has 2 values for 3 records"):
        MetaColumns(3, [("o", COLUMN, [1, 2])])
    with pytest.raises(ValueError, match="not a meta field"):
        MetaColumns(1, [("o", CONST, 1, header_dict)])


def kafka_like(n: int, base: int) -> MetaColumns:
    return MetaColumns(n, [("kafka_topic", CONST, "in"), ("kafka_offset", COLUMN, range(base, base + n)),
                           ("kafka_key", COLUMN, [b"k%d" % (base + i) for i in range(n)])])  # fmt: skip


def test_batch_verbs_keep_columns_as_columns() -> None:
    one = Batch.source([b"%d" % i for i in range(4)], codec="json", origin="in", group=None, metas=kafka_like(4, 0))
    two = Batch.source([b"%d" % i for i in range(4, 6)], codec="json", origin="in", group=None, metas=kafka_like(2, 4))
    both = join([one, two])
    assert isinstance(both.metas, MetaColumns) and both.metas.column("kafka_offset") == range(0, 6)
    picked = both.select([5, 0, 2])
    assert isinstance(picked.metas, MetaColumns)
    assert [m["kafka_offset"] for m in picked.metas] == [5, 0, 2]
    assert isinstance(both.slice(1, 3).metas, MetaColumns) and both.slice(1, 3).meta(0)["kafka_key"] == b"k1"
    assert both.fanout_copy().metas is both.metas  # columns build new dicts anyway: nothing to copy
    failed = both.failed([(3, "bad")], "s", "ValueError")
    assert failed.metas == [{"kafka_topic": "in", "kafka_offset": 3, "kafka_key": b"k3", "error": {"stage": "s", "type": "ValueError", "message": "bad"}}]
    own = unshare(both.metas)
    assert isinstance(own, list) and own == list(both.metas) and len({id(m) for m in own}) == 6
    mixed = join([one, Batch.source([b"9"], codec="json", origin="in", group=None, metas=[{"x": 1}])])
    assert mixed.metas == [*kafka_like(4, 0), {"x": 1}]


def uses(event, meta):  # type: ignore[no-untyped-def]
    return event if meta.get("x") else None


def ignores(event, meta):  # type: ignore[no-untyped-def]
    event["n"] = 1
    return event


def closes_over(event, meta):  # type: ignore[no-untyped-def]
    return sorted([event], key=lambda e: meta.get("k", 0))


def by_frame(event, meta):  # type: ignore[no-untyped-def]
    return locals()["event"]


def rebinds(event, meta):  # type: ignore[no-untyped-def]
    meta = {}  # noqa: F841  (a rebinding counts as naming it)
    return event


def star(event, *rest):  # type: ignore[no-untyped-def]
    return event


class Stage:
    def process(self, event, meta):  # type: ignore[no-untyped-def]
        return event

    def reads(self, event, meta):  # type: ignore[no-untyped-def]
        return meta

    def __call__(self, event, meta):  # type: ignore[no-untyped-def]
        return event


@pytest.mark.parametrize(
    ("fn", "named"),
    [(uses, True), (ignores, False), (closes_over, True), (by_frame, True), (rebinds, True), (star, True),
     (Stage().process, False), (Stage().reads, True), (Stage(), True), (print, True)],
)  # fmt: skip
def test_a_stage_gets_no_meta_built_only_when_its_code_never_names_it(fn: Any, named: bool) -> None:
    from headrace.plugins.operators.python import names_meta

    assert names_meta(fn) is named


def test_a_connections_meta_is_shared_as_constants_only_when_immutable() -> None:
    from headrace.runtime.onramp import same_meta

    flat = same_meta({"peer": "127.0.0.1:5000", "port": 9000}, 3)
    assert isinstance(flat, MetaColumns) and list(flat) == [{"peer": "127.0.0.1:5000", "port": 9000}] * 3
    nested = same_meta({"headers": {"a": "b"}}, 2)
    assert isinstance(nested, list) and nested == [{"headers": {"a": "b"}}] * 2 and nested[0] is not nested[1]
