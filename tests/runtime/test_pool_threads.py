"""The worker pool's parent side (``WorkerPool``, ``WorkerSupervisor``) with a process context whose
"processes" are threads of the test: dispatch, blame of the one job a dying worker executed,
re-dispatch of the others, respawn with every segment, a segment that cannot be set up, shutdown.

The pool takes its process context as an argument (``WorkerPool(..., context=ctx)``) and kills a
worker through its process object (``proc.kill()``), so a thread can stand in: "killing" one shuts
its connection. Fake pids lie beyond any pid_max, so nothing here can signal a real process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import threading
from array import array
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import multiprocess
import pytest
from multiprocess.connection import Connection

from headrace.metrics.defs import Metrics
from headrace.plugins.operators.python import PythonOperator
from headrace.runtime.workers import memread
from headrace.runtime.workers.pool import WorkerCrashed, WorkerPool
from headrace.runtime.workers.program import NodeDef, SegmentSpec
from headrace.runtime.workers.wire import Request, Response, pack, unpack_header
from headrace.runtime.workers.worker import CONFIGURE, IDLE, JOB, _answer, _configure, _execute

STAGE = """
import threading

class Stage:
    def setup(self):
        if getattr(threading.current_thread(), "broken_setup", False):
            raise RuntimeError("the resource is gone")

    def process(self, event, meta):
        if event.get("do") == "hang":
            import time
            time.sleep(event["seconds"])
        event["worker"] = threading.current_thread().name
        return event
