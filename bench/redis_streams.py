"""Redis benchmarks against a real redis-server, each beside a bare redis-py loop in the same run
(issue 18 names no target: the closing note discusses a connector below 0.8x its bare loop)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.redis import RedisServer

N = 300_000
BATCH = 512


def _fill(server: RedisServer, stream: str, n: int) -> None:
    recs = records()
    r = server.client()
    for start in range(0, n, 10_000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + 10_000, n)):
            pipe.xadd(stream, {b"data": recs[i % len(recs)]})
        pipe.execute()


async def _bare_read(url: str, stream: str, group: str, n: int) -> float:
    """XREADGROUP -> orjson.loads each -> XACK per batch; events/s."""
    import orjson
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    await r.xgroup_create(stream, group, id="0")
    done = 0
    t0 = time.perf_counter()
    while done < n:
        got = await r.xreadgroup(group, "bare", {stream: ">"}, count=BATCH, block=1000)
        if not got:
            break
        entries = got[0][1]
        for _i, fields in entries:
            orjson.loads(fields[b"data"])
        await r.xack(stream, group, *[i for i, _ in entries])
        done += len(entries)
    rate = done / (time.perf_counter() - t0)
    await r.aclose()
    return rate


async def _bare_write(url: str, key: str, secs: float) -> float:
    """Pipelines of XADD, BATCH records each, one at a time; events/s."""
    import redis.asyncio as aioredis

    recs = records()
    r = aioredis.Redis.from_url(url)
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        async with r.pipeline(transaction=False) as pipe:
            for k in range(BATCH):
                pipe.xadd(key, {b"data": recs[(done + k) % len(recs)]})
            await pipe.execute()
        done += BATCH
    rate = done / (time.perf_counter() - t0)
    await r.aclose()
    return rate


def redis_benches() -> list[str]:
    out: list[str] = []
    folder = tmpdir()
    server = RedisServer(folder / "redis")
    try:
        _fill(server, "in", N)
        bare = asyncio.run(_bare_read(server.url, "in", "bare", N))
        r = server.client()
        seen: dict[str, Any] = {}

        def drained() -> bool:  # the daemon's group has read and acknowledged everything
            groups = {g["name"].decode(): g for g in r.xinfo_groups("in")}
            g = groups.get("hr")
            if g is None:
                return False
            if "t0" not in seen:
                seen["t0"] = time.perf_counter()
            return bool((g["entries-read"] or 0) >= N and g["pending"] == 0)

        cfg = f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: null}}}}
onramps: {{src: {{type: redis, codec: json, config: {{url: "{server.url}", streams: [in], group: hr, consumer: c, block: 100ms}}}}}}
offramps: {{out: {{type: blackhole, codec: json, config: {{warmup_secs: 0, stop_after_secs: 600, stop_daemon: false}}}}}}
links: {{src: [out]}}
"""
        run_daemon_async(cfg, folder, drained)
        ours = N / (time.perf_counter() - seen["t0"])
        out.append(f"  baseline: bare redis-py loop XREADGROUP {BATCH} -> orjson.loads -> XACK: {bare:,.0f} events/s ({N:,} entries of ~640 B)")
        out.append(line("R1. Redis stream -> blackhole (onramp)", f"{ours:,.0f} events/s = {ours / bare:.2f}x bare", "- (>=0.8x noted)", True))
        bare_w = asyncio.run(_bare_write(server.url, "bare-out", 3.0))
        marks: list[tuple[float, int]] = []

        def measured() -> bool:
            marks.append((time.perf_counter(), int(r.xlen("out"))))
            started = [m for m in marks if m[1] > 0]
            return len(started) >= 2 and started[-1][0] - started[0][0] >= 3.0

        cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: blaster, codec: json, config: {{source: {folder / "data.ndjson"}}}}}}}
offramps: {{out: {{type: redis, codec: json, config: {{url: "{server.url}", key: out}}}}}}
links: {{src: [out]}}
"""
        (folder / "data.ndjson").write_bytes(b"\n".join(records()) + b"\n")
        run_daemon_async(cfg, folder, measured)
        started = [m for m in marks if m[1] > 0]
        ours_w = (started[-1][1] - started[0][1]) / (started[-1][0] - started[0][0])
        out.append(f"  baseline: bare redis-py loop, pipelines of {BATCH} XADD one at a time: {bare_w:,.0f} events/s")
        out.append(line("R2. blaster -> Redis stream (offramp)", f"{ours_w:,.0f} events/s = {ours_w / bare_w:.2f}x bare", "- (>=0.8x noted)", True))
    finally:
        server.stop()
    return out
