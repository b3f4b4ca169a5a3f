"""The parent side of a worker segment (``PooledChainRunner``) without worker processes: job
sizing from the CPU time workers report, release in order per group, bisection of a job that
kills its worker or fails wherever it runs, and ``ordered: false``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from headrace.runtime import inbox as inbox_module
from headrace.runtime.batch import Batch
from headrace.runtime.onramp import OnrampRunner
from headrace.runtime.workers import segment
from headrace.runtime.workers.segment import LONG_JOB_NS, MIN_JOB_EVENTS, POISON_ATTEMPTS, TARGET_JOB_NS, PooledChainRunner
from tests.runtime.inprocess import InProcessPool, JobFailed, Rig, WorkerCrashed

STAGES = """
def keep(event, meta):
    return event
"""
PIPELINE = '[{op: python, fn: "pooledstages:keep"}]'
NODE = "main.keep"


def rig(tmp_path: Path, pool: InProcessPool, onramp: str = "") -> Rig:
    (tmp_path / "pooledstages.py").write_text(STAGES)
    return Rig(tmp_path, PIPELINE, onramp=onramp, pool=pool)


def records(ids: range, **extra: Any) -> list[bytes]:
    return [json.dumps({"id": i, **extra}).encode() for i in ids]


def ids(got: list[tuple[Any, dict[str, Any]]]) -> list[int]:
    return [value["id"] for value, _ in got]


def runner_of(r: Rig) -> PooledChainRunner:
    assert isinstance(r.runner, PooledChainRunner)
    return r.runner


def test_a_job_is_sized_to_the_cpu_time_workers_report(tmp_path: Path) -> None:
    pool = InProcessPool(size=2)
    pool.cpu_ns = lambda n: n * 1_000_000  # 1 ms per event
    r = rig(tmp_path, pool)
    runner = runner_of(r)
    assert runner.chunk_size(100) == 50, "before any report: one job per worker"

    async def feed(onramp: OnrampRunner) -> None:
        await onramp.records(records(range(100)), ack=1)
        while runner.ns_per_event is None or len(pool.jobs) < 2:
            await asyncio.sleep(0.001)
        await onramp.records(records(range(100, 200)), ack=2)

    asyncio.run(r.run(feed))
    per_job = min(MIN_JOB_EVENTS, LONG_JOB_NS // 1_000_000)  # 1 ms events: jobs of costly events run longer
    assert [len(j) for j in pool.jobs] == [50, 50] + [per_job] * (100 // per_job)
    assert ids(r.got(NODE, "out")) == list(range(200))
    assert r.source.acked == [1, 2]


def test_a_stage_that_sleeps_gets_jobs_sized_to_the_wall_time(tmp_path: Path) -> None:
    """1 us of CPU but 1 ms of wall time per event (a stage sleeping, or blocking on I/O): sized by
    CPU time, a job would hold 4096 events and a worker for 4 s, and every job in flight would hold
    back a drain or a reload as long."""
    pool = InProcessPool(size=2)
    pool.cpu_ns = lambda n: n * 1_000
    pool.wall_ns = lambda n: n * 1_000_000
    r = rig(tmp_path, pool)
    runner = runner_of(r)

    async def feed(onramp: OnrampRunner) -> None:
        await onramp.records(records(range(100)), ack=1)
        while runner.ns_per_event is None or len(pool.jobs) < 2:
            await asyncio.sleep(0.001)
        await onramp.records(records(range(100, 1100)), ack=2)

    asyncio.run(r.run(feed))
    per_job = min(MIN_JOB_EVENTS, LONG_JOB_NS // 1_000_000)
    assert [len(j) for j in pool.jobs] == [50, 50] + [per_job] * (1000 // per_job)
    assert ids(r.got(NODE, "out")) == list(range(1100))


@pytest.mark.parametrize(("ns", "n", "size"), [(TARGET_JOB_NS / 200, 300, 200), (200_000.0, 300, MIN_JOB_EVENTS), (TARGET_JOB_NS / 4, 300, int(LONG_JOB_NS / (TARGET_JOB_NS / 4))),
                                                (LONG_JOB_NS / 2, 100, 2), (1.0, 100, 100), (1e10, 100, 1), (1000.0, 3, 3)])
def test_chunk_size_follows_the_cost_per_event(tmp_path: Path, ns: float, n: int, size: int) -> None:
    runner = runner_of(rig(tmp_path, InProcessPool()))
    runner.ns_per_event = ns
    assert runner.chunk_size(n) == size


def test_the_cost_per_event_is_a_moving_average_of_reports(tmp_path: Path) -> None:
    pool = InProcessPool(size=1)
    costs = iter([1_000_000, 2_000_000])
    pool.cpu_ns = lambda n: n * next(costs)
    r = rig(tmp_path, pool)

    async def feed(onramp: OnrampRunner) -> None:
        await onramp.records(records(range(4)))
        while runner_of(r).ns_per_event is None:
            await asyncio.sleep(0.001)
        await onramp.records(records(range(4, 8)))

    asyncio.run(r.run(feed))
    assert runner_of(r).ns_per_event == pytest.approx(0.8 * 1_000_000 + 0.2 * 2_000_000)


def test_queued_batches_of_one_group_are_joined_into_one_job(tmp_path: Path) -> None:
    pool = InProcessPool(size=1)
    r = rig(tmp_path, pool)

    async def feed(onramp: OnrampRunner) -> None:
        for k in range(5):  # all queued before the runner takes the first
            await onramp.records(records(range(10 * k, 10 * k + 10)), ack=k, group=0)
        await onramp.records(records(range(50, 60)), ack=5, group=1)  # another group: never in the same job

    asyncio.run(r.run(feed))
    assert [len(j) for j in pool.jobs] == [50, 10]
    assert ids(r.got(NODE, "out")) == list(range(60))
    assert sorted(r.source.acked) == list(range(6))


def _held(starts: list[float]) -> Any:
    """A hook: notes when each job starts; a job of records marked ``hold`` takes that many seconds."""

    def hook(recs: list[Any]) -> float | None:
        starts.append(asyncio.get_running_loop().time())
        return max((rec.get("hold", 0) for rec in recs), default=0) or None

    return hook


async def _two_held_jobs(onramp: OnrampRunner, pool: InProcessPool, hold: float) -> None:
    """One worker (size 1), and two jobs that take ``hold`` seconds on it: it has one running and one queued."""
    for k in range(2):
        await onramp.records([json.dumps({"id": -1 - k, "hold": hold}).encode()], ack=f"h{k}")
        while len(pool.jobs) < k + 1:
            await asyncio.sleep(0.001)


def _held_rig(tmp_path: Path) -> tuple[InProcessPool, Rig, list[float]]:
    """One worker whose jobs note when they start (``_held``), whole jobs of 50 events."""
    starts: list[float] = []
    pool = InProcessPool(size=1, hook=_held(starts))
    r = rig(tmp_path, pool)
    runner_of(r).ns_per_event = TARGET_JOB_NS / 50
    return pool, r, starts


def _short_queue_after_two_held_jobs(tmp_path: Path, hold: float) -> tuple[list[int], float]:
    """Two jobs held ``hold`` seconds, then 10 records (never a whole job) with the input left open:
    the sizes of the jobs, and how long after the 10 records came their job started."""
    pool, r, starts = _held_rig(tmp_path)
    fed: list[float] = []

    async def feed(onramp: OnrampRunner) -> None:
        await _two_held_jobs(onramp, pool, hold)
        fed.append(asyncio.get_running_loop().time())
        await onramp.records(records(range(10)), ack="x")
        while len(pool.jobs) < 3:  # the input stays open (a closed one is cut at once)
            await asyncio.sleep(0.001)

    asyncio.run(asyncio.wait_for(r.run(feed), 10))
    return [len(j) for j in pool.jobs], starts[2] - fed[0]


def test_while_every_worker_has_two_jobs_small_batches_wait_to_be_one_whole_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy pipeline's source hands over small batches: one job each would spend the parent's cost
    per job on every batch, and leave a worker with a queue of little jobs (bench 1b)."""
    monkeypatch.setattr(segment, "FILL_SECONDS", 5.0)  # however slowly this machine hands the batches over
    pool, r, _ = _held_rig(tmp_path)

    async def feed(onramp: OnrampRunner) -> None:
        await _two_held_jobs(onramp, pool, 1.0)
        for k in range(5):
            await onramp.records(records(range(10 * k, 10 * k + 10)), ack=k)
            await asyncio.sleep(0.002)  # the runner looks at the queue between batches

    asyncio.run(r.run(feed))
    assert [len(j) for j in pool.jobs] == [1, 1, 50], "the five batches: one job"
    assert ids(r.got(NODE, "out")) == [-1, -2, *range(50)]
    assert sorted(map(str, r.source.acked)) == ["0", "1", "2", "3", "4", "h0", "h1"]


