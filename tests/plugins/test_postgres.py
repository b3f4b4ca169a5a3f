"""The postgres offramp (COPY, or INSERT ... ON CONFLICT; refused rows to err, the rest written)
against a real PostgreSQL server (issue 18). One server for the module; each test its own tables."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from headrace.config.load import ConfigError, load_file
from headrace.contract.context import PluginContext
from headrace.plugins.offramps.postgres import PostgresOfframp, PostgresOfframpConfig
from tests.support.daemon import Daemon, free_port, json_lines, metric
from tests.support.postgres import PASSWORD, USER, PostgresServer

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PG_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    s = PostgresServer()
    try:
        yield s
    finally:
        s.remove()


def _plugin(server: PostgresServer, tmp_path: Path, **config: Any) -> PostgresOfframp:
    return PostgresOfframp(PostgresOfframpConfig.model_validate({"dsn": server.dsn, **config}), PluginContext("pg", tmp_path))


async def _written(plugin: PostgresOfframp, records: list[bytes], metas: list[dict[str, Any]] | None = None) -> list[tuple[int, str]]:
    await plugin.start()
    try:
        return await plugin.write(records, len(records), [0] * len(records), metas) or []
    finally:
        await plugin.stop()


def _rows(server: PostgresServer, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in server.fetch(sql)]


def _file_source(tmp_path: Path, records: list[Any], offramps: str, links: str, port: int | None = None, extra: str = "") -> Path:
    (tmp_path / "in.ndjson").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: {f'"127.0.0.1:{port}"' if port else 'null'}}}{extra}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}}}
offramps:
{offramps}
links: {links}
""")
    return cfg


# -- what the table holds ------------------------------------------------------------------------

