"""The worker pool's supervision, with real worker processes and no daemon around it.

Each test runs a ``WorkerPool`` inside its own event loop, configures one segment made of
the ``Stage`` class below, and breaks a worker the way issue 12 found: killed while it sets
up, dead while a grandchild keeps its socket open, answering something the parent cannot
read, set up failing after a respawn, out of memory, too large.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from array import array
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from headrace.metrics.defs import Metrics
from headrace.plugins.operators.python import PythonOperator
from headrace.runtime.workers.pool import WorkerCrashed, WorkerPool
from headrace.runtime.workers.program import NodeDef, SegmentSpec
from headrace.runtime.workers.wire import Request, Response
from tests.support.daemon import alive

STAGE = '''
import os, pathlib, signal, time

FOLDER = pathlib.Path(__file__).parent
HOG = []


class Unloadable(Exception):
    """Pickles, but unpickling calls Unloadable(message) with one argument: TypeError."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


class Stage:
    def setup(self):
        (FOLDER / f"setup-{os.getpid()}").touch()
        if (FOLDER / "broken-setup").exists():
            raise RuntimeError("the resource is gone")
        while (FOLDER / "slow-setup").exists():
            time.sleep(0.01)

    def process(self, event, meta):
        do = event.get("do")
        event["pid"] = os.getpid()
        if do == "sleep":
            time.sleep(event["s"])
        elif do == "fork-and-die":
            child = os.fork()
            if child == 0:  # the grandchild keeps the worker's socket open
                time.sleep(60)
                os._exit(0)
            (FOLDER / f"grandchild-{child}").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        elif do == "unloadable":
            meta["x"] = Unloadable(1, 2)
        elif do == "memory":
            raise MemoryError("no room")
        elif do == "grow":
            HOG.append(bytearray(event["mb"] << 20))
        return event