def test_a_short_queue_waits_fill_seconds_at_most(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment, "FILL_SECONDS", 0.3)  # long beside the few ms between the wait's start and the batch
    sizes, waited = _short_queue_after_two_held_jobs(tmp_path, 1.5)
    assert sizes == [1, 1, 10]
    assert 0.2 <= waited < 1.2, f"cut after {waited:.3f} s: not after FILL_SECONDS (0.3 s), nor when the held jobs ended (1.5 s)"


def test_a_job_answered_ends_the_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker about to run dry gets the queue as it is, however short."""
    monkeypatch.setattr(segment, "FILL_SECONDS", 30.0)
    sizes, waited = _short_queue_after_two_held_jobs(tmp_path, 0.2)
    assert sizes == [1, 1, 10]
    assert waited < 5, "cut when a held job was answered, not after FILL_SECONDS"


def _fake_runner(box: inbox_module.Inbox, running: int = 2) -> Any:
    """What ``fill`` reads of a runner: one worker, ``running`` jobs, whole jobs of 50 events."""
    fake = type("Fake", (), {})()
    fake.inbox, fake.progress, fake.running = box, asyncio.Event(), running
    fake.pool = type("P", (), {"size": 1})()
    fake.chunk_size = lambda n: 50
    return fake


async def _put(box: inbox_module.Inbox, n: int) -> None:
    for _ in range(n):
        await box.put(Batch.source([b"{}"], codec="json", origin="src", group=0))


def _run(coro: Any, loop: str) -> Any:
    """On asyncio's loop or on uvloop's, which the daemon runs (its clock counts whole milliseconds)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
        return runner.run(coro)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("case", ["full", "closed", "idle worker", "whole job"])
