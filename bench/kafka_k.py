"""Kafka benchmarks K1-K3: keyed records through a pipeline on 2 workers, against the best bare aiokafka loop.

Both sides read the same input topic of the same broker and write a fresh output topic; a consumer of
that output topic, in a process of its own, times them alike: the records between 10 % and 90 % of N
over the time between those points.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.daemon import scrape
from tests.support.kafka_broker import KafkaBroker, free_port

RUNS = 3  # each side's rate is the median of RUNS runs
N_K1 = 300_000  # ~10 s of headrace at ~30k records/s
N_CPU = 30_000  # K2, K3
PARTITIONS = 4
LINGER_MS = 5
BATCH_BYTES = 512 * 1024  # the offramp's default batch_bytes; the bare producer gets the same
MAX_REQUEST = 2_000_000  # what the offramp derives from its defaults (2 x max_message_bytes)
# records per getmany of the bare loop: the fastest for ~0 us; for 200 us a smaller one (as fast) keeps its output from coming in bursts
BARE_BATCH = 5000
BARE_BATCH_CPU = 500
WATCH_IDLE_S = 120.0  # the output consumer gives up after this long without a record

STAGE_FIELD = '{op: python, fn: "bench.stages:add_field"}'
STAGE_BURN = '{op: python, fn: "bench.stages:burn_200us"}'
STAGE_WAIT = '{op: python, fn: "bench.stages:wait_2ms", concurrency: 64}'


def _keyed_records(n: int) -> list[tuple[bytes, bytes]]:
    """(key, value): json-throughput records made unique by a leading ``seq``, keyed by ``application``."""
    recs = records()
    keys = [str(orjson.loads(r)["application"]).encode() for r in recs]
    return [(keys[i % len(recs)], b'{"seq":%d,' % i + recs[i % len(recs)][1:]) for i in range(n)]


def _partitioner(parts: list[int]) -> Callable[[bytes], int]:
    """Kafka's default partitioner for keyed records (murmur2 of the key), memoized per key."""
    from aiokafka.partitioner import murmur2

    memo: dict[bytes, int] = {}

    def part(key: bytes) -> int:
        p = memo.get(key)
        if p is None:
            p = memo[key] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p

    return part


async def _produce(bootstrap: str, topic: str, recs: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=LINGER_MS, max_batch_size=BATCH_BYTES,
                                max_request_size=MAX_REQUEST, enable_idempotence=False)  # fmt: skip
    await producer.start()
    try:
        part_of = _partitioner(sorted(await producer.partitions_for(topic)))
        futures = []
        batches: dict[int, Any] = {}
        for key, value in recs:
            p = part_of(key)
            batch = batches.get(p) or batches.setdefault(p, producer.create_batch())
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=p))
                batch = batches[p] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for p, batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _fill(broker: KafkaBroker, topic: str, n: int, partitions: int) -> None:
    broker.create_topic(topic, partitions)
    asyncio.run(_produce(broker.bootstrap, topic, _keyed_records(n)))


# --------------------------------------------------------------------------- the output consumer


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine spent not idle since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


async def _watch(bootstrap: str, topic: str, partitions: int, n: int, pid: Any, seen: Any, conn: Connection) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=50)  # fmt: skip
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        conn.send("ready")
        marks: list[tuple[float, int, float, float]] = []  # (time, count, CPU seconds of pid, of the machine) on crossing 10 % and 90 % of n
        count = keyed = 0
        last = time.perf_counter()
        while count < n:
            data = await consumer.getmany(timeout_ms=200, max_records=10_000)
            now = time.perf_counter()
            if not data:
                if now - last > WATCH_IDLE_S:
                    raise TimeoutError(f"{count} of {n} records on {topic}, then none for {WATCH_IDLE_S:.0f} s")
                continue
            last = now
            for msgs in data.values():
                count += len(msgs)
                keyed += sum(m.key is not None for m in msgs)
            seen.value = count
            while len(marks) < 2 and count >= n * (1 + 8 * len(marks)) // 10:
                marks.append((now, count, _cpu_s(pid.value), _machine_busy_s()))
        (t0, n0, c0, m0), (t1, n1, c1, m1) = marks
        return {"rate": (n1 - n0) / (t1 - t0), "cpu_us": (c1 - c0) * 1e6 / (n1 - n0), "machine_us": (m1 - m0) * 1e6 / (n1 - n0),
                "count": count, "keyed": keyed}  # fmt: skip
    finally:
        await consumer.stop()


