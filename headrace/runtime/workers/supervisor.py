"""One worker of the pool, kept running: spawn, connect, set up, read answers, notice death, respawn.

Each worker has a supervising task that never gives up while the pool is open. Its life:
``spawn`` (fork server) -> connect its socket -> configure every current segment ->
``ready`` (takes jobs) -> answers until it dies -> ``bury`` -> again. A failure of the
supervisor's own steps (no file descriptor left at a respawn, a segment whose ``setup()``
fails, a worker dying while it sets up) is logged, counted
(``headrace_worker_start_failures_total``) and retried with backoff; meanwhile the worker
takes no job (jobs wait for a worker that can run them) and the pool is not ``ready``.

Death is noticed by EOF on the worker's socket, or by its process sentinel (a grandchild a
stage forked keeps the socket open after the worker died): then our reading side of the
socket is shut down, so answers already sent are still read, then EOF. At a death, only the
job whose id is in the worker's shared slot was executing and is blamed (``WorkerCrashed``);
every other job it held is dispatched again, unblamed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from headrace.contract.backoff import Backoff
from headrace.errors import describe_exception
from headrace.runtime.workers.jobs import CONFIGURE_JOB, Job, JobFailed, WorkerCrashed
from headrace.runtime.workers.proc import EXIT_GRACE, death, kill, reap, shutdown_transport
from headrace.runtime.workers.program import SegmentSpec
from headrace.runtime.workers.wire import FRAME, FRAME64, Response, pack, unpack_header
from headrace.runtime.workers.worker import CONFIGURE, IDLE, MEMORY_ERROR, worker_main

if TYPE_CHECKING:
    from headrace.runtime.workers.pool import WorkerPool

log = logging.getLogger("headrace.pool")
SOCKET_BUFFER = 4 << 20  # a few batches fit, so a job is one write and one read
State = Literal["down", "starting", "ready", "retiring"]


class StartFailed(Exception):
    """A worker could not be spawned, connected or set up."""


class WorkerSupervisor:
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.slot: Any = pool.ctx.RawArray("q", 1)  # id of the job the worker executes, or IDLE
        self.proc: Any = None
        self.conn: Any = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.inflight: deque[Job] = deque()
        self.state: State = "down"
        self.alive = False  # the process runs (as far as the parent knows)
        self.error: str | None = None  # why the last start failed; None once it became ready
        self.busy_ns = 0  # CPU time of the jobs answered
        self.occupied_ns = 0  # wall time they were in hand (``Response.wall_ns``)
        self.kill_reason: str | None = None
        self.reads_memory = False  # its jobs' records are read from our memory (memread), not sent (said at its set-up)
        self.recycling: str | None = None
        self.spawned = 0.0  # when the current process was started (monotonic)
        self.first_try = asyncio.Event()  # set once the first start finished or failed
        self.task: asyncio.Task[None] | None = None
        self._sentinel: int | None = None
        self._jobs: Any = None  # metric children, resolved once
        self._job_events: Any = None
        self._job_secs: Any = None

    # -- the supervising task ------------------------------------------------------------------
    async def run(self) -> None:
        backoff = Backoff(initial=0.1, maximum=5.0)
        while not self.pool.closing:
            try:
                await self._life(backoff)
            except asyncio.CancelledError:
                raise
            except Exception:  # a fault of the supervisor itself must not end the worker for good
                delay = backoff.next()
                log.exception("supervising worker %d failed; retrying in %.1fs", self.index, delay)
                while self.inflight:  # what it held is not lost, nor answered by the next worker
                    self._requeue(self.inflight.popleft())
                await asyncio.sleep(delay)

    async def _life(self, backoff: Backoff) -> None:
        """Spawn, serve until the worker is gone, bury; after a failed start, wait a backoff."""
        failure = None
        try:
            if self.proc is None:
                self.spawn()
            await self._serve(backoff)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = str(exc) if isinstance(exc, StartFailed) else describe_exception(exc)
        if failure is not None:
            self.error = failure  # before the first await: the pool is not ready from now on
        self.first_try.set()
        if self.pool.closing:
            return
        await self.bury(failure)
        if failure is not None:
            delay = backoff.next()
            self.pool.count("headrace_worker_start_failures_total", str(self.index))
            log.error("worker %d could not be started: %s; retrying in %.1fs", self.index, failure, delay)
            await asyncio.sleep(delay)

    def _set_state(self, state: State) -> None:
        self.state = state
        if self.pool.metrics is not None:
            self.pool.metrics["headrace_worker_up"].labels(str(self.index)).set(1 if state == "ready" else 0)

    def spawn(self) -> None:
        """Start the process (before the loop runs, or from the loop's thread: the fork server
        dies with the thread that started it)."""
        ctx = self.pool.ctx
        parent, child = ctx.Pipe(duplex=True)
        try:
            proc = ctx.Process(target=worker_main, args=(child, self.index, os.getpid(), self.slot, self.pool.max_rss, self.pool.keep_heap, self.pool.nice),
                               name=f"headrace-worker-{self.index}", daemon=True)  # fmt: skip
            proc.start()
        except BaseException:
            parent.close()
            child.close()
            raise
        child.close()
        self.slot[0] = IDLE
        self.spawned = time.monotonic()
        self.proc, self.conn, self.alive, self.kill_reason, self.recycling = proc, parent, True, None, None
        self.reads_memory = False  # until its set-up says otherwise
        self._set_state("starting")

    async def _serve(self, backoff: Backoff) -> None:
        """Connect, set up, take jobs; returns when the worker is gone."""
        await self._connect()
        reader = asyncio.create_task(self._read(), name=f"headrace-worker-{self.index}-reader")
        try:
            if self.pool.specs:
                errors = await self.configure(self.pool.specs)
                if errors:
                    raise StartFailed("setup failed: " + "; ".join(errors))
            if reader.done():
                raise StartFailed(f"worker {self.index} died while it set up")
            self._set_state("ready")
            self.error = None
            backoff.reset()
            self.first_try.set()
            await self.pool.wake()
            await reader
        finally:
            reader.cancel()

    async def _connect(self) -> None:
        sock = socket.socket(fileno=os.dup(self.conn.fileno()))
        try:
            sock.setblocking(False)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1 << 26)
        except BaseException:
            sock.close()
            raise
        self.conn.close()
        self._sentinel = self.proc.sentinel
        asyncio.get_running_loop().add_reader(self._sentinel, self._exited)

    def _exited(self) -> None:
        """The process is gone (its sentinel): end our reading side, so that what it sent is
        still read and then EOF comes even if a grandchild holds the socket open."""
        self._forget_sentinel()
        self.alive = False
        self._shutdown(socket.SHUT_RD)

    def _shutdown(self, how: int) -> None:
        shutdown_transport(self.writer, how)

    def _forget_sentinel(self) -> None:
        if self._sentinel is not None:
            asyncio.get_running_loop().remove_reader(self._sentinel)
            self._sentinel = None

    # -- messages --------------------------------------------------------------------------------
    async def configure(self, specs: list[SegmentSpec], drop: list[str] | None = None) -> list[str]:
        """Set up ``specs`` and tear down ``drop`` in the worker; its errors ([] when it died meanwhile)."""
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        job = Job(CONFIGURE_JOB, "", pack((CONFIGURE, (specs, drop or [], self.pool.memory_probe()))), fut)
        self.inflight.append(job)
        await self.send(job.parts)
        return await fut  # type: ignore[return-value]

    async def send(self, parts: list[Any]) -> None:
        """Frame and write one message. ``ConnectionResetError`` when the socket is closed already:
        the worker died a moment ago and its supervisor has not buried it yet (uvloop raises
        RuntimeError on a write to a closed transport; asyncio only logs it)."""
        writer = self.writer
        if writer is None or writer.is_closing():
            raise ConnectionResetError(f"worker {self.index}'s socket is closed")
        n = sum(len(p) for p in parts)
        try:
            writer.write(FRAME.pack(n) if n < 0x7FFFFFFF else FRAME.pack(-1) + FRAME64.pack(n))
            writer.writelines(parts)
        except RuntimeError as exc:
            raise ConnectionResetError(f"worker {self.index}'s socket is closed: {exc}") from None
        await writer.drain()

    async def _read(self) -> None:
        assert self.reader is not None
        try:
            while True:
                (n,) = FRAME.unpack(await self.reader.readexactly(FRAME.size))
                if n == -1:
                    (n,) = FRAME64.unpack(await self.reader.readexactly(FRAME64.size))
                self._answered(await self.reader.readexactly(n))
                await self.pool.wake()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for job in self.inflight:  # set-ups still waiting for a reply: the next worker gets every segment
                if job.id == CONFIGURE_JOB and not job.future.done():
                    job.future.set_result([])  # type: ignore[arg-type]

    def _answered(self, msg: bytes) -> None:
        if not self.inflight:  # out of step with us: it is given up on (killed and replaced)
            raise RuntimeError(f"worker {self.index} answered a job it was not given")
        job = self.inflight.popleft()
        if self.inflight:  # the worker starts on the next job now: stage_timeout counts from here, not from its dispatch
            self.inflight[0].started = time.monotonic()
        try:
            header, start = unpack_header(msg)
        except BaseException as exc:  # a value a stage made: unpickling it here failed (or ran its code, which raised)
            why = f"the worker's answer cannot be read in the parent: {describe_exception(exc)}"
            if job.id == CONFIGURE_JOB:
                job.future.set_result([why])  # type: ignore[arg-type]
            elif not job.future.done():
                job.future.set_exception(JobFailed(why))
            return
        if job.id == CONFIGURE_JOB:  # ("configured", errors, why it cannot read our memory or None)
            self.reads_memory = self.pool.memory_read_by(self.index, header[2])
            job.future.set_result(header[1])
            return
        if header.unread is not None:  # nothing ran: the job goes again, through the socket from now on
            self.reads_memory = self.pool.memory_read_by(self.index, header.unread)
            if not job.future.done():
                self.pool.redispatch(job, counted=False)  # not a worker's death: not headrace_worker_redispatched_batches_total
            return
        header.attach(msg, start)
        self.busy_ns += header.cpu_ns
        self.occupied_ns += header.wall_ns
        records = self._count_job(job, header)
        if header.recycle:
            self._recycle(header.recycle)
        if job.future.done():
            return
        if header.recycle == MEMORY_ERROR and (records > 1 or header.fatal is not None):
            # a worker short of memory fails the records after the culprit too: run them again, in
            # fresh workers, until the culprit is alone (its MemoryError is then its own)
            why = header.fatal.strip().splitlines()[-1] if header.fatal else "a stage raised MemoryError"
            job.future.set_exception(WorkerCrashed(f"worker {self.index} ran out of memory ({why})"))
        elif header.fatal is None:
            job.future.set_result(header)
        else:
            job.future.set_exception(JobFailed(header.fatal))

    def _count_job(self, job: Job, header: Response) -> int:
        """Count the job done (its events, its CPU and wall time); its number of records."""
        req = job.parts[0]
        records = len(req.lens) // 4 if req.lens else len(req.values or ())
        if self.pool.metrics is not None:
            if self._jobs is None:
                self._jobs = self.pool.metrics["headrace_worker_jobs_total"].labels(str(self.index))
                self._job_events = self.pool.metrics["headrace_worker_job_events_total"].labels(str(self.index))
                self._job_secs = (self.pool.metrics["headrace_worker_busy_seconds_total"].labels(str(self.index)),
                                  self.pool.metrics["headrace_worker_occupied_seconds_total"].labels(str(self.index)))  # fmt: skip
            self._jobs.inc()
            self._job_events.inc(records)
            self._job_secs[0].inc(header.cpu_ns / 1e9)
            self._job_secs[1].inc(header.wall_ns / 1e9)
        return records

    def _recycle(self, reason: str) -> None:
        """The worker exits after this answer: the jobs queued behind it were never started."""
        self.recycling = reason
        self._set_state("retiring")
        self.pool.count("headrace_worker_recycles_total", str(self.index), reason)
        log.warning("worker %d recycles itself (%s); %d queued batch(es) go to other workers", self.index, reason,
                    sum(j.id != CONFIGURE_JOB for j in self.inflight))  # fmt: skip
        queued = list(self.inflight)
        self.inflight.clear()
        for job in queued:
            self._requeue(job)

    # -- death -----------------------------------------------------------------------------------
    async def bury(self, failure: str | None) -> None:
        """The worker is gone or given up on: make sure its process ended, blame the job it was
        executing (only that one), and dispatch the others again."""
        self._set_state("down")
        self.alive = False
        self._forget_sentinel()
        if self.writer is not None:
            self.writer.close()
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            grace = EXIT_GRACE if failure is None else 0.0  # a worker given up on is killed at once
            code = await asyncio.get_running_loop().run_in_executor(None, reap, proc, grace)
        executing, self.slot[0] = self.slot[0], IDLE
        cause = self.kill_reason or failure or death(self.index, code)
        if self.recycling is None:
            self.pool.restarts += 1
            self.pool.count("headrace_worker_restarts_total", str(self.index))
            if failure is None:
                log.error("%s; respawning and re-dispatching %d in-flight batch(es)", cause, sum(j.id != CONFIGURE_JOB for j in self.inflight))
        while self.inflight:
            job = self.inflight.popleft()
            if job.id == executing and job.id != IDLE and not job.future.done():
                job.future.set_exception(WorkerCrashed(cause))
            else:
                self._requeue(job)
        self.writer = self.reader = None
        await self.pool.wake()

    def _requeue(self, job: Job) -> None:
        if job.id == CONFIGURE_JOB:
            if not job.future.done():
                job.future.set_result([])  # type: ignore[arg-type]  # the next worker gets every segment
            return
        if not job.future.done():
            self.pool.redispatch(job)

    def stop(self) -> None:
        """Ask the worker to stop: EOF on its socket (it finishes its job and tears down);
        ``join`` later. Safe without a loop."""
        try:
            if self.writer is not None and not self.writer.is_closing():
                self._shutdown(socket.SHUT_WR)  # now, not when the loop would close the transport
                self.writer.close()
            elif self.conn is not None and not self.conn.closed:
                self.conn.close()
        except Exception:  # the loop that owned the transport is closed already: the process exit closes the socket
            pass

    def join(self, timeout: float) -> None:
        if self.proc is not None:
            reap(self.proc, timeout)

    def kill(self, reason: str) -> None:
        """Kill the worker for ``reason`` (its executing job is blamed with it)."""
        self.kill_reason = reason
        log.error("%s; killing it", reason)
        if self.proc is not None:
            kill(self.proc)

