#!/usr/bin/env python3
"""Soak test (``make soak``): the real daemon for a long time at half of its top speed, with faults.

Kafka (a tansu broker of its own) -> a CPU stage on the workers -> a file. The script

1. measures the top speed on a backlog (records delivered per second with every core busy);
2. produces at half of it for ``--minutes`` (default 30), and meanwhile SIGKILLs a worker every
   ``--kill-every`` minutes (default: a sixth of the run, 5 of 30), reloads the config every
   ``--reload-every`` (a third: 10) and stalls the broker (SIGSTOP/SIGCONT for ``--stall-seconds``)
   every ``--stall-every`` (a half: 15);
3. samples the memory of the daemon process (RSS; the workers are respawned by the kills, their RSS is
   reported apart) and fits a line through the samples after the warm-up (the first fifth): the slope
   must stay near zero: at most ``--max-slope`` MB per minute, or, on a short run, at most the sampling
   noise (5 MB) over the measured span;
4. at the end stops producing, waits until everything is committed, stops the daemon (SIGTERM, exit
   0), and checks conservation by identity: every record id produced is in the output file; the
   duplicates stay within the in-flight windows measured before each broker stall.

Prints a JSON summary; exits 0 when every check passed, 1 otherwise. Not run by ``make test``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]  # noqa: E402

from tests.reliability.checker import AT_LEAST_ONCE, conserve  # noqa: E402
from tests.reliability.harness import (  # noqa: E402
    ONRAMP_IN,
    OffsetWatcher,
    count_lines,
    file_ids,
    kafka_onramp,
    rss_mb,
    scrape_or_empty,
    status,
    write_config,
)
from tests.support.daemon import Daemon, free_port  # noqa: E402
from tests.support.kafka_broker import KafkaBroker  # noqa: E402

TOPIC, GROUP, PARTS = "soak", "g-soak", (0, 1, 2, 3)

STAGE = '''
import hashlib, time

WORK_S = {work_s!r}

def work(event, meta):
    end = time.perf_counter() + WORK_S
    h = str(event["id"]).encode()
    while time.perf_counter() < end:
        h = hashlib.sha256(h).digest()
    event["h"] = h[:4].hex()
    return event
'''

BODY = """
onramps:
  in: {onramp}
