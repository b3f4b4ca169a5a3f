"""``headrace replay FILE|kafka://HOST:PORT/TOPIC``: send dead letters back through a running daemon (``POST /replay``), or through a one-shot run of a config (``--config``)."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from headrace.cli.top import admin_headers, base_url
from headrace.contract.expr import ExpressionError, compile_expr
from headrace.runtime.replay import Job

CHUNK = 500  # records per request


def read_letters(path: Path) -> tuple[list[Any], int]:
    """The ``{"event", "meta"}`` lines of a dead-letter file (an offramp with ``with_meta: true``), and how many lines were not."""
    return _parse(path.read_text(encoding="utf-8").splitlines())


def read_kafka_letters(url: str) -> tuple[list[Any], int]:
    """Dead letters from ``kafka://HOST:PORT/TOPIC``: every record of every partition, from the
    beginning to the end it had when the read began (no consumer group, nothing committed)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition

    rest = url.removeprefix("kafka://")
    servers, _, topic = rest.partition("/")
    if not servers or not topic:
        raise ValueError(f"{url}: give kafka://HOST:PORT/TOPIC")

    async def read() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, group_id=None)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic) or set() if topic in await consumer.topics() else set()  # topics() asks the broker
            if not parts:
                raise ValueError(f"{url}: no topic {topic!r} on {servers}")
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            values: list[bytes] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
                for records in batch.values():
                    values.extend(r.value for r in records if r.value is not None)
            return values
        finally:
            try:
                await consumer.stop()
            except (asyncio.CancelledError, Exception):  # aiokafka's stop of a consumer never assigned raises this: nothing to stop
                pass

    return _parse([v.decode("utf-8", "replace") for v in asyncio.run(read())])


def _parse(lines: list[str]) -> tuple[list[Any], int]:
    letters, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(item, dict) and "event" in item and isinstance(item.get("meta"), dict):
            letters.append(item)
        else:
            bad += 1
    return letters, bad


def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/replay", data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers},
                                 method="POST")  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        try:
            return {"error": json.loads(exc.read()).get("error", f"HTTP {exc.code}")}
        except ValueError:
            return {"error": f"HTTP {exc.code}"}


def _through_daemon(job: Job, url: str, token_file: str | None) -> int:
    """Send ``job``'s chunks to a running daemon's ``POST /replay``; 0, or the exit code of what went wrong."""
    try:
        headers = admin_headers(token_file)
    except OSError as exc:
        print(f"headrace replay: --token-file: {exc}", file=sys.stderr)
        return 2
    endpoint = base_url(url)
    t0 = time.monotonic()
    for due, chunk in job.chunks():
        wait = due - (time.monotonic() - t0)
        if wait > 0:
            time.sleep(wait)
        try:
            result = _post(endpoint, {"into": job.into, "dry_run": job.dry_run, "records": chunk}, headers)
        except (urllib.error.URLError, OSError) as exc:
            print(f"headrace replay: cannot reach a headrace daemon at {endpoint}: {getattr(exc, 'reason', exc)} "
                  "(with no daemon running, give --config CONFIG)", file=sys.stderr)  # fmt: skip
            return 1
        if "error" in result:
            print(f"headrace replay: {result['error']}", file=sys.stderr)
            return 1
        job.add(result)
    return 0


def _one_shot(job: Job, config: str) -> int:
    """Run ``config`` here with idle onramps, replay ``job`` through it, drain; the daemon's exit code."""
    from headrace.daemon.process import Daemon

    rc = Daemon(config, replay=job).run()
    if job.error is not None:
        print(f"headrace replay: {job.error}", file=sys.stderr)
        return 1
    return rc


def run_replay(file: str, url: str, into: str | None, where: str | None, rate: float | None, dry_run: bool,
               token_file: str | None = None, config: str | None = None) -> int:  # fmt: skip
    try:
        test = compile_expr(where, ("event", "meta")) if where else None
    except ExpressionError as exc:
        print(f"headrace replay: --where: {exc}", file=sys.stderr)
        return 2
    if rate is not None and rate <= 0:
        print("headrace replay: --rate: give a number of records a second above 0", file=sys.stderr)
        return 2
    if file.startswith("kafka://"):
        try:
            letters, bad = read_kafka_letters(file)
        except ValueError as exc:
            print(f"headrace replay: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # the broker: unreachable, refused
            print(f"headrace replay: cannot read {file}: {exc}", file=sys.stderr)
            return 1
    else:
        path = Path(file)
        if not path.is_file():
            print(f"headrace replay: no file {file}", file=sys.stderr)
            return 2
        letters, bad = read_letters(path)
    chosen = []
    for item in letters:
        try:
            if test is None or test(item["event"], item["meta"]):
                chosen.append(item)
        except Exception:  # an expression that raises on a record: that record is not chosen
            pass
    job = Job(chosen, into, rate, dry_run, CHUNK)
    rc = _one_shot(job, config) if config is not None else _through_daemon(job, url, token_file)
    if rc != 0:
        return rc
    totals, reasons = job.totals, job.reasons
    first = f"would replay {totals['would_replay']}" if dry_run else f"re-delivered {totals['redelivered']}"
    print(f"headrace replay: {first}, failed again {totals['failed']}, skipped {totals['skipped']} (replayed before); "
          f"{len(letters) - len(chosen)} not chosen by --where, {bad + totals['invalid']} not dead letters")  # fmt: skip
    for why, n in reasons.most_common():
        print(f"  {n} x {why}")
    return 1 if totals["failed"] else 0
