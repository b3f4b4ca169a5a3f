"""Records as table rows for the postgres offramp: which columns a record fills, and each value as
the text PostgreSQL's input functions read (the server converts and checks every value, as
``COPY`` or a cast from text would).

A record is a JSON object. Without a ``columns`` mapping, each top-level field named like a
writable column of the table fills that column (fields naming no column are left out, as in
Vector's postgres sink); with one, ``{column: source}`` fills ``column`` from ``source``: a field
(``user.id`` reads a nested one) or ``$key``, a meta key. A column whose source is absent from
the record is left out of the row, so it takes its ``DEFAULT`` (a ``serial``, ``now()``); JSON
``null`` writes ``NULL``. Values by column type: ``json``/``jsonb`` columns take the JSON text of
any value (a string too); array columns take a JSON array as an array; ``bytea`` takes bytes (a
meta value) or the UTF-8 of a string; other columns take the value's text (an object or array as
its JSON), which the server parses for the column's type or refuses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from headrace.plugins.codecs.json import dumps_exact, loads_exact

SCALAR, JSON, ARRAY, BYTEA = "scalar", "json", "array", "bytea"

# the columns of a table, as the catalog describes them
LAYOUT_SQL = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       CASE WHEN t.typname IN ('json', 'jsonb') THEN 'json' WHEN t.typname = 'bytea' THEN 'bytea'
            WHEN t.typcategory = 'A' THEN 'array' ELSE 'scalar' END AS kind,
       a.attgenerated <> '' OR a.attidentity = 'a' AS computed,
       coalesce(a.attnum = ANY (i.indkey), false) AS primary_key
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_table(table: str) -> str:
    """``name`` or ``schema.name`` as SQL, each part quoted (so spelled as in the catalog)."""
    schema, dot, name = table.rpartition(".")
    return f"{quote_ident(schema)}.{quote_ident(name)}" if dot else quote_ident(name)


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as format_type spells it: the cast from text in an INSERT
    kind: str  # SCALAR, JSON, ARRAY or BYTEA: how a value becomes its text
    computed: bool  # generated, or GENERATED ALWAYS AS IDENTITY: never written
    primary_key: bool


@dataclass(frozen=True)
class TableLayout:
    table: str  # quoted, as SQL names it
    columns: dict[str, Column]

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns.values() if c.primary_key)


class RowRefused(ValueError):
    """A record that cannot become a row (not an object, no field for any column)."""


@dataclass
class Source:
    column: Column
    path: tuple[str, ...] = ()  # a field path in the record
    meta: str | None = None  # or a meta key


@dataclass
class RowMaker:
    """Makes rows of ``layout`` from records; ``columns``: the config's mapping (None: the record's fields)."""

    layout: TableLayout
    columns: dict[str, str] | None
    sources: list[Source] = field(default_factory=list)
    uses_meta: bool = False

    def __post_init__(self) -> None:
        cols = self.layout.columns
        if self.columns is None:
            return
        for name, src in self.columns.items():
            col = cols.get(name)
            if col is None:
                raise ValueError(f"columns: the table {self.layout.table} has no column {name!r} (it has {', '.join(cols)})")
            if col.computed:
                raise ValueError(f"columns: {name!r} is a generated column of {self.layout.table}: the database computes it")
            if src.startswith("$"):
                self.sources.append(Source(col, meta=src[1:]))
                self.uses_meta = True
            else:
                self.sources.append(Source(col, path=tuple(src.split("."))))

    def row(self, record: bytes, meta: dict[str, Any] | None) -> tuple[tuple[str, ...], list[str | None]]:
        """(the columns the record fills, their values as text or None for NULL); ``RowRefused``."""
        try:
            obj = loads_exact(record)
        except ValueError as exc:
            raise RowRefused(f"not JSON (the postgres offramp reads its records as JSON: codec: json): {exc}") from None
        if not isinstance(obj, dict):
            raise RowRefused(f"a row is made from a JSON object, not {type(obj).__name__ if obj is not None else 'null'}")
        names: list[str] = []
        values: list[str | None] = []
        if self.columns is None:
            cols = self.layout.columns
            for key, value in obj.items():
                col = cols.get(key)
                if col is not None and not col.computed:
                    names.append(key)
                    values.append(cell(value, col.kind))
            if not names:
                raise RowRefused(f"none of the record's fields names a column of {self.layout.table}")
        else:
            for src in self.sources:
                if src.meta is None:
                    found, value = lookup(obj, src.path)
                else:
                    found = meta is not None and src.meta in meta
                    value = meta.get(src.meta) if meta is not None else None
                if found:
                    names.append(src.column.name)
                    values.append(cell(value, src.column.kind))
            if not names:
                raise RowRefused("the record has none of the fields `columns` names")
        return tuple(names), values


def lookup(obj: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    value: Any = obj
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def cell(value: Any, kind: str) -> str | None:
    """A value as the text the column's input function reads (None: NULL)."""
    if value is None:
        return None
    if kind == JSON:
        return dumps_exact(value).decode()
    t = type(value)
    if t is str:
        text: str = value
        return text if kind != BYTEA else "\\x" + text.encode().hex()
    if t is bool:
        return "true" if value else "false"
    if t is int or t is float:
        return repr(value)
    if t is bytes or t is bytearray:
        if kind == BYTEA:
            return "\\x" + bytes(value).hex()
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            raise RowRefused("bytes that are not UTF-8 text can only go to a bytea column") from None
    if t is list and kind == ARRAY:
        return array_literal(value)
    if t is dict or t is list:
        return dumps_exact(value).decode()
    return str(value)


MAX_DIMENSIONS = 6  # PostgreSQL's limit on an array's dimensions


def array_literal(items: Sequence[Any], depth: int = 1) -> str:
    """A JSON array as a PostgreSQL array literal (``{"a","b"}``; nested arrays for dimensions)."""
    if depth > MAX_DIMENSIONS:
        raise RowRefused(f"an array nested deeper than the {MAX_DIMENSIONS} dimensions PostgreSQL allows")
    parts = []
    for item in items:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, list):
            parts.append(array_literal(item, depth + 1))
        else:
            text = cell(item, SCALAR)
            assert text is not None
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(parts) + "}"


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_NEEDS_ESCAPE = re.compile(r"[\\\n\r\t]").search  # one C scan; str.translate walks a long text in Python-level steps


def copy_text(rows: Sequence[list[str | None]]) -> bytes:
    """Rows in COPY's text format: one line each, tab-separated, ``\\N`` for NULL."""
    special = _NEEDS_ESCAPE
    lines = []
    for values in rows:
        lines.append("\t".join("\\N" if v is None else v.translate(_COPY_ESCAPES) if special(v) else v for v in values))
    lines.append("")
    return "\n".join(lines).encode()
