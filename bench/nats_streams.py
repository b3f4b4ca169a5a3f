"""NATS JetStream benchmarks against a real nats-server -js, each beside a bare nats-py loop in the
same run (issue 18 names no target: the closing note discusses a connector below 0.8x its bare loop)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.nats import NatsServer

N = 200_000
BATCH = 256


async def _fill(url: str, stream: str, subject: str, n: int) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig

    recs = records()
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE))
    for start in range(0, n, 2000):
        await asyncio.gather(*(js.publish(subject, recs[i % len(recs)]) for i in range(start, min(start + 2000, n))))
    await nc.close()


async def _bare_read(url: str, stream: str, durable: str, n: int) -> float:
    """fetch BATCH -> orjson.loads each -> ack each; events/s."""
    import nats
    import orjson
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("", durable=durable, stream=stream, config=ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT))
    done = 0
    t0 = time.perf_counter()
    while done < n:
        msgs = await sub.fetch(BATCH, timeout=5)
        for m in msgs:
            orjson.loads(m.data)
            await m.ack()
        done += len(msgs)
    rate = done / (time.perf_counter() - t0)
    await nc.close()
    return rate


async def _bare_write(url: str, subject: str, secs: float) -> float:
    """BATCH acknowledged publishes in flight together, one batch at a time; events/s."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    recs = records()
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BAREOUT", subjects=[subject], storage=StorageType.FILE))
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        await asyncio.gather(*(js.publish(subject, recs[(done + k) % len(recs)]) for k in range(BATCH)))
        done += BATCH
    rate = done / (time.perf_counter() - t0)
    await nc.close()
    return rate


async def _consumer_done(url: str, stream: str, durable: str) -> tuple[int, int]:
    import nats

    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().consumer_info(stream, durable)
        return int(info.delivered.stream_seq), int(info.num_ack_pending)
    except Exception:
        return 0, 0
    finally:
        await nc.close()


async def _count(url: str, stream: str) -> int:
    import nats

    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except Exception:
        return 0
    finally:
        await nc.close()


def nats_benches() -> list[str]:
    out: list[str] = []
    folder = tmpdir()
    server = NatsServer(folder / "nats")
    try:
        asyncio.run(_fill(server.url, "IN", "in", N))
        bare = asyncio.run(_bare_read(server.url, "IN", "bare", N))
        seen: dict[str, Any] = {}

        def drained() -> bool:
            delivered, pending = asyncio.run(_consumer_done(server.url, "IN", "hr"))
            if delivered and "t0" not in seen:
                seen["t0"] = time.perf_counter()
            return delivered >= N and pending == 0

        cfg = f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: null}}}}
onramps: {{src: {{type: nats, codec: json, config: {{servers: ["{server.url}"], stream: IN, durable: hr}}}}}}
offramps: {{out: {{type: blackhole, codec: json, config: {{warmup_secs: 0, stop_after_secs: 600, stop_daemon: false}}}}}}
links: {{src: [out]}}
"""
        run_daemon_async(cfg, folder, drained)
        ours = N / (time.perf_counter() - seen["t0"])
        out.append(f"  baseline: bare nats-py loop, fetch {BATCH} -> orjson.loads -> ack each: {bare:,.0f} events/s ({N:,} messages of ~640 B)")
        out.append(line("N1. NATS JetStream -> blackhole (onramp)", f"{ours:,.0f} events/s = {ours / bare:.2f}x bare", "- (>=0.8x noted)", True))
        bare_w = asyncio.run(_bare_write(server.url, "bareout", 3.0))
        marks: list[tuple[float, int]] = []

        def measured() -> bool:
            marks.append((time.perf_counter(), asyncio.run(_count(server.url, "OUT"))))
            started = [m for m in marks if m[1] > 0]
            return len(started) >= 2 and started[-1][0] - started[0][0] >= 3.0

        async def make_out() -> None:
            import nats
            from nats.js.api import StorageType, StreamConfig

            nc = await nats.connect(server.url)
            await nc.jetstream().add_stream(StreamConfig(name="OUT", subjects=["out"], storage=StorageType.FILE))
            await nc.close()

        asyncio.run(make_out())
        (folder / "data.ndjson").write_bytes(b"\n".join(records()) + b"\n")
        cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: blaster, codec: json, config: {{source: {folder / "data.ndjson"}}}}}}}
offramps: {{out: {{type: nats, codec: json, config: {{servers: ["{server.url}"], subject: out}}}}}}
links: {{src: [out]}}
"""
        run_daemon_async(cfg, folder, measured)
        started = [m for m in marks if m[1] > 0]
        ours_w = (started[-1][1] - started[0][1]) / (started[-1][0] - started[0][0])
        out.append(f"  baseline: bare nats-py loop, {BATCH} acknowledged publishes in flight together: {bare_w:,.0f} events/s")
        out.append(line("N2. blaster -> NATS JetStream (offramp)", f"{ours_w:,.0f} events/s = {ours_w / bare_w:.2f}x bare", "- (>=0.8x noted)", True))
    finally:
        server.stop()
    return out
