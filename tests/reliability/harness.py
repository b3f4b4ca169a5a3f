"""What the fault-injection tests share: records with ids, configs, readers of outputs,
probes of the daemon's processes, and the in-flight window at a fault.

Every record is a JSON object ``{"id": N, "pad": "..."}`` with a unique id; outputs are
read back and compared with :func:`tests.reliability.checker.conserve`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped, unused-ignore]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped, unused-ignore]

from tests.support.daemon import Daemon, json_lines, lines_written, scrape
from tests.support.kafka_broker import KafkaBroker

T = TypeVar("T")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# session_timeout >= 1 s with a heartbeat of a tenth (docs/dev/tansu-notes.md): fast, stable groups
GROUP_TIMING = "session_timeout: 2s, heartbeat_interval: 200ms, commit_interval: 200ms"

ONRAMP_IN = 'headrace_component_received_events_total{{component_id="{0}",component_kind="onramp"}}'
OFFRAMP_SENT = 'headrace_component_sent_events_total{{component_id="{0}",component_kind="offramp",port="out"}}'
OFFRAMP_IN = 'headrace_component_received_events_total{{component_id="{0}",component_kind="offramp"}}'

STAGES = '''
import os, signal, time

DELAY = {delay!r}        # seconds per event (sleeping: load without burning the 2 cores)
SLOW = set({slow!r})     # ids that take SLOW_S seconds
SLOW_S = {slow_s!r}
CRASH = set({crash!r})   # ids that SIGKILL their worker, every time
HANG = set({hang!r})     # ids that loop forever

def work(event, meta):
    i = event["id"]      # an event that is not an object raises here: to err with the reason
    if i in CRASH:
        os.kill(os.getpid(), signal.SIGKILL)
    if i in HANG:
        while True:
            pass
    if i in SLOW:
        time.sleep(SLOW_S)
    elif DELAY:
        time.sleep(DELAY)
    event["p"] = meta.get("kafka_partition")
    event["o"] = meta.get("kafka_offset")
    return event
'''


def stages(folder: Path, *, delay: float = 0.0, slow: Iterable[int] = (), slow_s: float = 0.0, crash: Iterable[int] = (),
           hang: Iterable[int] = ()) -> Path:  # fmt: skip
    path = folder / "stages.py"
    path.write_text(STAGES.format(delay=delay, slow=sorted(slow), slow_s=slow_s, crash=sorted(crash), hang=sorted(hang)))
    return path


def record(i: int, pad: int = 0) -> bytes:
    return json.dumps({"id": i, "pad": "x" * pad}).encode() if pad else json.dumps({"id": i}).encode()


# -- Kafka ---------------------------------------------------------------------------------------


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]], batch_bytes: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=batch_bytes,
                                max_request_size=max(4 << 20, batch_bytes * 2), request_timeout_ms=30000)  # fmt: skip
    await producer.start()
    try:
        parts = sorted(await producer.partitions_for(topic))
        by_part: dict[int, list[tuple[bytes | None, bytes]]] = {}
        for n, (key, value) in enumerate(records):
            by_part.setdefault(parts[n % len(parts)] if key is None else parts[hash(key) % len(parts)], []).append((key, value))
        futures = []
        for part, recs in by_part.items():
            batch = producer.create_batch()
            for key, value in recs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=part))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(broker: KafkaBroker | str, topic: str, ids: Iterable[int], *, pad: int = 0, payload: Callable[[int], bytes] | None = None,
            batch_bytes: int = 256 * 1024) -> None:  # fmt: skip
    """Produce one record per id, spread over the partitions round-robin (send_batch: fast)."""
    bootstrap = broker if isinstance(broker, str) else broker.bootstrap
    make = payload or (lambda i: record(i, pad))
    records = [(None, make(i)) for i in ids]
    run_async(_produce(bootstrap, topic, records, batch_bytes))


def produce_raw(broker: KafkaBroker, topic: str, values: list[bytes]) -> None:
    run_async(_produce(broker.bootstrap, topic, [(None, v) for v in values], 8 << 20))


class OffsetWatcher:
    """One admin client on a loop of its own thread: cheap repeated reads of committed offsets."""

    def __init__(self, broker: KafkaBroker | str) -> None:
        self.bootstrap = broker if isinstance(broker, str) else broker.bootstrap
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="offset-watcher", daemon=True)
        self.thread.start()
        self.admin: Any = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _committed(self, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
        if self.admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="reliability-watcher", request_timeout_ms=3000)
            await admin.start()
            self.admin = admin
        try:
            got = await self.admin.list_consumer_group_offsets(group, partitions=[TopicPartition(topic, p) for p in partitions])
        except Exception:
            await self._reset()
            raise
        return {int(tp.partition): int(m.offset) for tp, m in got.items() if tp.topic == topic and m.offset >= 0}

    async def _reset(self) -> None:
        admin, self.admin = self.admin, None
        if admin is not None:
            try:
                await admin.close()
            except Exception:
                pass

    def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """``{partition: committed offset}`` (partitions without a commit left out); {} if the broker does not answer."""
        try:
            return self._run(self._committed(group, topic, list(partitions)), timeout=6)
        except Exception:
            return {}

    def total(self, group: str, topic: str, partitions: Iterable[int]) -> int:
        return sum(self.committed(group, topic, partitions).values())

    def close(self) -> None:
        try:
            self._run(self._reset(), timeout=5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def kafka_ids(broker: KafkaBroker, topic: str, at_least: int, timeout: float = 60) -> list[Any]:
    """Ids of every record in ``topic`` (each copy), read from the beginning without a group up to the end of
    every partition (call it once the daemon that writes there stopped)."""
    return [json.loads(r.value)["id"] for r in broker.consume_all(topic, at_least, timeout=timeout, to_end=True)]


# -- outputs -------------------------------------------------------------------------------------


class Lines:
    """An ndjson file read back: the ids (each copy) and the lines that are not whole JSON objects."""

    def __init__(self, path: Path) -> None:
        self.ids: list[Any] = []
        self.events: list[Any] = []
        self.corrupt: list[bytes] = []
        if not path.exists():
            return
        data = path.read_bytes()
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                ev = json.loads(line)
                self.ids.append(ev["id"] if isinstance(ev, dict) else ev)
                self.events.append(ev)
            except (ValueError, KeyError, TypeError):
                self.corrupt.append(line[:200])
        self.torn_tail = bool(data) and not data.endswith(b"\n")  # a record cut short at the end of the file


def file_ids(path: Path) -> list[Any]:
    return Lines(path).ids


count_lines = lines_written


def dead_letters(path: Path) -> list[dict[str, Any]]:
    """Entries of a ``with_meta: true`` dead-letter file: ``{"event": ..., "meta": {"error": ...}}``."""
    return json_lines(path)  # complete lines only: the daemon may be writing the last one


def dead_ids(entries: list[dict[str, Any]]) -> list[Any]:
    out = []
    for e in entries:
        ev = e["event"]
        if isinstance(ev, dict):
            out.append(ev.get("id"))
        elif isinstance(ev, str):
            try:
                out.append(json.loads(ev)["id"])
            except (ValueError, KeyError, TypeError):
                out.append(ev)
        else:
            out.append(ev)
    return out


# -- the daemon ----------------------------------------------------------------------------------


def status(port: int) -> dict[str, Any]:
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    """The HTTP status of GET ``path`` (0 when nothing answers)."""
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def scrape_or_empty(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except OSError:
        return {}


def sum_series(m: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix))


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssSampler:
    """A daemon's RSS, sampled every 20 ms by a thread from ``start()`` to ``stop()``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = 0.0
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_mb(self.pid))
            time.sleep(0.02)

    def start(self) -> None:
        self.base = rss_mb(self.pid)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def growth(self) -> float:
        """MB above the RSS at ``start()``: the highest sample so far."""
        return max(self.samples, default=self.base) - self.base


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def family(d: Daemon) -> set[int]:
    """The daemon's processes: its children (the fork server...) and theirs (the workers)."""
    return set(d.children())


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05, daemon: Daemon | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if daemon is not None and daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode} while waiting for {what}:\n{daemon.stderr()[-3000:]}")
        if time.monotonic() > deadline:
            tail = f"\ndaemon stderr:\n{daemon.stderr()[-3000:]}" if daemon is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{tail}")
        time.sleep(interval)


