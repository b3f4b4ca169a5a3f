"""Kafka benchmarks against the real broker (tansu), each with a baseline in the same run."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.daemon import free_port
from tests.support.kafka_broker import KafkaBroker

N = 200_000


def _fill(broker: KafkaBroker, topic: str, n: int) -> None:
    recs = records()
    batch = 10_000
    for start in range(0, n, batch):
        broker.produce(topic, [(None, recs[i % len(recs)]) for i in range(start, min(start + batch, n))])


async def _bare(broker: KafkaBroker, src: str, dst: str, n: int, stage: Any = None) -> float:
    """A bare aiokafka loop: getmany -> (stage) -> send_batch; events/s."""
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024,
                                max_request_size=4 << 20)  # fmt: skip
    await consumer.start()
    await producer.start()
    parts = [TopicPartition(src, p) for p in sorted(consumer.partitions_for_topic(src) or [])]
    consumer.assign(parts)
    await consumer.seek_to_beginning(*parts)
    out_parts = sorted(await producer.partitions_for(dst))
    done = 0
    t0 = time.perf_counter()
    rr = 0
    while done < n:
        data = await consumer.getmany(timeout_ms=500, max_records=500)
        futures = []
        for _tp, msgs in data.items():
            batch = producer.create_batch()
            part = out_parts[rr % len(out_parts)]
            rr += 1
            for m in msgs:
                value = m.value
                if stage is not None:
                    value = orjson.dumps(stage(orjson.loads(value), {}))
                if batch.append(key=None, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, dst, partition=part))
                    batch = producer.create_batch()
                    batch.append(key=None, value=value, timestamp=None)
            futures.append(await producer.send_batch(batch, dst, partition=part))
            done += len(msgs)
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - t0
    await consumer.stop()
    await producer.stop()
    return n / elapsed


def _headrace_rate(broker: KafkaBroker, src: str, dst: str, n: int, folder: Path, pipeline: str | None, workers: int) -> float:
    port = free_port()
    cfg = f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{in: {{type: kafka, codec: json, config: {{brokers: "{broker.bootstrap}", topics: [{src}], group_id: bench-{src}, session_timeout: 2s, heartbeat_interval: 200ms}}}}}}
{"pipelines: {main: [" + pipeline + "]}" if pipeline else ""}
offramps: {{out: {{type: kafka, codec: json, config: {{brokers: "{broker.bootstrap}", topic: {dst}}}}}}}
links: {{{"in: [main], main: [out]" if pipeline else "in: [out]"}}}
"""
    samples: list[tuple[float, float]] = []

    def sent() -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return 0.0
        for ln in text.splitlines():
            if ln.startswith('headrace_component_sent_events_total{component_id="out"') and 'port="out"' in ln:
                return float(ln.rsplit(" ", 1)[1])
        return 0.0

    def watch() -> bool:
        v = sent()
        samples.append((time.perf_counter(), v))
        return v >= n

    run_daemon_async(cfg, folder, watch)
    # the rate between 10% and 90% of the records: start-up and group join left out
    lo = next(s for s in samples if s[1] >= 0.1 * n)
    hi = next(s for s in samples if s[1] >= 0.9 * n)
    return (hi[1] - lo[1]) / (hi[0] - lo[0])


def kafka_benches() -> list[str]:
    from bench import stages

    out = []
    with KafkaBroker() as broker:
        src = "bench-src"
        broker.create_topic(src, 4)
        _fill(broker, src, N)
        broker.create_topic("bench-bare", 4)
        bare = asyncio.run(_bare(broker, src, "bench-bare", N))
        broker.create_topic("bench-hr", 4)
        hr = _headrace_rate(broker, src, "bench-hr", N, tmpdir(), None, 2)
        out.append(f"  baseline: bare aiokafka getmany/send_batch loop: {bare:,.0f} events/s")
        out.append(line("6. Kafka -> Kafka passthrough", f"{hr:,.0f} events/s = {hr / bare:.2f}x bare", ">=0.8x", hr / bare >= 0.8))
        n_cpu = 20_000
        broker.create_topic("bench-cpu-src", 4)
        _fill(broker, "bench-cpu-src", n_cpu)
        broker.create_topic("bench-cpu-bare", 4)
        bare_cpu = asyncio.run(_bare(broker, "bench-cpu-src", "bench-cpu-bare", n_cpu, stages.burn_200us))
        broker.create_topic("bench-cpu-hr", 4)
        hr_cpu = _headrace_rate(broker, "bench-cpu-src", "bench-cpu-hr", n_cpu, tmpdir(), '{op: python, fn: "bench.stages:burn_200us"}', 2)
        out.append(f"  baseline: bare single-process loop with the 200 us stage: {bare_cpu:,.0f} events/s")
        out.append(line("7. Kafka -> 200 us/event stage on 2 workers -> Kafka", f"{hr_cpu:,.0f} events/s = {hr_cpu / bare_cpu:.2f}x bare",
                        ">=1.7x", hr_cpu / bare_cpu >= 1.7))  # fmt: skip
    return out