def _watch_main(bootstrap: str, topic: str, partitions: int, n: int, pid: Any, seen: Any, conn: Connection) -> None:
    try:
        conn.send(asyncio.run(_watch(bootstrap, topic, partitions, n, pid, seen, conn)))
    except Exception as exc:
        conn.send(f"{type(exc).__name__}: {exc}")


class _Watcher:
    """The output topic's consumer in its own process; ``pid`` is the process whose CPU it samples."""

    def __init__(self, broker: KafkaBroker, topic: str, partitions: int, n: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pid = ctx.Value("i", 0)
        self.seen = ctx.Value("q", 0)  # records read so far
        self.conn, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=_watch_main, args=(broker.bootstrap, topic, partitions, n, self.pid, self.seen, child), daemon=True)
        self.proc.start()
        child.close()
        msg = self.conn.recv() if self.conn.poll(60) else "no answer in 60 s"
        if msg != "ready":
            self.close()
            raise RuntimeError(f"the output consumer did not start: {msg}")

    def done(self) -> bool:
        return self.conn.poll()

    def result(self, timeout: float = WATCH_IDLE_S + 10) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError("the output consumer did not report")
        res = self.conn.recv()
        if not isinstance(res, dict):
            raise RuntimeError(f"output consumer: {res}")
        if res["keyed"] != res["count"]:
            raise RuntimeError(f"{res['count'] - res['keyed']} of {res['count']} output records lost their key")
        return res

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join(10)
        self.conn.close()


# --------------------------------------------------------------------------- the two sides


@dataclass(frozen=True)
class _Bench:
    name: str
    src: str  # the input topic (filled beforehand)
    partitions: int  # of the input and of the output topic
    n: int
    stage: Callable[..., Any]  # what the bare loop runs
    pipeline: list[str]  # what headrace runs
    acks: int | str = 1
    bare_batch: int = BARE_BATCH


async def _bare(bootstrap: str, b: _Bench, dst: str) -> None:
    """The best single-process loop: getmany -> loads, stage, dumps -> send_batch per output partition, key kept."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=b.acks, linger_ms=LINGER_MS, max_batch_size=BATCH_BYTES,
                                max_request_size=MAX_REQUEST, enable_idempotence=False)  # fmt: skip
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(b.src, p) for p in range(b.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        part_of = _partitioner(sorted(await producer.partitions_for(dst)))
        loads, dumps, stage = orjson.loads, orjson.dumps, b.stage
        meta: dict[str, Any] = {}
        pending: list[Any] = []
        done = 0
        while done < b.n:
            data = await consumer.getmany(timeout_ms=500, max_records=b.bare_batch)
            batches: dict[int, Any] = {}
            for msgs in data.values():
                for m in msgs:
                    key = m.key
                    value = dumps(stage(loads(m.value), meta))
                    p = part_of(key)
                    batch = batches.get(p) or batches.setdefault(p, producer.create_batch())
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        pending.append(await producer.send_batch(batch, dst, partition=p))
                        batch = batches[p] = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                done += len(msgs)
            for p, batch in batches.items():
                pending.append(await producer.send_batch(batch, dst, partition=p))
            # deliveries are not waited for (send_batch waits while a partition's previous batch is queued)
            for f in pending:
                if f.done():
                    f.result()
            pending = [f for f in pending if not f.done()]
        await asyncio.gather(*pending)
    finally:
        await consumer.stop()
        await producer.stop()


def _bare_run(broker: KafkaBroker, b: _Bench, dst: str) -> dict[str, Any]:
    broker.create_topic(dst, b.partitions)
    watcher = _Watcher(broker, dst, b.partitions, b.n)
    try:
        watcher.pid.value = os.getpid()
        try:
            import uvloop  # what the daemon runs on, when it is installed

            uvloop.run(_bare(broker.bootstrap, b, dst))
        except ImportError:
            asyncio.run(_bare(broker.bootstrap, b, dst))
        return watcher.result()
    finally:
        watcher.close()
        broker.delete_topic(dst)


def _headrace_run(broker: KafkaBroker, b: _Bench, dst: str) -> dict[str, Any]:
    broker.create_topic(dst, b.partitions)
    # the offramp's key defaults to meta['kafka_key'], the input record's key: keys are kept (the watcher checks)
    port = free_port()
    cfg = f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{in: {{type: kafka, codec: json, config: {{brokers: "{broker.bootstrap}", topics: [{b.src}], group_id: bench-{dst},
  session_timeout: 2s, heartbeat_interval: 200ms}}}}}}
pipelines: {{main: [{", ".join(b.pipeline)}]}}
offramps: {{out: {{type: kafka, codec: json, config: {{brokers: "{broker.bootstrap}", topic: {dst}, acks: {b.acks}, linger: {LINGER_MS}ms}}}}}}
links: {{in: [main], main: [out]}}
"""
    watcher = _Watcher(broker, dst, b.partitions, b.n)
    # each worker's busy ratio (its CPU over wall time) and occupied ratio (the wall time it had a job in hand) over the
    # steady window: their counters read at its first and last scrape (the gauges cover one second each, in lumps of jobs)
    samples: list[tuple[float, dict[str, list[float]]]] = []
    last = [0.0]

    def until() -> bool:
        now = time.monotonic()
        if 0.2 * b.n <= watcher.seen.value <= 0.8 * b.n and now - last[0] >= 0.25:
            last[0] = now
            try:
                series = scrape(port)
            except OSError:
                series = {}
            totals = {name: [v for k, v in sorted(series.items()) if k.startswith(f"headrace_worker_{name}_seconds_total{{")]
                      for name in ("busy", "occupied")}  # fmt: skip
            if all(totals.values()):
                samples.append((time.monotonic(), totals))
        return watcher.done()

    try:

        def started(proc: Any) -> None:
            watcher.pid.value = proc.pid

        run_daemon_async(cfg, tmpdir(), until, on_start=started)
        res = watcher.result()
        if len(samples) >= 2:
            (t0, first), (t1, end) = samples[0], samples[-1]
            for name in ("busy", "occupied"):
                # at most 1 (as the gauges): a job answered just inside the window brings wall time from before it
                res[name] = [min((b - a) / (t1 - t0), 1.0) for a, b in zip(first[name], end[name], strict=True)]
        return res
    finally:
        watcher.close()
        broker.delete_topic(dst)


