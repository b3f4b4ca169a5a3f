"""The worker pool: per-core processes that run worker segments, supervised by the parent.

Workers are forked from a fork server started before the event loop (so respawns
later never fork the busy parent). Each worker has one duplex pipe; the parent talks
to it with asyncio streams using the same length framing as ``Connection``. At most
``max_inflight`` jobs are queued per worker. A dead worker is respawned and its
in-flight jobs re-dispatched; the job it was executing fails with ``WorkerCrashed``
so the caller can bisect it; a job running past ``stage_timeout`` kills its worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import multiprocess

from headrace.metrics.defs import Metrics
from headrace.runtime.segment import Response, SegmentSpec, pack, unpack
from headrace.runtime.worker import CONFIGURE, JOB, STOP, worker_main

log = logging.getLogger("headrace.pool")
_I = struct.Struct("!i")
_Q = struct.Struct("!Q")
SOCKET_BUFFER = 4 << 20  # a few batches fit, so a job is one write and one read


class WorkerCrashed(Exception):
    """The worker died (or was killed for a timeout) while executing this job."""


@dataclass
class Job:
    id: int
    segment: str
    parts: list[Any]
    future: asyncio.Future[Response]
    started: float = 0.0
    resent: int = 0


@dataclass
class WorkerHandle:
    index: int
    proc: Any = None
    conn: Any = None
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    inflight: deque[Job] = field(default_factory=deque)
    busy_ns: int = 0
    alive: bool = False
    kill_reason: str | None = None
    task: asyncio.Task[None] | None = None
    jobs: Any = None  # metric children, resolved once
    job_events: Any = None


class WorkerPool:
    def __init__(self, size: int, metrics: Metrics | None = None, max_inflight: int = 3, stage_timeout: float = 60.0) -> None:
        self.size = size
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.stage_timeout = stage_timeout
        self.ctx = multiprocess.get_context("forkserver")
        self.workers = [WorkerHandle(i) for i in range(size)]
        self.specs: list[SegmentSpec] = []
        self._next_id = 0
        self._capacity: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._redispatch: set[asyncio.Task[None]] = set()
        self.closing = False
        self.restarts = 0

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the fork server and the workers; call before the event loop starts."""
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: WorkerHandle) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=worker_main, args=(child, w.index, os.getpid()), name=f"headrace-worker-{w.index}", daemon=True)
        proc.start()
        child.close()
        w.proc, w.conn, w.alive, w.kill_reason = proc, parent, True, None
        w.reader = w.writer = None

    async def attach(self) -> None:
        """Wire the workers into the running loop."""
        self._capacity = asyncio.Condition()
        for w in self.workers:
            await self._connect(w)
        self._tasks.append(asyncio.create_task(self._watchdog()))

    async def _connect(self, w: WorkerHandle) -> None:
        sock = socket.socket(fileno=os.dup(w.conn.fileno()))
        sock.setblocking(False)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        w.conn.close()
        w.reader, w.writer = await asyncio.open_connection(sock=sock, limit=1 << 26)
        w.task = asyncio.create_task(self._read(w), name=f"headrace-worker-{w.index}-reader")
        if self.specs:
            await self._configure_one(w, self.specs)

    async def configure(self, add: list[SegmentSpec] | None = None, drop: list[str] | None = None) -> None:
        """Add segment definitions to every worker (stages are set up there) and drop old ones
        (torn down there). A respawned worker gets all current segments."""
        add = add or []
        dropped = set(drop or [])
        if not add and not dropped:
            return  # nothing changed on the workers: do not wait behind their in-flight jobs for an empty reply
        self.specs = [s for s in self.specs if s.id not in dropped and s.id not in {a.id for a in add}] + add
        for w in self.workers:
            if w.alive and w.writer is not None:
                await self._configure_one(w, add, list(dropped))

    async def _configure_one(self, w: WorkerHandle, specs: list[SegmentSpec], drop: list[str] | None = None) -> None:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        job = Job(-1, "", pack((CONFIGURE, (specs, drop or []))), fut)
        w.inflight.append(job)
        await self._send(w, job.parts)
        errors = await fut
        if errors:
            raise RuntimeError("; ".join(errors))  # type: ignore[arg-type]

    @staticmethod
    async def _send(w: WorkerHandle, parts: list[Any]) -> None:
        assert w.writer is not None
        n = sum(len(p) for p in parts)
        w.writer.write(_I.pack(n) if n < 0x7FFFFFFF else _I.pack(-1) + _Q.pack(n))
        w.writer.writelines(parts)
        await w.writer.drain()

    async def _read(self, w: WorkerHandle) -> None:
        assert w.reader is not None
        try:
            while True:
                (n,) = _I.unpack(await w.reader.readexactly(4))
                if n == -1:
                    (n,) = _Q.unpack(await w.reader.readexactly(8))
                msg = await w.reader.readexactly(n)
                header, blob = unpack(msg)
                job = w.inflight.popleft()
                if w.inflight:  # the worker starts on the next job now: stage_timeout counts from here, not from its dispatch
                    w.inflight[0].started = time.monotonic()
                if job.id == -1:  # configure reply: ("configured", errors)
                    job.future.set_result(header[1])
                    continue
                header.blob = blob
                w.busy_ns += header.cpu_ns
                if self.metrics is not None:
                    req = job.parts[0]
                    self._job_counters(w)
                    w.jobs.inc()
                    w.job_events.inc(len(req.lens) // 4 if req.lens else len(req.values or ()))
                if not job.future.done():
                    job.future.set_result(header)
                await self._notify()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            return
        if not self.closing:
            await self._died(w)

    def _job_counters(self, w: WorkerHandle) -> None:
        if w.jobs is None and self.metrics is not None:
            w.jobs = self.metrics["headrace_worker_jobs_total"].labels(str(w.index))
            w.job_events = self.metrics["headrace_worker_job_events_total"].labels(str(w.index))

    async def _notify(self) -> None:
        assert self._capacity is not None
        async with self._capacity:
            self._capacity.notify_all()

    async def _died(self, w: WorkerHandle) -> None:
        w.alive = False
        proc = w.proc
        await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
        code = proc.exitcode
        cause = w.kill_reason or (f"worker {w.index} killed by signal {-code}" if code is not None and code < 0 else f"worker {w.index} exited with {code}")
        log.error("%s; respawning and re-dispatching %d in-flight batch(es)", cause, sum(j.id >= 0 for j in w.inflight))
        if w.writer is not None:
            w.writer.close()
        pending = list(w.inflight)
        w.inflight.clear()
        self.restarts += 1
        if self.metrics:
            self.metrics["headrace_worker_restarts_total"].labels(str(w.index)).inc()
        self._spawn(w)
        try:
            await self._connect(w)
        except Exception as exc:  # configure failed in the new worker: keep trying on next death
            log.error("respawned worker %d could not be configured: %s", w.index, exc)
        first = True
        for job in pending:
            if job.id < 0:
                if not job.future.done():
                    job.future.set_result([])  # type: ignore[arg-type]
                continue
            if first:  # the job the worker was executing when it died
                first = False
                if not job.future.done():
                    job.future.set_exception(WorkerCrashed(cause))
                continue
            if self.metrics:
                self.metrics["headrace_worker_redispatched_batches_total"].inc()
            job.resent += 1
            task = asyncio.create_task(self._dispatch(job))
            self._redispatch.add(task)
            task.add_done_callback(self._redispatch.discard)
        await self._notify()

    # -- jobs ----------------------------------------------------------------------------------
    async def execute(self, segment: str, parts: list[Any]) -> Response:
        """Run one job on the least-loaded worker; waits while every worker is full."""
        self._next_id += 1
        job = Job(self._next_id, segment, parts, asyncio.get_running_loop().create_future())
        await self._dispatch(job)
        return await job.future

    async def _dispatch(self, job: Job) -> None:
        assert self._capacity is not None
        async with self._capacity:
            while True:
                live = [w for w in self.workers if w.alive and w.writer is not None and len(w.inflight) < self.max_inflight]
                if live:
                    w = min(live, key=lambda x: len(x.inflight))
                    break
                await self._capacity.wait()
        job.started = time.monotonic()
        w.inflight.append(job)
        head = pack((JOB, job.parts[0]), *job.parts[1:])  # the records' blobs follow the header as they are
        try:
            await self._send(w, head)
        except (ConnectionError, OSError):
            pass  # the reader notices the death and re-dispatches

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for w in self.workers:
                if not w.alive or not w.inflight:
                    continue
                job = w.inflight[0]
                if job.id >= 0 and now - job.started > self.stage_timeout and w.kill_reason is None:
                    w.kill_reason = f"stage_timeout: a batch ran longer than {self.stage_timeout:g}s on worker {w.index}"
                    log.error("%s; killing it", w.kill_reason)
                    try:
                        os.kill(w.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def healthy(self, max_job_seconds: float) -> bool:
        """Every worker alive and none stuck on one job for longer than ``max_job_seconds``."""
        now = time.monotonic()
        for w in self.workers:
            if not w.alive:
                return False
            if w.inflight and w.inflight[0].id >= 0 and now - w.inflight[0].started > max_job_seconds:
                return False
        return True

    def busy(self) -> list[int]:
        return [w.busy_ns for w in self.workers]

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None]

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop workers: ask, wait, then kill. Safe to call without a loop."""
        self.closing = True
        for t in self._tasks:
            t.cancel()
        for w in self.workers:
            try:
                if w.writer is not None and not w.writer.is_closing():
                    w.writer.close()
                elif w.conn is not None and not w.conn.closed:
                    w.conn.send_bytes(b"".join(pack((STOP, None))))
                    w.conn.close()
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if w.proc is None:
                continue
            w.proc.join(max(deadline - time.monotonic(), 0.01))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(1)
