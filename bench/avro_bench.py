"""Avro decode throughput: wire-format records (a schema registry's id, fetched once) decoded on
2 workers, beside a bare fastavro loop in the same run (issue 18 names no target)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import fastavro
import orjson

from bench.common import line, run_daemon, tmpdir
from tests.support.schema_registry import FakeRegistry

SCHEMA = {"type": "record", "name": "Order", "namespace": "shop", "fields": [
    {"name": "id", "type": "long"}, {"name": "customer", "type": "string"}, {"name": "amount", "type": "double"},
    {"name": "tags", "type": {"type": "array", "items": "string"}}, {"name": "note", "type": ["null", "string"], "default": None},
    {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line", "fields": [
        {"name": "sku", "type": "string"}, {"name": "qty", "type": "int"}]}}},
]}  # fmt: skip
SECS = 5.0


def _records(sid: int, n: int = 2000) -> list[bytes]:
    """Wire-format records the blaster can carry (no newline byte in them)."""
    parsed = fastavro.parse_schema(SCHEMA)
    out = []
    i = 0
    while len(out) < n:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, {"id": i, "customer": f"customer-{i % 97}", "amount": i * 0.25, "tags": ["a", "b"][: i % 3],
                                                 "note": None if i % 2 else "gift", "lines": [{"sku": f"sku-{k}", "qty": k} for k in range(i % 4)]})  # fmt: skip
        rec = b"\x00" + sid.to_bytes(4, "big") + buf.getvalue()
        if b"\n" not in rec and not rec.endswith(b"\r"):
            out.append(rec)
        i += 1
    return out


def _bare(records: list[bytes], secs: float = 3.0) -> float:
    """fastavro.schemaless_reader + orjson.dumps per record, one process; events/s."""
    parsed = fastavro.parse_schema(SCHEMA)
    reader, dumps = fastavro.schemaless_reader, orjson.dumps
    n = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < secs:
        for r in records:
            buf = io.BytesIO(r)
            buf.seek(5)
            dumps(reader(buf, parsed, None))
        n += len(records)
    return n / elapsed


def avro_benches() -> list[str]:
    reg = FakeRegistry().start()
    try:
        sid = reg.add(json.dumps(SCHEMA))
        records = _records(sid)
        folder = tmpdir()
        Path(folder / "orders.avro-lines").write_bytes(b"\n".join(records) + b"\n")
        before = _bare(records)
        cfg = f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: null}}}}
onramps: {{src: {{type: blaster, codec: {{name: avro, registry: {{url: "{reg.url}"}}}}, config: {{source: orders.avro-lines}}}}}}
pipelines: {{main: [{{op: python, fn: "bench.stages:read_only"}}]}}
offramps: {{sink: {{type: blackhole, codec: json, config: {{warmup_secs: 2, stop_after_secs: {SECS}, report: report.json}}}}}}
links: {{src: [main], main: [sink]}}
"""
        r = run_daemon(cfg, folder)
        after = _bare(records)
        bare = (before + after) / 2
        ours = r["events_per_s"]
        fetched = reg.count("GET /schemas/ids/")
        return [
            f"  baseline: bare single-process fastavro schemaless_reader + orjson.dumps loop: {before:,.0f} events/s before, {after:,.0f} after",
            line("A1. Avro (registry wire format) -> 2 workers -> JSON", f"{ours:,.0f} events/s = {ours / bare:.2f}x bare ({fetched} fetch)",
                 "-", True),
        ]
    finally:
        reg.stop()