def test_the_wait_ends_at_once_when_waiting_cannot_help(case: str, loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An inbox bounded below a whole job is full before it holds one; a closed one grows no more;
    with fewer than two jobs per worker a worker would run dry; a whole job is there."""
    monkeypatch.setattr(segment, "FILL_SECONDS", 5.0)

    async def go() -> float:
        box = inbox_module.Inbox("x", 5 if case == "full" else 1000, 2**30)
        fake = _fake_runner(box, 1 if case == "idle worker" else 2)
        await _put(box, 5 if case != "whole job" else 50)
        if case == "closed":
            box.close()
        t0 = asyncio.get_running_loop().time()
        await PooledChainRunner.fill(fake)
        return asyncio.get_running_loop().time() - t0

    assert _run(go(), loop) < 1.0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("event", ["close", "retire", "scale"])
def test_the_wait_ends_when_the_inbox_closes_or_shrinks_meanwhile(event: str, loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last producer closing, a reload retiring the edge, memory pressure shrinking its bounds
    below what it holds: nothing more is coming, or nothing more fits; the queue is cut as it is."""
    monkeypatch.setattr(segment, "FILL_SECONDS", 30.0)

    async def go() -> float:
        box = inbox_module.Inbox("x", 1000, 2**30)
        fake = _fake_runner(box)
        await _put(box, 5)
        loop_ = asyncio.get_running_loop()
        loop_.call_later(0.05, {"close": box.close, "retire": box.retire, "scale": lambda: box.scale(0.001)}[event])
        t0 = loop_.time()
        await asyncio.wait_for(PooledChainRunner.fill(fake), 10)
        return loop_.time() - t0

    assert _run(go(), loop) < 2.0


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_wait_ends_by_fill_seconds(loop: str) -> None:
    """Nothing comes: each wait ends when its time is up. (On uvloop the clock reads whole
    milliseconds: compared with a float deadline when the timer fired, it could read just short
    of it, and the wait went on with no timer left, in about one wait in five.)"""

    async def go() -> float:
        box = inbox_module.Inbox("x", 1000, 2**30)
        fake = _fake_runner(box)
        await _put(box, 5)
        longest = 0.0
        for _ in range(40):
            t0 = asyncio.get_running_loop().time()
            await asyncio.wait_for(PooledChainRunner.fill(fake), 5)
            longest = max(longest, asyncio.get_running_loop().time() - t0)
        return longest

    assert _run(go(), loop) < 0.5


def _slow_first_half(recs: list[Any]) -> float | None:
    return 0.3 if any(rec.get("slow") for rec in recs) else None


def _feed_two_groups(onramp: OnrampRunner) -> Any:
    async def feed() -> None:
        slow = [json.dumps({"id": i, "slow": True}).encode() for i in range(5)]
        await onramp.records(slow + records(range(5, 10)), ack="a", group=0)  # two jobs: the slow half first
        await onramp.records(records(range(100, 110)), ack="b", group=1)

    return feed()


def test_results_leave_in_order_per_group_and_a_slow_job_holds_back_only_its_group(tmp_path: Path) -> None:
    r = rig(tmp_path, InProcessPool(size=2, hook=_slow_first_half))
    asyncio.run(r.run(_feed_two_groups))
    got = ids(r.got(NODE, "out"))
    assert got == list(range(100, 110)) + list(range(10)), "group 1 passes the slow job of group 0; group 0 keeps its order"


def test_an_unordered_onramp_releases_each_job_when_it_is_done(tmp_path: Path) -> None:
    r = rig(tmp_path, InProcessPool(size=2, hook=_slow_first_half), onramp=", ordered: false")
    asyncio.run(r.run(_feed_two_groups))
    got = ids(r.got(NODE, "out"))
    assert got[-5:] == list(range(5)), "the slow job comes last: nothing waited for it"
    assert sorted(got) == [*range(10), *range(100, 110)]


@pytest.mark.parametrize(("failure", "kind", "attempts"), [
    (WorkerCrashed("worker 0 killed by signal 9"), "WorkerCrashed", POISON_ATTEMPTS),
    (JobFailed("a meta value cannot be pickled"), "JobFailed", 1),
])  # fmt: skip
def test_a_failing_job_is_bisected_down_to_its_record(tmp_path: Path, failure: BaseException, kind: str, attempts: int) -> None:
    """A job that kills its worker is split in halves until the record is alone, retried (a kill may not be
    the record's fault), then sent to err; one that fails wherever it runs goes to err as soon as it is alone."""
    pool = InProcessPool(size=2, hook=lambda recs: failure if any(rec.get("poison") for rec in recs) else None)
    r = rig(tmp_path, pool)

    async def feed(onramp: OnrampRunner) -> None:
        recs = records(range(16))
        recs[11] = json.dumps({"id": 11, "poison": True}).encode()
        await onramp.records(recs, [{"n": i} for i in range(16)], ack="t")

    asyncio.run(r.run(feed))
    assert ids(r.got(NODE, "out")) == [i for i in range(16) if i != 11], "the others, in order"
    (dead,) = r.got(NODE, "err")
    assert dead[0] == {"id": 11, "poison": True}
    assert dead[1]["n"] == 11 and dead[1]["error"]["type"] == kind and dead[1]["error"]["stage"] == NODE
    assert str(failure) in dead[1]["error"]["message"]
    assert [ids([(j[0], {})]) for j in pool.jobs if len(j) == 1 and j[0].get("poison")] == [[11]] * attempts
    assert [len(j) for j in pool.jobs if any(rec.get("poison") for rec in j)] == [8, 4, 2, *[1] * attempts]
    assert r.source.acked == ["t"] and r.source.failed == [], "the record sent to err is done: its batch is acked once"
