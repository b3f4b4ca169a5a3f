"""``type: postgres``: write records as rows of a PostgreSQL table, a batch per statement.

Each record is a JSON object (the offramp's codec is ``json``, the default). Its fields fill
the table's columns by name: a field naming no column is left out (as in Vector's postgres
sink), and a column the record has no field for is left out of the row, so it takes its
``DEFAULT`` (a ``serial`` id, ``now()``; Vector writes ``NULL`` there). ``columns:`` maps
columns to what fills them instead: ``{id: order.id, amount: total, offset: $kafka_offset}``
(a field, a nested field, or ``$`` and a meta key); a list ``[id, amount]`` takes same-named
fields. With ``with_meta: true`` a record is ``{event, meta}``: ``columns: {payload: event,
reason: meta.error.message}`` keeps dead letters in a table. The server parses every value for
its column's type: a JSON object or array goes into a ``json``/``jsonb`` column as it is, a
JSON array into an array column, text into a ``timestamptz`` as PostgreSQL reads it
(``2026-12-04T10:00:00Z``).

How it writes: ``COPY ... FROM STDIN`` (the fast path), or with ``on_conflict`` one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT (key) DO NOTHING`` (or ``DO UPDATE SET`` every
other written column): re-delivered rows (after a crash, a retry) then leave the table as if
written once. The key is ``conflict_columns``, by default the table's primary key. Within one
``DO UPDATE`` write, a row is superseded by a later one with the same key (the table ends as if
both were written in order). A write is **confirmed** once its statements committed (each is
its own transaction; a batch of records with different sets of columns is one statement per
run of records with the same set, in order).

A row the database refuses (a constraint: ``23505`` duplicate key, ``23502`` null, ``23514``
check; a value its column type cannot read: ``22P02``; a limit, such as an index row too large:
``54000``; a trigger's ``RAISE``) goes to the
offramp's ``err`` port with the reason (``SQLSTATE 23505: duplicate key value violates unique
constraint "orders_pkey" (Key (id)=(7) already exists.)``), and the rest of its batch is written:
a failed ``COPY`` names the line it stopped at, so that row is set aside and the others are
copied again; a failed ``INSERT`` is split in halves until the refused rows are alone. A record
that is not a JSON object, or has no field for any column, goes to ``err`` at once.

Any other failure (the connection lost or refused, the server shutting down or read-only, a
timeout, a missing table or permission: ``42P01``, ``42501``) is retried by the runtime with
backoff while the records wait (``headrace_offramp_state{state="retrying"}``); the connection
and the table's columns are fetched again first. A write that failed after its statement may
have committed is written again: without ``on_conflict``, rows can then appear twice (at least
once). Start-up waits for the server (within ``daemon.start_timeout``); a wrong password, a
missing database or table, or a ``columns`` entry the table lacks fail it at once.

The password comes from the environment: ``password: "${PG_PASSWORD}"`` (or in the DSN,
URL-encoded: ``postgresql://app:${PG_PASSWORD}@db/app``); with none, asyncpg reads
``PGPASSWORD`` or ``~/.pgpass`` as libpq does.
Table names are spelled as in the catalog (quoted: ``Events`` is not ``events``);
``schema.table`` names a schema. Needs ``asyncpg`` (``pip install headrace[postgres]``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from typing import Any, Literal

from pydantic import Field

from headrace.contract.backoff import Backoff
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.paths import SettingError
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.units import Duration
from headrace.plugins.postgres_rows import LAYOUT_SQL, Column, RowMaker, RowRefused, TableLayout, copy_text, quote_ident, quote_table

log = logging.getLogger("headrace.postgres")

# SQLSTATE classes of a refusal of the row itself: writing it again cannot help
REFUSALS = ("21", "22", "23", "44", "54", "P0")  # cardinality, data, integrity, check option, a limit (7 array dimensions), a trigger's RAISE
PERMANENT_AT_START = ("28", "3D", "42")  # authentication, no such database, no such table or no permission
# the columns of each unique index of a table (what ON CONFLICT can name; not partial ones, not expressions)
UNIQUE_SQL = """
SELECT ARRAY(SELECT a.attname::text FROM unnest(i.indkey) AS k JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k)
FROM pg_index i WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL AND NOT (0 = ANY (i.indkey))
"""
_COPY_LINE = re.compile(r"^COPY [^,]+, line (\d+)")

Row = tuple[tuple[str, ...], list[str | None]]  # (columns, values as text)


class PostgresOfframpConfig(PluginConfig):
    dsn: str = Field(pattern=r"^postgres(ql)?://", description="the server and database: postgresql://USER:${PASSWORD_VAR}@HOST:PORT/DATABASE?sslmode=...")
    password: str | None = Field(None, description="the password (from ${VAR}) when the DSN holds none: no URL encoding needed; empty: none")
    table: str = Field(min_length=1, description="the table (schema.table for another schema), spelled as in the catalog")
    columns: dict[str, str] | list[str] | None = Field(None, description="column: field (a.b nested, $key a meta key); a list: same-named fields; none: every field naming a column")  # fmt: skip
    on_conflict: Literal["nothing", "update"] | None = Field(None, description="INSERT ... ON CONFLICT DO NOTHING or DO UPDATE instead of COPY (idempotent re-delivery)")  # fmt: skip
    conflict_columns: list[str] | None = Field(None, min_length=1, description="the ON CONFLICT key (default: the primary key)")
    connect_timeout: Duration = Field(10.0, gt=0, description="how long a connection attempt may take")
    timeout: Duration = Field(60.0, gt=0, description="how long one statement may take")


def _sqlstate(exc: BaseException) -> str:
    return str(getattr(exc, "sqlstate", "") or "")


def refused(exc: BaseException) -> bool:
    """Whether the database refused the rows themselves (not the connection, the table, a permission)."""
    return _sqlstate(exc)[:2] in REFUSALS


def reason(exc: BaseException) -> str:
    """``SQLSTATE 23505: duplicate key value ... (Key (id)=(7) already exists.)``"""
    message = getattr(exc, "message", None) or str(exc).split("\n", 1)[0]
    detail = getattr(exc, "detail", None)
    return f"SQLSTATE {_sqlstate(exc)}: {message}" + (f" ({detail})" if detail else "")


def copy_line(exc: BaseException) -> int | None:
    """The line a failed COPY stopped at (1 is the first row), when the server says."""
    m = _COPY_LINE.match(str(getattr(exc, "context", None) or ""))
    return int(m.group(1)) if m else None


class PostgresOfframp(Offramp):
    name = "postgres"
    Config = PostgresOfframpConfig
    summary = "write records as rows of a PostgreSQL table: COPY, or INSERT ... ON CONFLICT; refused rows to err, the rest written"
    example = "{type: postgres, codec: json, config: {dsn: 'postgresql://app:${PG_PASSWORD}@127.0.0.1:5432/app', table: events}}"
    coalesce_events = 4096  # a statement per write: the cost is per round trip

    def __init__(self, config: PostgresOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        cols = config.columns
        self.mapping: dict[str, str] | None = {c: c for c in cols} if isinstance(cols, list) else cols
        self.conn: Any = None
        self.maker: RowMaker | None = None
        self.key: tuple[str, ...] = ()  # the ON CONFLICT key (empty: any constraint, for DO NOTHING)
        self.statements: dict[tuple[str, ...], str] = {}  # INSERT text per set of columns

    def check(self) -> None:
        cfg = self.cfg
        if self.context.framing:
            raise ValueError(f"postprocessors ({', '.join(self.context.framing)}): the postgres offramp writes rows, not framed bytes")
        if cfg.conflict_columns is not None and cfg.on_conflict is None:
            raise SettingError("conflict_columns", "is the key of on_conflict: set on_conflict (nothing or update) too")
        for column, source in (self.mapping or {}).items():
            if not column or not source or source == "$" or "" in (source[1:] if source.startswith("$") else source).split("."):
                raise SettingError("columns", f"{column!r}: {source!r} is not a field (a, a.b) or a meta key ($key)")

    # -- connecting --------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            import asyncpg  # noqa: F401
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the postgres offramp needs the asyncpg package: pip install 'headrace[postgres]'") from exc
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                await self._connect()
                return
            except Exception as exc:
                if _sqlstate(exc)[:2] in PERMANENT_AT_START or isinstance(exc, ValueError):
                    raise
                delay = backoff.next()
                log.warning("postgres offramp %s: cannot connect (%s: %s); trying again in %.1fs", self.context.component_id,
                            type(exc).__name__, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.cfg.dsn, password=self.cfg.password or None, timeout=self.cfg.connect_timeout, command_timeout=self.cfg.timeout,
                                     server_settings={"application_name": f"headrace {self.context.component_id}"[:63]})  # fmt: skip
        try:
            layout = await self._layout(conn)
            maker = RowMaker(layout, self.mapping)
            key = self._key(layout, [list(r[0]) for r in await conn.fetch(UNIQUE_SQL, layout.table)])
        except BaseException:
            conn.terminate()
            raise
        self.conn, self.maker, self.key = conn, maker, key
        self.statements.clear()

    async def _layout(self, conn: Any) -> TableLayout:
        table = quote_table(self.cfg.table)
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
        if not exists:
            raise ValueError(f"table {self.cfg.table} does not exist (or is not visible to this user)")
        rows = await conn.fetch(LAYOUT_SQL, table)
        return TableLayout(table, {r["name"]: Column(r["name"], r["type"], r["kind"], r["computed"], r["primary_key"]) for r in rows})

    def _key(self, layout: TableLayout, unique: list[list[str]]) -> tuple[str, ...]:
        """The ON CONFLICT key: ``conflict_columns``, else the primary key (none: any constraint, for DO NOTHING)."""
        key = tuple(self.cfg.conflict_columns or layout.primary_key)
        for name in key:
            if name not in layout.columns:
                raise ValueError(f"conflict_columns: the table {self.cfg.table} has no column {name!r}")
        if self.cfg.on_conflict == "update" and not key:
            raise ValueError(f"on_conflict: update needs a key: the table {self.cfg.table} has no primary key; set conflict_columns")
        if self.cfg.on_conflict is not None and key and set(key) not in [set(u) for u in unique]:
            raise ValueError(f"conflict_columns: the table {self.cfg.table} has no unique index or constraint on ({', '.join(key)})")
        return key

    def _drop(self) -> None:
        """After a failure other than a refused row: a new connection, and the table read again, next time."""
        conn, self.conn, self.maker = self.conn, None, None
        if conn is not None:
            conn.terminate()

    async def stop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()

    # -- writing -----------------------------------------------------------------------------
    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        if self.conn is None or self.conn.is_closed():
            self._drop()
            await self._connect()
        maker = self.maker
        assert maker is not None
        rows: list[Row | None] = []
        rejected: list[tuple[int, str]] = []
        use_meta = maker.uses_meta and metas is not None
        for i, record in enumerate(chunks):
            try:
                rows.append(maker.row(record, metas[i] if use_meta else None))  # type: ignore[index]
            except RowRefused as exc:
                rows.append(None)
                rejected.append((i, str(exc)))
            except (ValueError, TypeError, RecursionError) as exc:  # a value no column text can hold (arrays nested past the stack)
                rows.append(None)
                rejected.append((i, f"cannot make a row of it: {type(exc).__name__}: {exc}"))
        delivered: list[int] = []
        try:
            for columns, idx in _runs(rows):
                await self._write_run(columns, idx, rows, delivered, rejected)
        except Exception as exc:
            self._drop()
            if delivered or rejected:
                raise PartialWrite(exc, delivered, rejected) from exc
            raise
        if rejected:
            log.warning("postgres offramp %s: %d row(s) refused; first: %s", self.context.component_id, len(rejected), rejected[0][1])
        return sorted(rejected) or None

    async def _write_run(self, columns: tuple[str, ...], idx: list[int], rows: list[Row | None], delivered: list[int],
                         rejected: list[tuple[int, str]]) -> None:  # fmt: skip
        """Write rows ``idx`` (all with ``columns``); a refusal sets the refused rows aside and writes the others."""
        todo = deque([idx])
        while todo:
            part = todo.popleft()
            try:
                await self._statement(columns, [rows[i][1] for i in part])  # type: ignore[index]
            except Exception as exc:
                if not refused(exc):
                    raise
                if len(part) == 1:
                    rejected.append((part[0], reason(exc)))
                    continue
                line = copy_line(exc) if self.cfg.on_conflict is None else None
                if line is not None and 0 < line <= len(part):  # COPY stopped at that row: the ones before it passed
                    rejected.append((part[line - 1], reason(exc)))
                    pieces = [part[: line - 1], part[line:]]
                else:
                    half = len(part) // 2
                    pieces = [part[:half], part[half:]]
                todo.extendleft(p for p in reversed(pieces) if p)
                continue
            delivered.extend(part)

    async def _statement(self, columns: tuple[str, ...], values: list[list[str | None]]) -> None:
        schema, _, table = self.cfg.table.rpartition(".")
        if self.cfg.on_conflict is None:
            await self.conn.copy_to_table(table, schema_name=schema or None, columns=list(columns), format="text",
                                          source=memoryview(copy_text(values)), timeout=self.cfg.timeout)  # fmt: skip
            return
        sql = self.statements.get(columns)
        if sql is None:
            sql = self.statements[columns] = self._insert_sql(columns)
        if self.cfg.on_conflict == "update":
            values = _last_per_key(columns, values, self.key)
        await self.conn.execute(sql, *(list(col) for col in zip(*values, strict=True)), timeout=self.cfg.timeout)

    def _insert_sql(self, columns: tuple[str, ...]) -> str:
        assert self.maker is not None
        layout = self.maker.layout
        names = ", ".join(quote_ident(c) for c in columns)
        casts = ", ".join(f"u.c{k}::{layout.columns[c].type}" for k, c in enumerate(columns))
        params = ", ".join(f"${k + 1}::text[]" for k in range(len(columns)))
        aliases = ", ".join(f"c{k}" for k in range(len(columns)))
        sql = f"INSERT INTO {layout.table} ({names}) SELECT {casts} FROM unnest({params}) AS u({aliases}) ON CONFLICT"
        key = self.key
        target = f" ({', '.join(quote_ident(c) for c in key)})" if key else ""
        updates = [c for c in columns if c not in key]
        if self.cfg.on_conflict == "update" and updates:
            return sql + f"{target} DO UPDATE SET " + ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates)
        return sql + f"{target} DO NOTHING"


def _runs(rows: list[Row | None]) -> list[tuple[tuple[str, ...], list[int]]]:
    """Consecutive rows with the same columns, in order (refused ones left out)."""
    runs: list[tuple[tuple[str, ...], list[int]]] = []
    for i, row in enumerate(rows):
        if row is None:
            continue
        if runs and runs[-1][0] == row[0]:
            runs[-1][1].append(i)
        else:
            runs.append((row[0], [i]))
    return runs


def _last_per_key(columns: tuple[str, ...], values: list[list[str | None]], key: tuple[str, ...]) -> list[list[str | None]]:
    """For one DO UPDATE statement: the last row of each key (a row may change a row only once per
    statement); rows without the whole key stay (the server decides)."""
    if not key or any(k not in columns for k in key):
        return values
    at = [columns.index(k) for k in key]
    last: dict[tuple[str | None, ...], int] = {}
    for n, row in enumerate(values):
        k = tuple(row[j] for j in at)
        if None not in k:
            last[k] = n
    if len(last) == len(values):
        return values
    keep = set(last.values())
    return [row for n, row in enumerate(values) if n in keep or None in (row[j] for j in at)]