def inflight_window(port: int, committed_now: int, *, onramp: str = "in", start_committed: int = 0, margin: int = 1000) -> int:
    """Records this daemon read that were not committed yet: what a crash now may deliver twice.

    ``start_committed`` is what was committed when the daemon started (where it began to
    read); ``margin`` covers what it may read between this scrape and the fault.
    Read ``committed_now`` from the broker *before* calling this (committed only grows).
    """
    received = scrape(port).get(ONRAMP_IN.format(onramp), 0.0)
    return max(int(start_committed + received - committed_now), 0) + margin


# -- a TCP peer ----------------------------------------------------------------------------------


class LineSink:
    """A TCP server in a thread of its own that collects newline-framed records.

    ``rate`` (bytes/s) makes it a slow reader; ``start()``/``stop()`` keep the port.
    """

    def __init__(self, port: int, rate: float | None = None) -> None:
        self.port = port
        self.rate = rate
        self.data = bytearray()
        self.lock = threading.Lock()
        self.server: socket.socket | None = None
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.running = False

    def start(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(16)
        srv.settimeout(0.2)
        self.server = srv
        self.running = True
        t = threading.Thread(target=self._accept, name="line-sink", daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while self.running and self.server is not None:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            if self.rate is not None:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            self.conns.append(conn)
            t = threading.Thread(target=self._read, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        chunk = 16 * 1024 if self.rate is not None else 1 << 20
        while self.running:
            try:
                data = conn.recv(chunk)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self.lock:
                self.data += data
            if self.rate is not None:
                time.sleep(len(data) / self.rate)
        conn.close()

    def stop(self) -> None:
        self.running = False
        if self.server is not None:
            self.server.close()
            self.server = None
        for t in self.threads:
            t.join(2)
        self.threads.clear()
        self.conns.clear()

    def ids(self) -> list[Any]:
        with self.lock:
            data = bytes(self.data)
        return [json.loads(x)["id"] for x in data.split(b"\n")[:-1] if x.strip()]  # a last line without its newline is still arriving

    def count(self) -> int:
        with self.lock:
            return self.data.count(b"\n")


def yaml_str(s: str) -> str:
    return json.dumps(s)


# -- configs -------------------------------------------------------------------------------------


def kafka_onramp(broker: KafkaBroker | str, topic: str, group: str, extra: str = "", codec: str = "json", top: str = "") -> str:
    """An inline YAML Kafka onramp with the fast group timing."""
    bootstrap = broker if isinstance(broker, str) else broker.bootstrap
    return (f'{{type: kafka, codec: {codec}{top}, config: {{brokers: "{bootstrap}", topics: [{topic}], group_id: {group}, '
            f"{GROUP_TIMING}{', ' + extra if extra else ''}}}}}")  # fmt: skip


def write_config(folder: Path, body: str, *, port: int | None, workers: int = 2, daemon_extra: str = "", name: str = "c.yaml") -> Path:
    listen = f'"127.0.0.1:{port}"' if port else "null"
    path = folder / name
    path.write_text(f"version: 1\ndaemon: {{workers: {workers}, metrics: {{listen: {listen}}}{daemon_extra}}}\n{body.strip()}\n")
    return path


# -- an HTTP peer --------------------------------------------------------------------------------


class HttpSink:
    """An HTTP server (stdlib, threads) collecting POSTed ndjson bodies.

    ``delay`` seconds before each answer makes a slow offramp target; ``refuse(body)``
    returning true answers 400 (a permanent refusal).
    """

    def __init__(self, port: int, delay: float = 0.0, refuse: Callable[[bytes], bool] | None = None) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self
        self.delay = delay
        self.refuse = refuse
        self.down = False  # answer 503 to everything (a dead sink), until set back
        self.bodies: list[bytes] = []
        self.requests = 0
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                time.sleep(sink.delay)
                with sink.lock:
                    sink.requests += 1
                if sink.down:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if sink.refuse is not None and sink.refuse(body):
                    self.send_response(400)
                    self.send_header("Content-Length", "7")
                    self.end_headers()
                    self.wfile.write(b"refused")
                    return
                with sink.lock:
                    sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def ids(self) -> list[Any]:
        with self.lock:
            bodies = list(self.bodies)
        return [json.loads(x)["id"] for b in bodies for x in b.split(b"\n") if x.strip()]

    def count(self) -> int:
        with self.lock:
            return sum(b.count(b"\n") for b in self.bodies)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