"""

FAKE_PIDS = itertools.count(2**30)  # beyond any pid_max: os.kill on one fails with ProcessLookupError, never hits a process


class ThreadWorker:
    """A worker "process" that is a thread: it serves its end of the pipe as ``worker_main`` does
    (configure, execute, answer, with the executing job's id in the slot), and dies on a record
    that says ``"die"`` (the connection closed, no answer, exit code -9)."""

    def __init__(self, target: Any, args: tuple[Any, ...], name: str, daemon: bool) -> None:
        self.conn, self.index, _daemon_pid, self.slot, _max_rss, _keep_heap, _nice = args
        self.name = name
        self.pid = next(FAKE_PIDS)
        self.exitcode: int | None = None
        self.sentinel, self._alive_fd = os.pipe()  # readable (EOF) once the "process" ended
        self.thread: threading.Thread | None = None
        self.broken_setup = False
        self.own: Connection | None = None
        self.killed = False  # a SIGKILL stops a process where it is: the thread then touches nothing more

    def start(self) -> None:
        self.own = conn = Connection(os.dup(self.conn.fileno()))  # a fork copies the descriptor; the parent closes its own
        self.thread = threading.Thread(target=self._main, args=(conn,), name=self.name, daemon=True)
        self.thread.broken_setup = self.broken_setup  # type: ignore[attr-defined]
        self.thread.start()

    def _main(self, conn: Connection) -> None:
        programs: dict[str, Any] = {}
        code = 0
        try:
            while True:
                try:
                    msg = conn.recv_bytes()
                except (EOFError, OSError):
                    break
                (kind, payload), start = unpack_header(msg)
                if kind == CONFIGURE:  # a thread reads its own process's memory: its jobs come by reference, as a worker's
                    reads = memread.probe(os.getpid(), *payload[2]) if payload[2] is not None else "not asked to"
                    conn.send_bytes(b"".join(pack(("configured", _configure(programs, payload[0], payload[1]), reads))))
                elif kind == JOB:
                    req: Request = payload
                    req.blob, req.start = msg, start
                    if req.remote:
                        req.blob, req.start = memread.read(os.getpid(), req.remote), 0
                        msg, start = req.blob, 0
                    self.slot[0] = req.job_id
                    if b'"die"' in bytes(memoryview(msg)[start:]):
                        code = -9
                        break
                    resp = _execute(programs, req)
                    if self.killed:  # "killed" while it executed: the slot still names the job, nothing answers
                        code = -9
                        break
                    self.slot[0] = IDLE
                    conn.send_bytes(_answer(resp))
        finally:
            conn.close()
            self.exitcode = code
            os.close(self._alive_fd)

    def join(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def kill(self) -> None:
        """SIGKILL as far as a thread can take it: its connection is shut, so it ends."""
        self.killed = True
        try:
            sock = socket.socket(fileno=os.dup(self.own.fileno()))  # type: ignore[union-attr]
        except (OSError, AttributeError):  # it ended already
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()

    def release(self) -> None:
        self.join(5)
        os.close(self.sentinel)


class ThreadContext:
    """The process context the pool uses (``multiprocess.get_context``), with threads for processes."""

    def __init__(self) -> None:
        self.workers: list[ThreadWorker] = []
        self.broken_setup = False

    def RawArray(self, typecode: str, size: int) -> list[int]:  # the name the pool calls
        return [0] * size

    def Pipe(self, duplex: bool = True) -> tuple[Any, Any]:
        return multiprocess.Pipe(duplex)  # a socket pair: no process

    def Process(self, target: Any, args: tuple[Any, ...], name: str, daemon: bool) -> ThreadWorker:
        worker = ThreadWorker(target, args, name, daemon)
        worker.broken_setup = self.broken_setup
        self.workers.append(worker)
        return worker

    def set_forkserver_preload(self, modules: list[str]) -> None:
        pass


def segment(tmp_path: Path, sid: str = "seg") -> SegmentSpec:
    (tmp_path / "threadstage.py").write_text(STAGE)
    cfg = PythonOperator.Config.model_validate({"fn": "threadstage:Stage"})
    return SegmentSpec(sid, [NodeDef("s0", "python", cfg, tmp_path)])


def job(*records: dict[str, Any]) -> list[Any]:
    blobs = [json.dumps(r).encode() for r in records]
    return [Request(0, "seg", "json", array("I", map(len, blobs)).tobytes(), b"", None, array("q", [0] * len(blobs)).tobytes()),
            b"".join(blobs)]  # fmt: skip


def workers_of(resp: Response) -> list[str]:
    (out,) = [o for o in resp.outputs if o.port == "out"]
    lens = array("i")
    lens.frombytes(out.lens)
    names, pos = [], out.start
    for n in lens:
        names.append(json.loads(bytes(resp.blob[pos : pos + n]))["worker"])
        pos += n
    return names


@asynccontextmanager
async def thread_pool(tmp_path: Path, size: int = 1, **options: Any) -> AsyncIterator[tuple[WorkerPool, ThreadContext]]:
    ctx = ThreadContext()
    pool = WorkerPool(size, Metrics(), context=ctx, **options)
    pool.start()
    try:
        await pool.attach()
        await pool.configure(add=[segment(tmp_path)])
        yield pool, ctx
    finally:
        pool.shutdown()
        for worker in ctx.workers:
            worker.release()


def counter(pool: WorkerPool, name: str, *labels: str) -> float:
    assert pool.metrics is not None
    metric = pool.metrics[name]
    return float((metric.labels(*labels) if labels else metric)._value.get())


def test_jobs_go_to_the_least_loaded_worker_within_max_inflight(tmp_path: Path) -> None:
    async def main() -> None:
        async with thread_pool(tmp_path, size=2, max_inflight=1) as (pool, _):
            most = 0

            async def watch() -> None:
                nonlocal most
                while True:
                    most = max(most, *(len(w.inflight) for w in pool.workers))
                    await asyncio.sleep(0)

            watcher = asyncio.ensure_future(watch())
            answers = await asyncio.wait_for(asyncio.gather(*(pool.execute("seg", job({"id": i})) for i in range(12))), 10)
            watcher.cancel()
            names = [n for a in answers for n in workers_of(a)]
            assert set(names) == {"headrace-worker-0", "headrace-worker-1"}, "both workers took jobs"
            assert most == 1, "never more than max_inflight jobs queued on a worker"

    asyncio.run(main())


def test_a_dying_worker_fails_only_the_job_it_executed_and_is_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        async with thread_pool(tmp_path, size=1, max_inflight=3) as (pool, ctx):
            doomed = asyncio.ensure_future(pool.execute("seg", job({"id": 0, "do": "die"})))
            await asyncio.sleep(0)  # dispatched first: the worker executes it
            queued = [asyncio.ensure_future(pool.execute("seg", job({"id": i}))) for i in (1, 2)]
            with pytest.raises(WorkerCrashed, match="killed by signal 9"):
                await asyncio.wait_for(doomed, 10)
            answers = await asyncio.wait_for(asyncio.gather(*queued), 10)
            assert [workers_of(a) for a in answers] == [["headrace-worker-0"]] * 2, "run again, by the respawned worker"
            assert len(ctx.workers) == 2 and ctx.workers[0].exitcode == -9
            assert pool.restarts == 1 and counter(pool, "headrace_worker_restarts_total", "0") == 1
            assert counter(pool, "headrace_worker_redispatched_batches_total") == 2, "the two it held but had not started"
            assert pool.ready and pool.down() == []

    asyncio.run(main())


def test_a_segment_that_cannot_be_set_up_is_refused_and_forgotten(tmp_path: Path) -> None:
    async def main() -> None:
        async with thread_pool(tmp_path, size=2) as (pool, _):
            bad = segment(tmp_path, "bad")
            bad.nodes[0].config = PythonOperator.Config.model_validate({"fn": "threadstage:Missing"})
            with pytest.raises(RuntimeError, match=r"bad: .*Missing"):
                await pool.configure(add=[bad])
            assert [s.id for s in pool.specs] == ["seg"]
            (answer,) = await asyncio.gather(pool.execute("seg", job({"id": 1})))
            assert len(workers_of(answer)) == 1, "the segments that were there still run"

    asyncio.run(main())


def test_a_worker_whose_setup_fails_is_not_ready_and_takes_no_job(tmp_path: Path) -> None:
    async def main() -> None:
        async with thread_pool(tmp_path, size=1) as (pool, ctx):
            ctx.broken_setup = True
            dying = asyncio.ensure_future(pool.execute("seg", job({"id": 0, "do": "die"})))
            with pytest.raises(WorkerCrashed):
                await asyncio.wait_for(dying, 10)
            waiting = asyncio.ensure_future(pool.execute("seg", job({"id": 1})))
            deadline = asyncio.get_running_loop().time() + 10
            while counter(pool, "headrace_worker_start_failures_total", "0") < 2:
                assert asyncio.get_running_loop().time() < deadline, "the failed setup is retried"
                await asyncio.sleep(0.01)
            assert not pool.ready and pool.down() == [0] and not waiting.done()
            assert "the resource is gone" in (pool.states()[0]["error"] or "")
            ctx.broken_setup = False
            answer = await asyncio.wait_for(waiting, 15)
            assert len(workers_of(answer)) == 1 and pool.ready

    asyncio.run(main())


def test_a_batch_over_stage_timeout_kills_its_worker_and_only_it_is_blamed(tmp_path: Path) -> None:
    async def main() -> None:
        async with thread_pool(tmp_path, size=1, max_inflight=3, stage_timeout=0.2) as (pool, ctx):
            hung = asyncio.ensure_future(pool.execute("seg", job({"id": 0, "do": "hang", "seconds": 1.0})))
            await asyncio.sleep(0)  # dispatched first: the worker executes it
            queued = asyncio.ensure_future(pool.execute("seg", job({"id": 1})))
            with pytest.raises(WorkerCrashed, match=r"stage_timeout: a batch ran longer than 0\.2s on worker 0"):
                await asyncio.wait_for(hung, 10)
            (names,) = [workers_of(await asyncio.wait_for(queued, 10))]
            assert names == ["headrace-worker-0"], "the job it held but had not started ran on the respawned worker"
            assert len(ctx.workers) == 2 and pool.restarts == 1

    asyncio.run(main())


def test_shutdown_ends_every_worker(tmp_path: Path) -> None:
    async def main() -> ThreadContext:
        async with thread_pool(tmp_path, size=2) as (pool, ctx):
            await pool.execute("seg", job({"id": 1}))
        return ctx

    ctx = asyncio.run(main())
    assert [w.exitcode for w in ctx.workers] == [0, 0], "each saw the end of its pipe and left"