'''


def segment(tmp_path: Path) -> SegmentSpec:
    (tmp_path / "poolstage.py").write_text(STAGE)
    cfg = PythonOperator.Config.model_validate({"fn": "poolstage:Stage"})
    return SegmentSpec("seg", [NodeDef("s0", "python", cfg, tmp_path)])


def job(*records: dict[str, Any]) -> list[Any]:
    blobs = [json.dumps(r).encode() for r in records]
    lens = array("I", map(len, blobs)).tobytes()
    return [Request(0, "seg", "json", lens, b"", None, array("q", [0] * len(blobs)).tobytes()), b"".join(blobs)]


def out_pids(resp: Response) -> list[int]:
    """The pids the stage wrote into the events that left on ``out``."""
    (out,) = [o for o in resp.outputs if o.port == "out"]
    lens = array("i")
    lens.frombytes(out.lens)
    pids, pos = [], out.start
    for n in lens:
        pids.append(json.loads(bytes(resp.blob[pos : pos + n]))["pid"])
        pos += n
    return pids


async def until(predicate: Callable[[], Any], timeout: float = 20, what: str = "a condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)
    return value


@asynccontextmanager
async def running_pool(tmp_path: Path, size: int = 1, **options: Any) -> AsyncIterator[WorkerPool]:
    pool = WorkerPool(size, Metrics(), **options)
    pool.start()
    try:
        await pool.attach()
        await pool.configure(add=[segment(tmp_path)])
        yield pool
    finally:
        pool.shutdown()
        for mark in tmp_path.glob("grandchild-*"):
            try:
                os.kill(int(mark.name.split("-")[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass


def setups(tmp_path: Path) -> set[int]:
    return {int(p.name.split("-")[1]) for p in tmp_path.glob("setup-*")}


def counter(pool: WorkerPool, name: str, *labels: str) -> float:
    assert pool.metrics is not None
    return float(pool.metrics[name].labels(*labels)._value.get())


def test_a_worker_killed_while_it_sets_up_blames_no_job(tmp_path: Path) -> None:
    """The job queued behind a respawned worker's configure never started: it is not the culprit."""

    async def main() -> None:
        async with running_pool(tmp_path) as pool:
            (tmp_path / "slow-setup").touch()
            first = pool.pids()[0]
            os.kill(first, signal.SIGKILL)
            respawned = await until(lambda: setups(tmp_path) - {first}, what="the respawned worker's setup")
            task = asyncio.ensure_future(pool.execute("seg", job({"id": 1})))
            await asyncio.sleep(0.2)  # the job is submitted while the worker still sets up
            os.kill(respawned.pop(), signal.SIGKILL)
            (tmp_path / "slow-setup").unlink()
            resp = await asyncio.wait_for(task, 20)
            assert len(out_pids(resp)) == 1

    asyncio.run(main())


def test_a_dead_worker_is_seen_even_when_a_grandchild_holds_its_socket(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_pool(tmp_path) as pool:
            t0 = time.monotonic()
            with pytest.raises(WorkerCrashed):
                await asyncio.wait_for(pool.execute("seg", job({"do": "fork-and-die"})), 10)
            assert time.monotonic() - t0 < 5
            resp = await asyncio.wait_for(pool.execute("seg", job({"id": 2})), 10)
            assert out_pids(resp) == pool.pids()

    asyncio.run(main())


def test_an_answer_the_parent_cannot_read_fails_its_job_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_pool(tmp_path) as pool:
            worker = pool.pids()[0]
            with pytest.raises(Exception) as caught:
                await asyncio.wait_for(pool.execute("seg", job({"do": "unloadable"})), 10)
            assert type(caught.value).__name__ == "JobFailed", repr(caught.value)
            assert "cannot be read" in str(caught.value)
            resp = await asyncio.wait_for(pool.execute("seg", job({"id": 3})), 10)
            assert out_pids(resp) == [worker], "the same worker serves on"

    asyncio.run(main())


def test_a_respawned_worker_whose_setup_fails_takes_no_job_until_it_succeeds(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_pool(tmp_path) as pool:
            assert pool.healthy(60)
            (tmp_path / "broken-setup").touch()
            os.kill(pool.pids()[0], signal.SIGKILL)
            await until(lambda: not pool.healthy(60), what="the pool to report itself broken")
            assert not pool.ready
            task = asyncio.ensure_future(pool.execute("seg", job({"id": 4})))
            await until(lambda: counter(pool, "headrace_worker_start_failures_total", "0") >= 2, what="setup retried")
            assert not task.done(), "the job waits for a worker that can run it"
            assert pool.pids() == [] or all(alive(p) for p in pool.pids())
            assert pool.down() == [0]
            (tmp_path / "broken-setup").unlink()
            resp = await asyncio.wait_for(task, 20)
            assert len(out_pids(resp)) == 1
            assert pool.ready and pool.healthy(60) and pool.down() == []

    asyncio.run(main())


def test_a_memory_error_recycles_the_worker_and_blames_nobody(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_pool(tmp_path) as pool:
            first = pool.pids()[0]
            resp = await asyncio.wait_for(pool.execute("seg", job({"do": "memory"})), 10)
            (err,) = [o for o in resp.outputs if o.port == "err"]
            assert err.metas is not None and err.metas[0]["error"]["type"] == "MemoryError"
            second = await until(lambda: pool.pids() and pool.pids()[0] != first and pool.pids()[0], what="a new worker")
            assert counter(pool, "headrace_worker_recycles_total", "0", "memory_error") == 1
            # with others in its job, the records after it may be victims of the worker's state: run again
            with pytest.raises(WorkerCrashed, match="ran out of memory"):
                await asyncio.wait_for(pool.execute("seg", job({"do": "memory"}, {"id": 5})), 10)
            await until(lambda: pool.pids() and pool.pids()[0] != second, what="another new worker")
            assert counter(pool, "headrace_worker_recycles_total", "0", "memory_error") == 2
            assert counter(pool, "headrace_worker_restarts_total", "0") == 0
            resp = await asyncio.wait_for(pool.execute("seg", job({"id": 6})), 10)
            assert out_pids(resp) == pool.pids()

    asyncio.run(main())


def test_a_worker_over_max_rss_is_recycled_after_its_job(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_pool(tmp_path, max_rss=160 << 20) as pool:
            first = pool.pids()[0]
            resp = await asyncio.wait_for(pool.execute("seg", job({"do": "grow", "mb": 16})), 10)
            assert out_pids(resp) == [first]
            assert pool.pids() == [first], "under the limit: kept"
            resp = await asyncio.wait_for(pool.execute("seg", job({"do": "grow", "mb": 170})), 20)
            assert out_pids(resp) == [first], "the job that crossed the limit is delivered"
            await until(lambda: pool.pids() and pool.pids()[0] != first, what="a new worker")
            assert counter(pool, "headrace_worker_recycles_total", "0", "max_rss") == 1

    asyncio.run(main())


def test_status_lists_live_workers_only(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_pool(tmp_path, size=2) as pool:
            (tmp_path / "broken-setup").touch()
            victim = pool.pids()[1]
            os.kill(victim, signal.SIGKILL)
            await until(lambda: pool.down() == [1], what="worker 1 reported down")
            for _ in range(20):
                assert victim not in pool.pids() and all(alive(p) for p in pool.pids())
                await asyncio.sleep(0.02)
            (tmp_path / "broken-setup").unlink()
            await until(lambda: pool.down() == [] and len(pool.pids()) == 2, what="worker 1 back")

    asyncio.run(main())


def test_a_value_that_cannot_be_pickled_fails_its_job_in_the_parent(tmp_path: Path) -> None:
    """An upstream stage on the loop may leave an unpicklable value in a meta: the job fails as a
    whole (the caller narrows it down to the record), and the pool is unharmed."""
    import threading

    async def main() -> None:
        async with running_pool(tmp_path) as pool:
            parts = job({"id": 7})
            parts[0].metas = [{"lock": threading.Lock()}]
            with pytest.raises(Exception) as caught:
                await asyncio.wait_for(pool.execute("seg", parts), 10)
            assert type(caught.value).__name__ == "JobFailed" and "cannot be pickled" in str(caught.value), repr(caught.value)
            resp = await asyncio.wait_for(pool.execute("seg", job({"id": 8})), 10)
            assert out_pids(resp) == pool.pids()

    asyncio.run(main())


def test_a_worker_setting_up_for_longer_than_stage_timeout_makes_the_pool_not_ready(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_pool(tmp_path, stage_timeout=0.5) as pool:
            (tmp_path / "slow-setup").touch()
            os.kill(pool.pids()[0], signal.SIGKILL)
            await until(lambda: pool.down() == [0] and pool.pids(), what="the respawned worker setting up")
            assert pool.ready, "a respawn setting up is not a broken pool yet"
            await until(lambda: not pool.ready, what="not ready after stage_timeout")
            (tmp_path / "slow-setup").unlink()
            await until(lambda: pool.ready and pool.down() == [], what="ready again")

    asyncio.run(main())


def test_a_job_sent_to_a_worker_whose_socket_just_closed_runs_on_its_successor(tmp_path: Path) -> None:
    """CI found it: a worker's socket closed (it died) while the pool still listed it as ready;
    under uvloop the write raised RuntimeError, which failed the whole segment and stopped the
    daemon. The job must instead wait for the respawned worker, like any job of a dead worker."""
    import uvloop

    async def main() -> None:
        async with running_pool(tmp_path) as pool:
            (first,) = pool.pids()
            w = pool.workers[0]
            assert w.state == "ready" and w.writer is not None
            w.writer.transport.abort()  # closed now; its supervisor sees it only on a later loop turn
            resp = await asyncio.wait_for(pool.execute("seg", job({"id": 7})), 20)
            (pid,) = out_pids(resp)
            assert pid != first and pid in pool.pids(), "the successor ran it"
            assert counter(pool, "headrace_worker_restarts_total", "0") == 1

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