def test_the_table_holds_what_was_sent_with_its_types(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("""CREATE TABLE typed (id bigint PRIMARY KEY, name text, amount numeric(12, 2), at timestamptz, tags text[],
                      doc jsonb, ok boolean, big numeric, serial_no serial, created timestamptz NOT NULL DEFAULT now())""")
    tricky = 'tab\there, line\nbreak, back\\slash, "quotes", \\N, r\u00e9sum\u00e9 \U0001f600'
    records = [
        {"id": 1, "name": tricky, "amount": 12.5, "at": "2026-12-04T10:00:00Z", "tags": ["a", "b,c", 'd"e', "f\\g", None],
         "doc": {"nested": [1, 2, {"x": None}], "s": "t\tu"}, "ok": True, "big": 123456789012345678901234567890, "unknown_field": 1},
        {"id": 2, "name": None, "amount": 0, "tags": [], "doc": "just a string", "ok": False},  # at: absent -> its default (NULL)
        {"id": 3, "name": "", "amount": -1.25, "at": "2026-01-01 00:00:00+02", "doc": None},
    ]
    cfg = _file_source(tmp_path, records, f'  out: {{type: postgres, codec: json, config: {{dsn: "{server.dsn_with("PG_PASSWORD")}", table: typed}}}}',
                       "{src: [out]}")  # fmt: skip
    d = Daemon(cfg, env=ENV)
    try:
        d.wait_for(lambda: server.fetch("SELECT count(*) FROM typed")[0][0] == 3, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    got = _rows(server, "SELECT * FROM typed ORDER BY id")
    assert [r.pop("created") is not None for r in got] == [True] * 3, "a column with no field takes its DEFAULT"
    assert [r.pop("serial_no") for r in got] == [1, 2, 3]
    for r in got:
        r["doc"] = json.loads(r["doc"]) if r["doc"] is not None else None  # jsonb keeps its own key order
    assert got == [
        {"id": 1, "name": tricky, "amount": Decimal("12.50"), "at": dt.datetime(2026, 12, 4, 10, tzinfo=dt.UTC),
         "tags": ["a", "b,c", 'd"e', "f\\g", None], "doc": {"nested": [1, 2, {"x": None}], "s": "t\tu"}, "ok": True,
         "big": Decimal(123456789012345678901234567890)},
        {"id": 2, "name": None, "amount": Decimal("0.00"), "at": None, "tags": [], "doc": "just a string", "ok": False, "big": None},
        {"id": 3, "name": "", "amount": Decimal("-1.25"), "at": dt.datetime(2025, 12, 31, 22, tzinfo=dt.UTC), "tags": None,
         "doc": None, "ok": None, "big": None},
    ]  # fmt: skip


def test_columns_map_fields_nested_fields_and_meta(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("CREATE TABLE mapped (id int PRIMARY KEY, customer text, total numeric, source text, note text DEFAULT 'none')")
    plugin = _plugin(server, tmp_path, table="mapped", columns={"id": "order.id", "customer": "order.customer.name", "total": "total",
                                                                "source": "$origin", "note": "note"})  # fmt: skip
    records = [b'{"order":{"id":1,"customer":{"name":"ann"}},"total":9.5,"note":null}',
               b'{"order":{"id":2},"total":1}',
               b'{"order":{"id":3,"customer":"not an object"},"total":"2.5","note":"n"}']  # fmt: skip
    metas = [{"origin": "web"}, {"origin": b"app"}, {}]
    assert asyncio.run(_written(plugin, records, metas)) == []
    assert _rows(server, "SELECT * FROM mapped ORDER BY id") == [
        {"id": 1, "customer": "ann", "total": Decimal("9.5"), "source": "web", "note": None},  # null -> NULL
        {"id": 2, "customer": None, "total": Decimal(1), "source": "app", "note": "none"},  # absent -> DEFAULT
        {"id": 3, "customer": None, "total": Decimal("2.5"), "source": None, "note": "n"},
    ]
    listed = _plugin(server, tmp_path, table="mapped", columns=["id", "total"])
    assert asyncio.run(_written(listed, [b'{"id":4,"total":3,"customer":"left out"}'])) == []
    assert _rows(server, "SELECT customer, total FROM mapped WHERE id = 4") == [{"customer": None, "total": Decimal(3)}]
    # with_meta: true makes each record {event, meta}: dead letters into a table, the event whole and the reason
    server.execute("CREATE TABLE dead (payload jsonb, reason text)")
    letters = _plugin(server, tmp_path, table="dead", columns={"payload": "event", "reason": "meta.error.message"})
    assert asyncio.run(_written(letters, [b'{"event":{"id":1,"x":[2]},"meta":{"error":{"message":"boom","stage":"s"}}}'])) == []
    assert _rows(server, "SELECT payload::text, reason FROM dead") == [{"payload": '{"x": [2], "id": 1}', "reason": "boom"}]


def test_on_conflict_update_and_nothing_make_redelivery_idempotent(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("CREATE TABLE upserts (id int PRIMARY KEY, v text); CREATE TABLE kept (k text, n int, v text, UNIQUE (k, n))")
    up = _plugin(server, tmp_path, table="upserts", on_conflict="update")
    first = [b'{"id":%d,"v":"a%d"}' % (i, i) for i in range(100)]
    assert asyncio.run(_written(up, first)) == []
    # the same keys again, some twice in one write: the last one wins, as if written one by one
    again = [b'{"id":%d,"v":"b%d"}' % (i, i) for i in range(50)] + [b'{"id":7,"v":"c7"}', b'{"id":200,"v":"new"}']
    assert asyncio.run(_written(up, again)) == []
    got = {r["id"]: r["v"] for r in _rows(server, "SELECT * FROM upserts")}
    assert len(got) == 101 and got[7] == "c7" and got[8] == "b8" and got[60] == "a60" and got[200] == "new"
    keep = _plugin(server, tmp_path, table="kept", on_conflict="nothing", conflict_columns=["k", "n"])
    assert asyncio.run(_written(keep, [b'{"k":"x","n":1,"v":"first"}', b'{"k":"x","n":1,"v":"second"}', b'{"k":"x","n":2,"v":"other"}'])) == []
    assert asyncio.run(_written(keep, [b'{"k":"x","n":1,"v":"third"}'])) == []
    assert _rows(server, "SELECT * FROM kept ORDER BY n") == [{"k": "x", "n": 1, "v": "first"}, {"k": "x", "n": 2, "v": "other"}]


# -- refused rows ------------------------------------------------------------------------------

BAD = {  # position in the batch -> (record, the SQLSTATE or text its reason holds)
    5: ('{"id": 5, "n": "five"}', "SQLSTATE 22P02: invalid input syntax for type integer"),
    40: ('{"id": 40, "n": -1}', "SQLSTATE 23514"),  # the check constraint
    41: ('{"id": 41, "n": 1, "u": 7}', "SQLSTATE 23505"),  # u 7 is in the table already (not the key of ON CONFLICT)
    97: ('{"id": 97, "n": 1, "name": null}', "SQLSTATE 23502"),  # NOT NULL
    120: ('[1, 2]', "a row is made from a JSON object, not list"),
    121: ('{"nothing": "matches"}', "none of the record's fields names a column"),
    199: ('{"id": 199, "n": 99999999999}', "SQLSTATE 22003"),  # out of range for integer
}


@pytest.mark.parametrize("method", ["copy", "insert"])
def test_a_refused_row_goes_to_err_with_its_reason_and_the_rest_of_its_batch_lands(tmp_path: Path, server: PostgresServer, method: str) -> None:
    table = f"refusing_{method}"
    server.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int CHECK (n >= 0), name text NOT NULL DEFAULT 'x', u int UNIQUE);"
                   f"INSERT INTO {table} VALUES (0, 0, 'there before', 7)")  # fmt: skip
    records = [BAD[i][0] if i in BAD else json.dumps({"id": i, "n": i}) for i in range(1, 200)]  # one batch (coalesced)
    conflict = ", on_conflict: nothing" if method == "insert" else ""  # the key: id, the primary key
    offramps = (f'  out: {{type: postgres, codec: json, config: {{dsn: "{server.dsn_with("PG_PASSWORD")}", table: {table}{conflict}}}}}\n'
                "  bad: {type: file, codec: json, with_meta: true, config: {path: err.ndjson}}")  # fmt: skip
    cfg = _file_source(tmp_path, records, offramps, "{src: [out], out/err: [bad]}")
    d = Daemon(cfg, env=ENV)
    try:
        d.wait_for(lambda: len(json_lines(tmp_path / "err.ndjson")) == len(BAD), timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    errs = json_lines(tmp_path / "err.ndjson")
    by_record = {json.dumps(e["event"]): e["meta"]["error"] for e in errs}
    want = {json.dumps(json.loads(r)): why for i, (r, why) in BAD.items()}
    assert set(by_record) == set(want), errs
    for record, why in want.items():
        assert why in by_record[record]["message"], (record, by_record[record])
        assert by_record[record]["stage"] == "out" and by_record[record]["type"] == "Rejected"
    ids = [r["id"] for r in _rows(server, f"SELECT id FROM {table} ORDER BY id")]
    assert ids == [0] + [i for i in range(1, 200) if i not in BAD], "the rest of the batch is written, once"


def test_many_refused_rows_in_one_write_are_each_found(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("CREATE TABLE sieve_copy (id int PRIMARY KEY, n int CHECK (n % 7 <> 3)); CREATE TABLE sieve_insert (LIKE sieve_copy INCLUDING ALL)")
    records = [b'{"id":%d,"n":%d}' % (i, i) for i in range(1000)]
    bad = {i for i in range(1000) if i % 7 == 3}
    for table, extra in (("sieve_copy", {}), ("sieve_insert", {"on_conflict": "nothing"})):
        rejected = asyncio.run(_written(_plugin(server, tmp_path, table=table, **extra), records))
        assert {i for i, _ in rejected} == bad and all("SQLSTATE 23514" in why for _, why in rejected)
        assert [r["id"] for r in _rows(server, f"SELECT id FROM {table} ORDER BY id")] == [i for i in range(1000) if i not in bad]


def test_values_a_column_cannot_hold_are_refused_with_the_reason(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("CREATE TABLE odd (id int, a int[], t text, b bytea, m text, k text); CREATE INDEX ON odd (k)")
    deep = "[" * 7 + "1" + "]" * 7
    records = [b'{"id":1,"a":%s}' % deep.encode(), b'{"id":2,"t":"nul\\u0000byte"}', b'{"id":3,"a":[[1,2],[3]]}', b'{"id":4,"a":"{5,6}"}',
               b'{"id":5,"b":"\\\\x00"}', b'{"id":6}', b'{"id":7,"a":%s}' % ("[" * 1000 + "]" * 1000).encode(),
               b'{"id":8,"k":"%s"}' % os.urandom(8000).hex().encode(), b"id=9 (a codec other than json)"]  # fmt: skip
    for method, extra in (("copy", {}), ("insert", {"on_conflict": "nothing"})):
        server.execute("TRUNCATE odd")
        plugin = _plugin(server, tmp_path, table="odd", columns={"id": "id", "a": "a", "t": "t", "b": "b", "m": "$m", "k": "k"}, **extra)
        metas = [{}, {}, {}, {}, {}, {"m": b"\xff not utf-8"}, {}, {}, {}]
        rejected = dict(asyncio.run(_written(plugin, records, metas)))
        assert sorted(rejected) == [0, 1, 2, 5, 6, 7, 8], (method, rejected)
        assert rejected[0] == rejected[6] == "an array nested deeper than the 6 dimensions PostgreSQL allows"
        assert rejected[1] == 'SQLSTATE 22021: invalid byte sequence for encoding "UTF8": 0x00'
        assert rejected[2].startswith("SQLSTATE 22P02: malformed array literal"), rejected[2]  # arrays must be rectangular
        assert rejected[5] == "bytes that are not UTF-8 text can only go to a bytea column"
        assert rejected[7].startswith("SQLSTATE 54000: index row "), rejected[7]  # a limit of the server, for this row only
        assert rejected[8].startswith("not JSON (the postgres offramp reads its records as JSON: codec: json)"), rejected[8]
        assert _rows(server, "SELECT id, a, b FROM odd ORDER BY id") == [{"id": 4, "a": [5, 6], "b": None},
                                                                        {"id": 5, "a": None, "b": b"\\x00"}], method  # fmt: skip


# -- bad settings, start-up --------------------------------------------------------------------

def test_settings_that_cannot_work_are_config_errors(tmp_path: Path) -> None:
    cases = {
        "config: {dsn: 'postgresql://u@h/db', table: t, conflict_columns: [id]}": "conflict_columns: is the key of on_conflict",
        "config: {dsn: 'postgresql://u@h/db', table: t, columns: {id: 'a..b'}}": "'a..b' is not a field",
        "config: {dsn: 'postgresql://u@h/db', table: t, columns: {id: $}}": "'$' is not a field",
        "config: {dsn: 'postgresql://u@h/db', table: t, on_conflict: replace}": "on_conflict",
        "config: {dsn: 'mysql://u@h/db', table: t}": "dsn",
        "postprocessors: [lines], config: {dsn: 'postgresql://u@h/db', table: t}": "writes rows, not framed bytes",
    }
    cfg = tmp_path / "c.yaml"
    for setting, message in cases.items():
        cfg.write_text(f"version: 1\nonramps: {{src: {{type: stdin}}}}\nofframps: {{out: {{type: postgres, {setting}}}}}\nlinks: {{src: [out]}}\n")
        with pytest.raises(ConfigError) as info:
            load_file(cfg, env={})
        assert message in str(info.value), (setting, str(info.value))


def test_a_wrong_password_a_missing_table_or_column_or_key_fail_the_start_clearly(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("CREATE TABLE present (id int PRIMARY KEY, v text, w text); CREATE TABLE keyless (v text)")

    async def start(plugin: PostgresOfframp) -> str:
        try:
            await asyncio.wait_for(plugin.start(), 10)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            await plugin.stop()
        return "started"

    wrong = PostgresOfframp(PostgresOfframpConfig(dsn=server.dsn.replace(PASSWORD, "wrong"), table="present"), PluginContext("pg", tmp_path))
    assert "password authentication failed" in asyncio.run(start(wrong))
    assert "table absent does not exist" in asyncio.run(start(_plugin(server, tmp_path, table="absent")))
    assert "has no column 'nope'" in asyncio.run(start(_plugin(server, tmp_path, table="present", columns={"nope": "x"})))
    assert "has no primary key" in asyncio.run(start(_plugin(server, tmp_path, table="keyless", on_conflict="update")))
    assert "no unique index or constraint on (v)" in asyncio.run(start(_plugin(server, tmp_path, table="present", on_conflict="nothing",
                                                                                conflict_columns=["v"])))  # fmt: skip
    assert asyncio.run(start(_plugin(server, tmp_path, table="public.present", on_conflict="update"))) == "started"
    password = PostgresOfframp(PostgresOfframpConfig(dsn=server.dsn.replace(f":{PASSWORD}", ""), password=PASSWORD, table="keyless"),
                               PluginContext("pg", tmp_path))  # fmt: skip
    assert asyncio.run(start(password)) == "started"


# -- failures ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_nothing_is_lost_while_the_server_is_down_for_10s(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("CREATE TABLE outage (id int NOT NULL, at timestamptz DEFAULT clock_timestamp())")  # COPY, no key: duplicates would show
    n = 20_000
    port = free_port()
    cfg = _file_source(tmp_path, [{"id": i} for i in range(2000)],
                       f'  out: {{type: postgres, codec: json, retry: {{max_backoff: 1s}}, config: {{dsn: "{server.dsn_with("PG_PASSWORD")}", table: outage}}}}',
                       "{src: [out]}", port)  # fmt: skip
    count = "SELECT count(*) FROM outage"
    d = Daemon(cfg, env=ENV)
    try:
        d.wait_for(lambda: server.fetch(count)[0][0] == 2000, timeout=30)
        server.stop()
        with open(tmp_path / "in.ndjson", "a") as f:  # more arrives while the server is down
            f.write("".join(json.dumps({"id": i}) + "\n" for i in range(2000, n)))
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="retrying"}') == 1, timeout=30)
        down = threading.Event()
        threading.Timer(10.0, down.set).start()
        d.wait_for(down.is_set, timeout=20)  # the server stays down 10 s
        assert metric(port, 'headrace_offramp_state{offramp="out",state="retrying"}') == 1
        server.start()
        d.wait_for(lambda: server.fetch(count)[0][0] >= n, timeout=60)
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="ok"}') == 1, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    ids = [r["id"] for r in _rows(server, "SELECT id FROM outage")]
    assert sorted(set(ids)) == list(range(n)), "the table holds every record"
    assert len(ids) - n <= 4096, "duplicates: at most one write's worth (a COPY committed as the server went away)"
    assert "retrying in" in d.stderr()


@pytest.mark.slow
def test_a_sigkill_in_the_middle_of_50000_loses_nothing_and_upserts_leave_each_row_once(tmp_path: Path, server: PostgresServer) -> None:
    # a slow table (each statement takes 0.1 s more), so that the kill finds a write in flight however fast the machine
    server.execute("CREATE TABLE killed (id int PRIMARY KEY, v text NOT NULL);"
                   "CREATE FUNCTION slowly() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.1); RETURN NULL; END $$;"
                   "CREATE TRIGGER slowly AFTER INSERT ON killed FOR EACH STATEMENT EXECUTE FUNCTION slowly()")  # fmt: skip
    n = 50_000
    offramp = f'  out: {{type: postgres, codec: json, config: {{dsn: "{server.dsn_with("PG_PASSWORD")}", table: killed, on_conflict: update}}}}'
    cfg = _file_source(tmp_path, [{"id": i, "v": f"v{i}"} for i in range(n)], offramp, "{src: [out]}",
                       extra=", state_dir: state")  # the file onramp's checkpoint: resumes near where it was  # fmt: skip
    count = "SELECT count(*) FROM killed"
    d = Daemon(cfg, env=ENV)
    try:
        d.wait_for(lambda: server.fetch(count)[0][0] >= n // 4, timeout=60, interval=0.01)
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        d.stop()
    assert server.fetch(count)[0][0] < n, "killed in the middle"
    d = Daemon(cfg, env=ENV)
    try:
        d.wait_for(lambda: server.fetch(count)[0][0] == n, timeout=60)
    finally:
        assert d.stop() == 0, d.stderr()
    rows = server.fetch("SELECT id, v FROM killed ORDER BY id")
    assert [(r["id"], r["v"]) for r in rows] == [(i, f"v{i}") for i in range(n)], "every record, each row once"


def test_a_connection_the_server_ended_is_replaced_at_the_next_write(tmp_path: Path, server: PostgresServer) -> None:
    server.execute("CREATE TABLE severed (id int)")

    async def run() -> None:
        plugin = _plugin(server, tmp_path, table="severed")
        await plugin.start()
        try:
            assert await plugin.write([b'{"id":1}'], 1, [0], None) is None
            ended = await server.afetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'headrace pg'")
            assert [r[0] for r in ended] == [True]
            await asyncio.sleep(0.1)  # the client reads the server's goodbye
            assert await plugin.write([b'{"id":2}'], 1, [0], None) is None
        finally:
            await plugin.stop()

    asyncio.run(run())
    assert sorted(r["id"] for r in _rows(server, "SELECT id FROM severed")) == [1, 2]


# -- the example ---------------------------------------------------------------------------------

def test_the_example_config_runs(tmp_path: Path, server: PostgresServer) -> None:
    """examples/postgres.yaml, as written (copied so that what it writes stays in the test's folder)."""
    server.execute("CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric(12, 2) NOT NULL CHECK (total >= 0),"
                   " items jsonb, received timestamptz NOT NULL DEFAULT now())")  # fmt: skip
    cfg = tmp_path / "postgres.yaml"
    shutil.copy(ROOT / "examples" / "postgres.yaml", cfg)
    port = free_port()
    env = {"PG_PASSWORD": PASSWORD, "PG_USER": USER, "PG_PORT": str(server.port), "PG_DATABASE": "postgres", "TCP_PORT": str(port),
           "HEADRACE_METRICS_PORT": str(free_port())}  # fmt: skip
    dead = tmp_path / "postgres" / "out" / "deadletter.ndjson"
    d = Daemon(cfg, env=env)
    try:
        with d.wait_for(lambda: _connected(port), timeout=30) as sock:
            sock.sendall(b'{"id": 1, "customer": "ann", "total": 20.5, "items": [{"sku": "a", "qty": 2}]}\n'
                         b'{"id": 2, "customer": "bob", "total": -3}\n'
                         b'{"id": 3, "customer": "cy", "total": 1, "test": true}\n'
                         b'not json\n')  # fmt: skip
        d.wait_for(lambda: len(json_lines(dead)) == 2 and server.fetch("SELECT count(*) FROM orders")[0][0] == 1, timeout=30)
        first = server.fetch("SELECT received FROM orders")[0][0]
        with _connected(port) as sock:  # the same order again, changed: upserted
            sock.sendall(b'{"id": 1, "customer": "ann", "total": 21.5, "items": []}\n')
        d.wait_for(lambda: server.fetch("SELECT total FROM orders WHERE id = 1")[0][0] == Decimal("21.50"), timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    assert _rows(server, "SELECT id, customer, items, received FROM orders") == [{"id": 1, "customer": "ann", "items": "[]", "received": first}]
    reasons = sorted(e["meta"]["error"]["message"] for e in json_lines(dead))[::-1]
    assert "invalid JSON" in reasons[0] and "SQLSTATE 23514" in reasons[1] and "orders_total_check" in reasons[1], reasons


def _connected(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None
