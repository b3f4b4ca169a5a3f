"""AMQP 0-9-1 benchmarks against a real RabbitMQ, each beside bare aio-pika loops in the same run
(issue 18 names no target: the closing note discusses a connector below 0.8x its bare loop).

Two bare loops each way: aio-pika's own API (``queue.consume`` / ``exchange.publish``) and aio-pika's
channel underneath (what the connectors use: the delivered messages as they come, publishes not
awaited one by one); the ratio is taken against the faster."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.daemon import free_port, metric
from tests.support.rabbitmq import RabbitMQ, preload

N = 50_000
BATCH = 1024  # publishes in flight together (the offramp's writes join up to this many)
ACK_EVERY = 512  # the bare readers acknowledge with `multiple` once per this many (the onramp: once per hand-over)


def _fill(broker: RabbitMQ, queue: str, n: int) -> None:
    recs = records()
    preload(broker.port, queue, [recs[i % len(recs)] for i in range(n)])


async def _bare_read(url: str, queue: str, n: int, underlay: bool) -> float:
    """consume -> orjson.loads each -> one multiple ack per ACK_EVERY; events/s."""
    import aio_pika
    import orjson

    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=8192)
    q = await ch.declare_queue(queue, durable=True, passive=True)
    got = [0]
    done = asyncio.Event()
    raw = await ch.get_underlay_channel()

    async def take(m: Any) -> None:
        orjson.loads(m.body)
        got[0] += 1
        if got[0] % ACK_EVERY == 0 or got[0] == n:
            await raw.basic_ack(m.delivery_tag, multiple=True)
        if got[0] == n:
            done.set()

    t0 = time.perf_counter()
    if underlay:
        await raw.basic_consume(queue, take)
    else:
        await q.consume(take)
    await asyncio.wait_for(done.wait(), 600)
    rate = n / (time.perf_counter() - t0)
    await conn.close()
    return rate


async def _bare_write(url: str, queue: str, secs: float, underlay: bool) -> float:
    """BATCH persistent, confirmed publishes in flight together, one batch at a time; events/s."""
    import aio_pika
    from pamqp.commands import Basic

    recs = records()
    conn = await aio_pika.connect(url)
    ch = await conn.channel(publisher_confirms=True)
    await ch.declare_queue(queue, durable=True)
    raw = await ch.get_underlay_channel()
    done = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < secs:
        batch = [recs[(done + k) % len(recs)] for k in range(BATCH)]
        if underlay:
            await asyncio.gather(*(raw.basic_publish(b, routing_key=queue, properties=Basic.Properties(delivery_mode=2), wait=False) for b in batch))
        else:
            await asyncio.gather(*(ch.default_exchange.publish(aio_pika.Message(b, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), queue)
                                   for b in batch))  # fmt: skip
        done += BATCH
    rate = done / (time.perf_counter() - t0)
    await conn.close()
    return rate


async def _count(url: str, queue: str) -> int:
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        q = await (await conn.channel()).declare_queue(queue, durable=True, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


def amqp_benches() -> list[str]:
    out: list[str] = []
    folder = tmpdir()
    broker = RabbitMQ(folder / "rabbitmq")
    try:
        bare: dict[str, float] = {}
        for underlay in (False, True):
            _fill(broker, f"bare-{underlay}", N)
            bare[f"read-{underlay}"] = asyncio.run(_bare_read(broker.url, f"bare-{underlay}", N, underlay))
        _fill(broker, "in", N)
        port = free_port()
        seen: dict[str, float] = {}

        def drained() -> bool:
            got = metric(port, 'headrace_component_received_events_total{component_id="out",component_kind="offramp"}', 0)
            if got and "t0" not in seen:
                seen["t0"] = time.perf_counter()
            return got >= N

        cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: amqp, codec: json, config: {{url: "{broker.url}", queue: in}}}}}}
offramps: {{out: {{type: blackhole, codec: json, config: {{warmup_secs: 0, stop_after_secs: 600, stop_daemon: false}}}}}}
links: {{src: [out]}}
"""
        t_start = time.perf_counter()
        run_daemon_async(cfg, folder, drained)
        ours = N / (time.perf_counter() - seen.get("t0", t_start))
        best = max(bare["read-False"], bare["read-True"])
        out.append(f"  baseline: bare aio-pika reading {N:,} queued messages (~640 B), orjson.loads, a multiple ack per {ACK_EVERY}: "
                   f"queue.consume {bare['read-False']:,.0f} events/s, the channel underneath {bare['read-True']:,.0f} events/s")  # fmt: skip
        out.append(line("Q1. AMQP queue -> blackhole (onramp)", f"{ours:,.0f} events/s = {ours / best:.2f}x bare", "- (>=0.8x noted)", True))
        for underlay in (False, True):
            bare[f"write-{underlay}"] = asyncio.run(_bare_write(broker.url, f"bareout-{underlay}", 3.0, underlay))
        marks: list[tuple[float, int]] = []

        def measured() -> bool:
            marks.append((time.perf_counter(), asyncio.run(_count(broker.url, "out"))))
            started = [m for m in marks if m[1] > 0]
            return len(started) >= 2 and started[-1][0] - started[0][0] >= 3.0

        (folder / "data.ndjson").write_bytes(b"\n".join(records()) + b"\n")
        preload(broker.port, "out", [])  # the queue the offramp's messages are routed to
        cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: blaster, codec: json, config: {{source: {folder / "data.ndjson"}}}}}}}
offramps: {{out: {{type: amqp, codec: json, config: {{url: "{broker.url}", routing_key: out}}}}}}
links: {{src: [out]}}
"""
        run_daemon_async(cfg, folder, measured)
        started = [m for m in marks if m[1] > 0]
        ours_w = (started[-1][1] - started[0][1]) / (started[-1][0] - started[0][0])
        best_w = max(bare["write-False"], bare["write-True"])
        out.append(f"  baseline: bare aio-pika publishing persistent messages with confirms, {BATCH} in flight together: "
                   f"exchange.publish {bare['write-False']:,.0f} events/s, the channel underneath {bare['write-True']:,.0f} events/s")  # fmt: skip
        out.append(line("Q2. blaster -> AMQP publisher confirms (offramp)", f"{ours_w:,.0f} events/s = {ours_w / best_w:.2f}x bare", "- (>=0.8x noted)",
                        True))  # fmt: skip
    finally:
        broker.stop()
    return out
