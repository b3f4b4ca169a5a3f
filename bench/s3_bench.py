"""S3 offramp benchmark against a real S3 API server (moto in server mode), beside a bare
aiobotocore loop in the same run that does the same work: records joined a line each into
objects of ``OBJECT_BYTES``, gzip'd, uploaded with ``PutObject`` several at once (issue 18 names
no target: the closing note discusses a connector below 0.8x its bare loop).

moto keeps every object in memory and is itself Python: both sides are bound by it as much as
by the client, which is why the comparison is made in the same run against the same server.
"""

from __future__ import annotations

import asyncio
import time
import zlib

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.daemon import free_port, metric
from tests.support.s3 import KEY_ID, SECRET, MotoServer

N = 100_000
OBJECT_BYTES = 4_000_000


async def _bare(url: str, bucket: str, n: int) -> float:
    """events/s of a bare aiobotocore loop: join, gzip, PutObject (up to 8 in flight)."""
    from aiobotocore.session import get_session

    recs = records()
    async with get_session().create_client("s3", region_name="us-east-1", endpoint_url=url, aws_access_key_id=KEY_ID,
                                           aws_secret_access_key=SECRET) as client:  # fmt: skip
        slots = asyncio.Semaphore(8)
        tasks: list[asyncio.Task[None]] = []

        async def put(key: str, body: bytes) -> None:
            try:
                await client.put_object(Bucket=bucket, Key=key, Body=body, ContentEncoding="gzip")
            finally:
                slots.release()

        t0 = time.perf_counter()
        i = 0
        while i < n:
            size = 0
            part: list[bytes] = []
            while i < n and size < OBJECT_BYTES:
                r = recs[i % len(recs)]
                part.append(r)
                size += len(r)
                i += 1
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
            body = c.compress(b"\n".join(part) + b"\n") + c.flush()
            await slots.acquire()
            tasks.append(asyncio.create_task(put(f"bare/{i}.gz", body)))
        await asyncio.gather(*tasks)
        return n / (time.perf_counter() - t0)


def s3_benches(n: int = N) -> list[str]:
    out: list[str] = []
    folder = tmpdir()
    server = MotoServer(folder / "moto")
    try:
        server.bucket("bench-bare")
        server.bucket("bench-hr")
        bare = asyncio.run(_bare(server.url, "bench-bare", n))
        recs = records()
        (folder / "in.ndjson").write_bytes(b"".join(recs[i % len(recs)] + b"\n" for i in range(n)))
        port = free_port()
        seen: dict[str, float] = {}

        def uploaded() -> bool:
            if "t0" not in seen and metric(port, 'headrace_component_received_events_total{component_id="out",component_kind="offramp"}', 0):
                seen["t0"] = time.perf_counter()
            done = metric(port, 'headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}', 0) >= n
            if done:
                seen["t1"] = time.perf_counter()
            return done

        cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true}}}}}}
offramps:
  out: {{type: s3, codec: json, config: {{bucket: bench-hr, endpoint_url: "{server.url}", force_path_style: true, access_key_id: {KEY_ID},
                                        secret_access_key: {SECRET}, key: "hr/{{uuid}}.gz", batch: {{max_bytes: {OBJECT_BYTES}, timeout: 500ms}}}}}}
links: {{src: [out]}}
"""
        t_start = time.perf_counter()
        run_daemon_async(cfg, folder, uploaded)
        ours = n / (seen.get("t1", time.perf_counter()) - seen.get("t0", t_start))
        out.append(f"  baseline: bare aiobotocore loop: {n:,} records (~640 B) a line each, gzip'd into {OBJECT_BYTES / 1e6:g} MB objects, "
                   f"PutObject up to 8 at once (moto): {bare:,.0f} events/s")  # fmt: skip
        out.append(line("S1. file -> S3 gzip objects (offramp)", f"{ours:,.0f} events/s = {ours / bare:.2f}x bare", "- (>=0.8x noted)", True))
    finally:
        server.stop()
    return out
