"""The parent side of a worker segment (``PooledChainRunner``) without worker processes: job
sizing from the CPU time workers report, release in order per group, bisection of a job that
kills its worker or fails wherever it runs, and ``ordered: false``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from headrace.runtime.onramp import OnrampRunner
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
