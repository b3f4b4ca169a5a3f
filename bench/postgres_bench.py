"""PostgreSQL offramp benchmarks against a real server (initdb in a temporary folder), each beside a
bare asyncpg loop in the same run (issue 18 names no target: the closing note discusses a connector
below 0.8x its bare loop).

P1: blaster -> postgres (COPY), the Tremor records' 13 fields as 13 columns; the bare loop parses each
record with orjson and copies batches of the same size with ``copy_records_to_table`` (binary COPY).
P2: ``on_conflict: update`` (INSERT ... SELECT FROM unnest ... ON CONFLICT (guid) DO UPDATE) over records
with distinct keys; the bare loop parses them and sends INSERT ... ON CONFLICT DO UPDATE with ``executemany``.
Rate: rows in the table over time, from the first rows to all of them (``count(*)`` polled).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.postgres import PostgresServer

N = 200_000
BATCH = 4096  # the offramp's coalesce_events: a write takes up to this many queued events
COLUMNS = ["about", "guid", "abool", "aint", "short_message", "tags", "array", "index_type", "logger_name", "syslog_hostname",
           "application", "type", "doc-type"]  # fmt: skip
TABLE = """CREATE TABLE {name} (about text, guid text{key}, abool boolean, aint bigint, short_message text, tags text[], "array" int[],
           index_type text, logger_name text, syslog_hostname text, application text, type text, "doc-type" text)"""
N_UPSERT = 50_000  # distinct keys: a data file of this many records, each with its own guid
UPSERT = ("INSERT INTO {name} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (guid) DO UPDATE SET "
          + ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in COLUMNS if c != "guid"))


def _unique(n: int) -> list[bytes]:
    """``n`` records of the data set, each with a guid of its own (for upserts that insert, not update)."""
    import orjson

    recs = records()
    out = []
    for i in range(n):
        d = orjson.loads(recs[i % len(recs)])
        d["guid"] = f"{d['guid']}-{i}"
        out.append(orjson.dumps(d))
    return out


async def _bare_copy(dsn: str, table: str, n: int) -> float:
    """orjson.loads each record -> a tuple -> ``copy_records_to_table`` per BATCH; rows/s."""
    import asyncpg
    import orjson

    recs = records()
    conn = await asyncpg.connect(dsn)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        rows = []
        for i in range(start, min(start + BATCH, n)):
            d = orjson.loads(recs[i % len(recs)])
            rows.append(tuple(d.get(c) for c in COLUMNS))
        await conn.copy_records_to_table(table, records=rows, columns=COLUMNS)
    rate = n / (time.perf_counter() - t0)
    await conn.close()
    return rate


async def _bare_upsert(dsn: str, table: str, recs: list[bytes]) -> float:
    """orjson.loads each record -> a tuple -> ``executemany`` of one INSERT ... ON CONFLICT DO UPDATE per BATCH; rows/s."""
    import asyncpg
    import orjson

    sql = UPSERT.format(name=table)
    conn = await asyncpg.connect(dsn)
    t0 = time.perf_counter()
    for start in range(0, len(recs), BATCH):
        rows = []
        for r in recs[start : start + BATCH]:
            d = orjson.loads(r)
            rows.append(tuple(d.get(c) for c in COLUMNS))
        await conn.executemany(sql, rows)
    rate = len(recs) / (time.perf_counter() - t0)
    await conn.close()
    return rate


def _daemon_rate(server: PostgresServer, folder: Any, data: str, iters: int, table: str, extra: str, n: int) -> float:
    marks: list[tuple[float, int]] = []

    def done() -> bool:
        marks.append((time.perf_counter(), int(server.fetch(f"SELECT count(*) FROM {table}")[0][0])))
        return marks[-1][1] >= n

    cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: blaster, codec: json, config: {{source: {folder / data}, iters: {iters}}}}}}}
offramps: {{out: {{type: postgres, codec: json, config: {{dsn: "{server.dsn}", table: {table}{extra}}}}}}}
links: {{src: [out]}}
"""
    run_daemon_async(cfg, folder, done)
    started = [m for m in marks if m[1] > 0]
    return (started[-1][1] - started[0][1]) / (started[-1][0] - started[0][0])


def postgres_benches(n: int = N, n_upsert: int = N_UPSERT) -> list[str]:
    out: list[str] = []
    folder = tmpdir()
    (folder / "data.ndjson").write_bytes(b"\n".join(records()) + b"\n")
    unique = _unique(n_upsert)
    (folder / "unique.ndjson").write_bytes(b"\n".join(unique) + b"\n")
    server = PostgresServer()
    try:
        for name in ("bare_copy", "ours_copy"):
            server.execute(TABLE.format(name=name, key=""))
        bare = asyncio.run(_bare_copy(server.dsn, "bare_copy", n))
        ours = _daemon_rate(server, folder, "data.ndjson", n // len(records()), "ours_copy", "", n)
        out.append(f"  baseline: bare asyncpg loop, orjson.loads -> copy_records_to_table of {BATCH}: {bare:,.0f} rows/s ({n:,} records of ~640 B, 13 columns)")
        out.append(line("P1. blaster -> PostgreSQL COPY (offramp)", f"{ours:,.0f} rows/s = {ours / bare:.2f}x bare", "- (>=0.8x noted)", True))
        for name in ("bare_upsert", "ours_upsert"):
            server.execute(TABLE.format(name=name, key=" PRIMARY KEY"))
        bare_u = asyncio.run(_bare_upsert(server.dsn, "bare_upsert", unique))
        ours_u = _daemon_rate(server, folder, "unique.ndjson", 1, "ours_upsert", ", on_conflict: update", n_upsert)
        out.append(f"  baseline: bare asyncpg loop, orjson.loads -> executemany INSERT ... ON CONFLICT DO UPDATE of {BATCH}: {bare_u:,.0f} rows/s ({n_upsert:,} keys)")
        out.append(line("P2. blaster -> PostgreSQL upsert (offramp)", f"{ours_u:,.0f} rows/s = {ours_u / bare_u:.2f}x bare", "- (>=0.8x noted)", True))
    finally:
        server.remove()
    return out