@dataclass
class _Result:
    bare: float
    hr: float
    bare_cpu_us: float
    hr_cpu_us: float
    bare_machine_us: float  # CPU per record of the whole machine (every process, the kernel) over the bare run's window
    runs: str  # every run's rate, to judge the noise
    busy: list[float]  # headrace's workers' busy ratio over the steady window (median run)
    occupied: list[float]  # ... and their occupied ratio

    @property
    def ratio(self) -> float:
        return self.hr / self.bare

    def value(self) -> str:
        return f"{self.hr:,.0f} events/s = {self.ratio:.2f}x bare"

    def busy_text(self) -> str:
        if not self.occupied:
            return "workers occupied: not sampled"
        return ("workers occupied " + ", ".join(f"{b * 100:.0f} %" for b in self.occupied) + " (on a core "
                + ", ".join(f"{b * 100:.0f} %" for b in self.busy) + ")")  # fmt: skip


def _compare(broker: KafkaBroker, b: _Bench, runs: int = RUNS) -> _Result:
    """Medians over ``runs`` alternating runs of the bare loop and of headrace."""
    bare: list[dict[str, Any]] = []
    hr: list[dict[str, Any]] = []
    for r in range(runs):
        bare.append(_bare_run(broker, b, f"{b.name}-bare-{r}"))
        hr.append(_headrace_run(broker, b, f"{b.name}-hr-{r}"))

    def median(results: list[dict[str, Any]], field: str) -> float:
        return float(statistics.median(x[field] for x in results))

    def rates(results: list[dict[str, Any]]) -> str:
        return " ".join(f"{x['rate']:,.0f}" for x in results)

    mid = sorted(hr, key=lambda x: x["rate"])[len(hr) // 2]
    return _Result(median(bare, "rate"), median(hr, "rate"), median(bare, "cpu_us"), median(hr, "cpu_us"), median(bare, "machine_us"),
                   f"bare {rates(bare)}, headrace {rates(hr)}", mid.get("busy", []), mid.get("occupied", []))  # fmt: skip


def _k1_ceiling(k1: _Result) -> list[str]:
    """What the machine leaves for the pipeline at the target rate: the broker, the output's consumer
    and the kernel cost the same per record whoever runs the pipeline (measured in the bare runs)."""
    cores = os.cpu_count() or 1
    others = k1.bare_machine_us - k1.bare_cpu_us  # broker, output consumer, kernel, anything else
    target = 1.5 * k1.bare
    left = cores * 1e6 / target - others  # CPU per record left at 1.5x for the pipeline's processes together
    return [f"  K1 machine CPU per record in the bare runs: {k1.bare_machine_us:.1f} us (the bare loop {k1.bare_cpu_us:.1f}, the broker, "
            f"the output consumer and the kernel {others:.1f}); at 1.5x ({target:,.0f}/s) those would need {others * target / 1e6:.2f} "
            f"of the {cores} cores, leaving {left:.1f} us per record for all of headrace's processes together"]  # fmt: skip


def _untargeted(name: str, r: _Result) -> str:
    return f"{name:<52} {r.value():<44} (no target)"


def kafka_k_benches() -> list[str]:
    from bench.stages import add_field, burn_200us

    t_start = time.perf_counter()
    out = [f"  K benches: json-throughput records keyed by application, acks=1, linger 5 ms; rates from a consumer of the "
           f"output topic in its own process; median of {RUNS} run(s)"]  # fmt: skip
    with KafkaBroker() as broker:
        _fill(broker, "k-src", N_K1, PARTITIONS)
        k1 = _compare(broker, _Bench("k1", "k-src", PARTITIONS, N_K1, add_field, [STAGE_FIELD]))
        out.append(f"  baseline: bare aiokafka loop, ~0 us stage: {k1.bare:,.0f} events/s ({N_K1:,} records, {PARTITIONS} partitions)")
        out.append(line("K1. Kafka -> ~0 us def stage on 2 workers -> Kafka", k1.value(), ">=1.5x", k1.ratio >= 1.5))
        out.append(f"  K1 runs (events/s): {k1.runs}")
        out.append(f"  K1 CPU per record: headrace parent process {k1.hr_cpu_us:.1f} us, bare loop {k1.bare_cpu_us:.1f} us")
        out.extend(_k1_ceiling(k1))

        _fill(broker, "k-cpu-src", N_CPU, PARTITIONS)
        k2 = _compare(broker, _Bench("k2", "k-cpu-src", PARTITIONS, N_CPU, burn_200us, [STAGE_BURN], bare_batch=BARE_BATCH_CPU))
        out.append(f"  baseline: bare aiokafka loop with the 200 us stage: {k2.bare:,.0f} events/s ({N_CPU:,} records)")
        out.append(line("K2. Kafka -> 200 us def stage on 2 workers -> Kafka", k2.value(), ">=1.8x", k2.ratio >= 1.8))
        out.append(f"  K2 runs (events/s): {k2.runs}; {k2.busy_text()}")
        out.append("  (occupied: the wall time a worker had a job in hand, so 1 - occupied is the time it waited for work; on a core: its CPU "
                   "over wall time, less by the time it waited for one of the two cores the parent, broker and consumer share)")  # fmt: skip
        k3 = _compare(broker, _Bench("k3", "k-cpu-src", PARTITIONS, N_CPU, burn_200us, [STAGE_WAIT, STAGE_BURN], bare_batch=BARE_BATCH_CPU))
        out.append(f"  baseline: bare aiokafka loop with the 200 us stage alone: {k3.bare:,.0f} events/s")
        out.append(line("K3. Kafka -> 2 ms async + 200 us def -> Kafka", k3.value(), ">=1.7x", k3.ratio >= 1.7))
        out.append(f"  K3 runs (events/s): {k3.runs}; {k3.busy_text()}")
        fed = [k2.occupied]
        for parts in (1, 16):  # the workers kept busy whatever the partition count (one run each)
            _fill(broker, f"k-cpu-src-{parts}", N_CPU, parts)
            r = _compare(broker, _Bench(f"k2-p{parts}", f"k-cpu-src-{parts}", parts, N_CPU, burn_200us, [STAGE_BURN], bare_batch=BARE_BATCH_CPU), runs=1)
            out.append(f"{_untargeted(f'K2 with {parts} partition' + ('s' if parts > 1 else ''), r)}; {r.busy_text()}")
            fed.append(r.occupied)
        least = min((min(o) for o in fed if o), default=0.0)
        out.append(line("K2 workers occupied, at 1, 4 and 16 partitions", f"least {least * 100:.0f} %", ">=90%", least >= 0.9 and all(fed)))

        # K1 variants: one run each, against a bare loop with the same settings
        acks_all = _compare(broker, _Bench("k1-acks-all", "k-src", PARTITIONS, N_K1, add_field, [STAGE_FIELD], acks="all"), runs=1)
        out.append(_untargeted("K1 with acks=all", acks_all))
        for parts in (1, 16):
            _fill(broker, f"k-src-{parts}", N_K1, parts)
            r = _compare(broker, _Bench(f"k1-p{parts}", f"k-src-{parts}", parts, N_K1, add_field, [STAGE_FIELD]), runs=1)
            out.append(_untargeted(f"K1 with {parts} partition{'s' if parts > 1 else ''}", r))
        out.append("  (the records have 6 distinct keys: with 4 or with 16 partitions, 3 partitions get records)")
    out.append(f"  K benches took {time.perf_counter() - t_start:.0f} s")
    return out
