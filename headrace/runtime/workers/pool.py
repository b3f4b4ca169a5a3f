"""The worker pool: per-core processes that run worker segments, supervised by the parent.

Workers are forked from a fork server started before the event loop (so respawns
later never fork the busy parent). Each worker has one duplex pipe; the parent talks
to it with asyncio streams using the same length framing as ``Connection``. At most
``max_inflight`` jobs are queued per worker, and only on workers that are set up
(``supervisor.WorkerSupervisor`` keeps each one running). A dead worker is respawned and
its in-flight jobs re-dispatched; the job it was executing fails with ``WorkerCrashed``
so the caller can bisect it; a job running past ``stage_timeout`` kills its worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import multiprocess

from headrace.errors import describe_exception
from headrace.metrics.defs import Metrics
from headrace.runtime.workers import memread
from headrace.runtime.workers.jobs import CONFIGURE_JOB, Job, JobFailed, WorkerCrashed
from headrace.runtime.workers.program import SegmentSpec
from headrace.runtime.workers.supervisor import WorkerSupervisor
from headrace.runtime.workers.wire import Response, pack
from headrace.runtime.workers.worker import JOB, MAX_RSS, MEMORY_ERROR

__all__ = ["JobFailed", "WorkerCrashed", "WorkerPool"]

log = logging.getLogger("headrace.pool")
# imported by the fork server before it forks anyone: it dies with the daemon, and workers start with these loaded
FORKSERVER_PRELOAD = ["headrace.runtime.workers.forkserver_init", "headrace.runtime.workers.worker"]


class WorkerPool:
    def __init__(self, size: int, metrics: Metrics | None = None, max_inflight: int = 3, stage_timeout: float = 60.0,
                 max_rss: int = 0, context: Any = None, keep_heap: bool = True, nice: int = 0, job_transport: str = "memory") -> None:  # fmt: skip
        self.size = size
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.stage_timeout = stage_timeout
        self.max_rss = max_rss  # bytes; 0: workers are not recycled for their size
        # workers keep freed buffers for the next ones (runtime/heap.py): not under a memory limit, where
        # the free memory they would hold counts in their resident size (a recycle after every job, a budget never met)
        self.keep_heap = keep_heap and not max_rss
        self.nice = nice  # added to each worker's nice value (daemon.worker_nice)
        # daemon.job_transport: "memory", workers read jobs' records out of this process (memread) when the kernel lets them
        self.job_transport = job_transport
        self._probe = os.urandom(32)  # what a worker reads back at its set-up to show it can
        self._unread: str | None = None  # why the last worker that could not read our memory could not (logged once each reason)
        # processes come from ``context`` (multiprocess's API: Process, Pipe, RawArray); tests pass one of threads
        self.ctx = context if context is not None else multiprocess.get_context("forkserver")
        self.workers = [WorkerSupervisor(self, i) for i in range(size)]
        self.specs: list[SegmentSpec] = []
        self._next_id = 0
        self._capacity: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._redispatch: set[asyncio.Task[None]] = set()
        self.closing = False
        self.restarts = 0
        if metrics is not None:  # every series from the start, at 0: increase() sees the first one
            for w in self.workers:
                label = str(w.index)
                metrics["headrace_worker_up"].labels(label).set(0)
                metrics["headrace_worker_start_failures_total"].labels(label)
                for cause in (MEMORY_ERROR, MAX_RSS):
                    metrics["headrace_worker_recycles_total"].labels(label, cause)

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the fork server and the workers; call before the event loop starts."""
        self.ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
        if self.job_transport == "memory":
            memread.allow_descendants()  # Yama's ptrace_scope 1 lets only ancestors read a process; without Yama a no-op
        for w in self.workers:
            w.spawn()

    async def attach(self) -> None:
        """Wire the workers into the running loop; returns once each was set up, or failed once."""
        self._capacity = asyncio.Condition()
        for w in self.workers:
            w.task = asyncio.create_task(w.run(), name=f"headrace-worker-{w.index}")
            self._tasks.append(w.task)
        self._tasks.append(asyncio.create_task(self._watchdog()))
        await asyncio.gather(*(w.first_try.wait() for w in self.workers))

    async def configure(self, add: list[SegmentSpec] | None = None, drop: list[str] | None = None) -> None:
        """Add segment definitions to every worker (stages are set up there) and drop old ones
        (torn down there). A respawned worker gets all current segments. When a segment cannot
        be set up, the ones added are dropped again and the error is raised."""
        add = add or []
        dropped = set(drop or [])
        if not add and not dropped:
            return  # nothing changed on the workers: do not wait behind their in-flight jobs for an empty reply
        added = {a.id for a in add}
        self.specs = [s for s in self.specs if s.id not in dropped and s.id not in added] + add
        errors = await self._configure_connected(add, list(dropped))
        if errors:
            self.specs = [s for s in self.specs if s.id not in added]
            await self._configure_connected([], list(added))
            raise RuntimeError("; ".join(sorted(set(errors))))

    async def _configure_connected(self, add: list[SegmentSpec], drop: list[str]) -> list[str]:
        # every worker with a socket, set up or setting up: messages keep their order, so one
        # that is still setting up the previous segments gets these after them
        workers = [w for w in self.workers if w.writer is not None and w.state in ("starting", "ready")]
        results = await asyncio.gather(*(w.configure(add, drop) for w in workers), return_exceptions=True)
        errors: list[str] = []
        for r in results:
            if isinstance(r, list):
                errors += r
            # an exception: the worker died meanwhile; its successor is set up with every segment
        return errors

    async def wake(self) -> None:
        """Capacity changed: jobs waiting for a worker look again."""
        assert self._capacity is not None
        async with self._capacity:
            self._capacity.notify_all()

    def count(self, name: str, *labels: str) -> None:
        if self.metrics is not None:
            metric = self.metrics[name]
            (metric.labels(*labels) if labels else metric).inc()

    # -- jobs ----------------------------------------------------------------------------------
    async def execute(self, segment: str, parts: list[Any]) -> Response:
        """Run one job on the least-loaded worker that is set up; waits while none has room.
        ``JobFailed`` when its values cannot be pickled or its answer read, ``WorkerCrashed``
        when its worker died while executing it."""
        self._next_id += 1
        job = Job(self._next_id, segment, parts, asyncio.get_running_loop().create_future())
        parts[0].job_id = job.id  # the worker shows it in its slot while it executes the job
        if self.job_transport == "memory":
            job.located = memread.locate(parts[1:])
        try:
            job.wire = self._wire(job, any(w.reads_memory for w in self.workers))
        except BaseException as exc:  # a value an upstream stage made (in a meta, or the event itself)
            raise JobFailed(f"a value cannot be pickled to go to a worker: {describe_exception(exc)}") from None
        await self._dispatch(job)
        return await job.future

    @staticmethod
    def _wire(job: Job, by_reference: bool) -> list[Any]:
        """The job's message: its records' blobs after the header, or (``by_reference``, when they
        are all ``bytes``) only where they are, for a worker that reads them from our memory."""
        req = job.parts[0]
        job.by_reference = by_reference and job.located is not None
        if job.by_reference:
            req.remote = job.located
            return pack((JOB, req))  # the blobs stay referenced by job.parts until the job is answered or failed
        req.remote = b""
        return pack((JOB, req), *job.parts[1:])  # the records' blobs follow the header as they are

    def memory_probe(self) -> tuple[bytes, bytes] | None:
        """What a worker's set-up carries to try reading our memory: (where, what is there), or None
        (``job_transport: socket``, or this process cannot say where its bytes are)."""
        if self.job_transport != "memory":
            return None
        located = memread.locate([self._probe])
        return (located, self._probe) if located is not None else None

    def memory_read_by(self, index: int, unread: str | None) -> bool:
        """Worker ``index`` said whether it reads our memory (``unread``: why not, None: it does)."""
        if unread is None:
            return True
        if self.job_transport == "memory" and unread != self._unread:  # each new reason once, not once per worker and reload
            self._unread = unread
            log.warning("worker %d gets its jobs through its socket (daemon.job_transport: memory asks it to read them from the "
                        "daemon's memory, but %s); this costs the daemon a copy of every job", index, unread)  # fmt: skip
        return False

    def redispatch(self, job: Job, counted: bool = True) -> None:
        task = asyncio.create_task(self._dispatch(job))
        self._redispatch.add(task)
        task.add_done_callback(self._redispatch.discard)
        if counted:
            self.count("headrace_worker_redispatched_batches_total")

    async def _dispatch(self, job: Job) -> None:
        assert self._capacity is not None
        async with self._capacity:
            while True:
                live = [w for w in self.workers if w.state == "ready" and len(w.inflight) < self.max_inflight]
                if live:
                    w = min(live, key=lambda x: len(x.inflight))
                    break
                await self._capacity.wait()
        if (job.located is not None and w.reads_memory) != job.by_reference:  # pickled the same a moment ago: cannot fail now
            job.wire = self._wire(job, w.reads_memory)
        job.started = time.monotonic()
        w.inflight.append(job)
        try:
            await w.send(job.wire)
        except (ConnectionError, OSError):
            pass  # its supervisor notices the death and dispatches the job again

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                self._kill_overdue(time.monotonic())
            except Exception:  # the watchdog must outlive its own faults
                log.exception("the stage_timeout watchdog failed")

    def _kill_overdue(self, now: float) -> None:
        for w in self.workers:
            if not w.alive or not w.inflight or w.kill_reason is not None:
                continue
            job = w.inflight[0]
            if job.id != CONFIGURE_JOB and now - job.started > self.stage_timeout:
                w.kill(f"stage_timeout: a batch ran longer than {self.stage_timeout:g}s on worker {w.index}")

    # -- state ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """False while some worker cannot be started or set up (it is retried with backoff), or
        has been setting up for longer than ``stage_timeout``."""
        now = time.monotonic()
        return not any(w.error is not None or (w.state == "starting" and now - w.spawned > self.stage_timeout) for w in self.workers)

    def healthy(self, max_job_seconds: float) -> bool:
        """Ready, and no worker stuck on one job for longer than ``max_job_seconds``."""
        if not self.ready:
            return False
        now = time.monotonic()
        return not any(w.inflight and w.inflight[0].id != CONFIGURE_JOB and now - w.inflight[0].started > max_job_seconds for w in self.workers)

    def down(self) -> list[int]:
        """Indices of the workers that cannot take jobs now (dead, respawning, setting up)."""
        return [w.index for w in self.workers if w.state != "ready"]

    def states(self) -> dict[int, dict[str, Any]]:
        """Per worker: ``state`` (down, starting, ready, retiring), ``pid`` (None unless alive), and
        ``error``, why its last start failed (None unless it is retrying)."""
        return {w.index: {"state": w.state, "pid": w.proc.pid if w.alive and w.proc is not None else None, "error": w.error}
                for w in self.workers}  # fmt: skip

    def busy(self) -> list[int]:
        return [w.busy_ns for w in self.workers]

    def occupied(self) -> list[int]:
        return [w.occupied_ns for w in self.workers]

    def pids(self) -> list[int]:
        """PIDs of the live workers only."""
        return [w.proc.pid for w in self.workers if w.alive and w.proc is not None]

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop workers: ask, wait, then kill. Safe to call without a loop."""
        self.closing = True
        for t in self._tasks:
            t.cancel()
        for w in self.workers:
            w.stop()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(deadline - time.monotonic(), 0.01))