pipelines:
  main: [{{op: python, fn: "stages:work"}}, {{op: set, set: {{gen: "{gen}"}}}}]
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{in: [main], in/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
"""


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


class Producer(threading.Thread):
    """Produces records with increasing ids at ``rate`` per second (catching up after a stall)."""

    def __init__(self, bootstrap: str, first_id: int, rate: float) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.bootstrap = bootstrap
        self.next_id = first_id
        self.first_id = first_id
        self.rate = rate
        self.acked: list[int] = []
        self.uncertain: list[int] = []  # a send that failed: the broker may or may not have stored them
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc

    async def _main(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024,
                                    request_timeout_ms=120_000)  # fmt: skip
        await producer.start()
        t0 = time.monotonic()
        try:
            while not self.stopping.is_set():
                due = int((time.monotonic() - t0) * self.rate) - (self.next_id - self.first_id)
                if due > 0:
                    ids = list(range(self.next_id, self.next_id + min(due, 5000)))
                    self.next_id += len(ids)
                    await self._send(producer, ids)
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    async def _send(self, producer: Any, ids: list[int]) -> None:
        futures = []
        for p in PARTS:
            batch = producer.create_batch()
            for i in ids[p :: len(PARTS)]:
                value = json.dumps({"id": i, "pad": "x" * 64}).encode()
                if batch.append(key=None, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, TOPIC, partition=p))
                    batch = producer.create_batch()
                    batch.append(key=None, value=value, timestamp=None)
            if batch.record_count():
                futures.append(await producer.send_batch(batch, TOPIC, partition=p))
        try:
            await asyncio.gather(*futures)
            self.acked.extend(ids)
        except Exception as exc:
            log(f"produce failed ({exc!r}); {len(ids)} id(s) are uncertain")
            self.uncertain.extend(ids)


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    cov = sum((t - mx) * (v - my) for t, v in samples)
    return cov / var * 60 if var else 0.0


NOISE_MB = 5.0  # RSS moves by a few MB with allocator and GC timing: a short run cannot tell less than this


def workers_rss(d: Daemon) -> float:
    return sum(rss_mb(p) for p in d.children())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the soak (default 30)")
    ap.add_argument("--kill-every", type=float, help="minutes between worker kills (default: a sixth of the run)")
    ap.add_argument("--reload-every", type=float, help="minutes between reloads (default: a third of the run)")
    ap.add_argument("--stall-every", type=float, help="minutes between broker stalls (default: half of the run)")
    ap.add_argument("--stall-seconds", type=float, help="length of a broker stall (default 15 s; 5 s for runs under 15 minutes)")
    ap.add_argument("--work-us", type=float, default=500.0, help="CPU microseconds the stage spends per record (default 500)")
    ap.add_argument("--rate", type=float, help="records per second (default: half of the measured top speed)")
    ap.add_argument("--max-slope", type=float, default=1.0, help="largest memory slope accepted, MB per minute (default 1.0)")
    ap.add_argument("--workdir", help="folder for the config, output and logs (default: a temporary one, removed on success)")
    args = ap.parse_args()
    minutes = args.minutes
    kill_every = (args.kill_every or minutes / 6) * 60
    reload_every = (args.reload_every or minutes / 3) * 60
    stall_every = (args.stall_every or minutes / 2) * 60
    stall_s = args.stall_seconds or (15.0 if minutes >= 15 else 5.0)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="headrace-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "stages.py").write_text(STAGE.format(work_s=args.work_us / 1e6))
    summary: dict[str, Any] = {"minutes": minutes, "workdir": str(work)}
    failures: list[str] = []

    broker = KafkaBroker(log_path=work / "tansu.log")
    broker.start()
    watcher = OffsetWatcher(broker)
    port = free_port()
    onramp = kafka_onramp(broker, TOPIC, GROUP)

    def write(gen: int) -> Path:
        return write_config(work, BODY.format(onramp=onramp, gen=gen), port=port, daemon_extra=", shutdown_timeout: 30s")

    d: Daemon | None = None
    producer: Producer | None = None
    try:
        broker.create_topic(TOPIC, len(PARTS))
        # 1. top speed, on a backlog
        backlog = 20_000 if args.rate is None else 0
        if backlog:
            _produce_backlog(broker, backlog)
        d = Daemon(write(0))
        out = work / "out.ndjson"
        if backlog:
            _wait(lambda: count_lines(out) >= backlog * 0.2, 120, d, "the backlog to start flowing")
            n0, t0 = count_lines(out), time.monotonic()
            _wait(lambda: count_lines(out) >= backlog * 0.8, 300, d, "the backlog to drain")
            top = (count_lines(out) - n0) / (time.monotonic() - t0)
            _wait(lambda: count_lines(out) >= backlog, 120, d, "the backlog to finish")
        else:
            top = 2 * args.rate
        rate = args.rate or top / 2
        summary.update(top_speed=round(top), rate=round(rate))
        log(f"top speed {top:,.0f} records/s; soaking {minutes:g} min at {rate:,.0f}/s in {work}")

        # 2. the soak
        producer = Producer(broker.bootstrap, backlog, rate)
        producer.start()
        start = time.monotonic()
        end = start + minutes * 60
        next_kill, next_reload, next_stall = start + kill_every, start + reload_every, start + stall_every
        samples: list[tuple[float, float]] = []
        worker_samples: list[float] = []
        next_sample = start
        window, gen = 0, 0
        respawns: list[float] = []
        reload_times: list[float] = []
        stall_recoveries: list[float] = []
        while time.monotonic() < end:
            now = time.monotonic()
            if d.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {d.proc.returncode}")
            if producer.error is not None:
                raise RuntimeError(f"the producer failed: {producer.error!r}")
            if now >= next_sample:
                samples.append((now - start, rss_mb(d.pid)))
                worker_samples.append(workers_rss(d))
                next_sample += 10
            if now >= next_kill:
                next_kill += kill_every
                st = status(port)
                victim, restarts = st["worker_pids"][0], st["worker_restarts"]
                os.kill(victim, signal.SIGKILL)
                t = time.monotonic()
                _wait(lambda v=victim, r=restarts: (s := status(port)) and s["worker_restarts"] > r and v not in s["worker_pids"], 30, d,
                      "a worker respawn")  # fmt: skip
                respawns.append(time.monotonic() - t)
                log(f"killed worker {victim}; respawned in {respawns[-1]:.2f}s")
            if now >= next_reload:
                next_reload += reload_every
                gen += 1
                before = scrape_or_empty(port).get('headrace_config_reloads_total{result="success"}', 0.0)
                write(gen)
                t = time.monotonic()
                d.signal(signal.SIGHUP)
                _wait(lambda b=before: scrape_or_empty(port).get('headrace_config_reloads_total{result="success"}', 0.0) > b, 60, d, "a reload")
                reload_times.append(time.monotonic() - t)
                log(f"reload {gen} took {reload_times[-1]:.2f}s")
            if now >= next_stall:
                next_stall += stall_every
                committed = watcher.total(GROUP, TOPIC, PARTS)
                received = scrape_or_empty(port).get(ONRAMP_IN.format("in"), 0.0)
                window += max(int(received - committed), 0) + 1000
                broker.pause()
                time.sleep(stall_s)
                broker.resume()
                t = time.monotonic()
                after = watcher.total(GROUP, TOPIC, PARTS)  # what was committed up to the stall
                _wait(lambda c=after: watcher.total(GROUP, TOPIC, PARTS) > c, 120, d, "commits after the stall")
                stall_recoveries.append(time.monotonic() - t)
                log(f"broker stalled {stall_s:g}s; commits resumed {stall_recoveries[-1]:.2f}s after")
            time.sleep(0.2)
        producer.stopping.set()
        producer.join(60)
        produced = len(producer.acked) + backlog
        log(f"produced {produced:,} records; waiting for the daemon to commit them")
        _wait(lambda: watcher.total(GROUP, TOPIC, PARTS) >= produced, 600, d, "everything committed", interval=1.0)
        rc = d.stop(60)
        if rc != 0:
            failures.append(f"the daemon exited with {rc} on SIGTERM")

        # 3. memory
        warm = [s for s in samples if s[0] >= 0.2 * minutes * 60]
        slope = slope_mb_per_min(warm)
        span_min = (warm[-1][0] - warm[0][0]) / 60 if len(warm) > 1 else 0.0
        allowed = max(args.max_slope, NOISE_MB / span_min) if span_min else float("inf")
        summary.update(daemon_rss_mb_first=round(warm[0][1], 1) if warm else None, daemon_rss_mb_last=round(warm[-1][1], 1) if warm else None,
                       daemon_rss_mb_max=round(max(v for _, v in samples), 1), workers_rss_mb_max=round(max(worker_samples), 1),
                       memory_slope_mb_per_min=round(slope, 3), memory_slope_allowed=round(allowed, 3), memory_samples=len(samples))  # fmt: skip
        if slope > allowed:
            failures.append(f"daemon memory grows by {slope:.2f} MB/min (more than {allowed:.2f})")

        # 4. conservation
        sent = list(range(backlog)) + producer.acked
        found = file_ids(work / "out.ndjson")
        uncertain = set(producer.uncertain)
        report = conserve(sent, [i for i in found if i not in uncertain], window=window, guarantee=AT_LEAST_ONCE, expect_dead=())
        summary.update(produced=produced, delivered=len(found), lost=len(report.lost), duplicates=report.duplicates, window=window,
                       worker_kills=len(respawns), respawn_max_s=round(max(respawns), 2) if respawns else None,
                       reloads=len(reload_times), reload_max_s=round(max(reload_times), 2) if reload_times else None,
                       stalls=len(stall_recoveries), stall_s=stall_s,
                       stall_recovery_max_s=round(max(stall_recoveries), 2) if stall_recoveries else None)  # fmt: skip
        if not report.ok:
            failures.append(report.summary())
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        if producer is not None:
            producer.stopping.set()
        if d is not None:
            d.stop(30)
        watcher.close()
        broker.stop()
    summary["ok"] = not failures
    summary["failures"] = failures
    print(json.dumps(summary, indent=2))
    if not failures and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not failures else 1


def _produce_backlog(broker: KafkaBroker, n: int) -> None:
    from tests.reliability.harness import produce

    produce(broker, TOPIC, range(n), payload=lambda i: json.dumps({"id": i, "pad": "x" * 64}).encode())


def _wait(pred: Any, timeout: float, d: Daemon, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if d.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {d.proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
