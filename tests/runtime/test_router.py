"""Router: a send that captured the routing before a reload never lands in a retired inbox."""

from __future__ import annotations

import asyncio

from headrace.contract.acks import AckRef
from headrace.metrics.defs import Metrics
from headrace.runtime.batch import Batch
from headrace.runtime.inbox import Inbox
from headrace.runtime.router import Router
from headrace.runtime.stats import ComponentStats


def _batch(n: int, acks: list[AckRef] | None = None) -> Batch:
    return Batch(payloads=[b"x"] * n, ingest=[0] * n, codec="binary", acks=acks)


def _scenario(new_targets: int) -> tuple[list[Inbox], Inbox, list[str], Metrics]:
    """A send waits on a full first target; meanwhile a reload retires the second and routes the port anew."""
    done: list[str] = []
    metrics = Metrics()

    async def run() -> tuple[list[Inbox], Inbox]:
        full, old = Inbox("full", 1, 1 << 20), Inbox("change", 100, 1 << 20)
        await full.put(_batch(1))
        router = Router(ComponentStats(metrics, "src", "onramp"), {"out": [(full, False), (old, False)]})
        ref = AckRef(2, "token", done.append, done.append)
        send = asyncio.create_task(router.send("out", _batch(2, [ref, ref])))
        await asyncio.sleep(0.01)
        assert not send.done()
        new = [Inbox("change", 100, 1 << 20) for _ in range(new_targets)]
        router.targets = {"out": [(full, False), *((i, False) for i in new)]}  # the reload's new routing...
        old.retire()  # ...and the old runner drained its (empty) inbox and ended
        assert await old.get() is None
        await full.get()
        await asyncio.wait_for(send, 1)
        return new, old

    new, old = asyncio.run(run())
    return new, old, done, metrics


def test_a_send_waiting_during_a_reload_goes_to_the_replacement_not_the_retired_inbox() -> None:
    new, old, done, _ = _scenario(1)
    assert not old.items, "nothing may land in an inbox whose reader has finished"
    assert len(new[0].items) == 1 and len(new[0].items[0]) == 2
    assert done == [], "the acks wait for both targets"


def test_with_two_replacements_both_get_the_batch_and_the_acks_wait_for_both() -> None:
    new, old, _, _ = _scenario(2)
    assert [len(i.items) for i in new] == [1, 1] and not old.items
    refs = new[0].items[0].acks
    assert refs is not None and refs[0].pending == 2 * 3, "two events x three targets (full + two replacements)"


def test_without_a_replacement_the_share_is_done_and_counted() -> None:
    new, old, done, metrics = _scenario(0)
    assert not new and not old.items
    # the full target still holds its share; the removed one's share was released
    sample = metrics["headrace_component_discarded_events_total"].labels("src", "removed_by_reload")._value.get()
    assert sample == 2
    assert done == []


class _Gauge:
    def __init__(self) -> None:
        self.value = 0.0

    def set(self, v: float) -> None:
        self.value = v


def test_queue_gauges_follow_every_way_out_of_an_inbox() -> None:
    """The worker chain joins queued batches with peek/take: the gauges must drop then too (they stuck at the high-water mark)."""

    async def scenario() -> None:
        events, nbytes = _Gauge(), _Gauge()
        inbox = Inbox("q", 100, 1 << 20, 1, (events, nbytes))
        for _ in range(3):
            await inbox.put(Batch(payloads=[b"abcd"] * 5, ingest=[0] * 5))
        assert (events.value, nbytes.value) == (15, 60)
        await inbox.get()
        assert (events.value, nbytes.value) == (10, 40)
        assert inbox.peek() is not None
        inbox.take()
        inbox.take()
        assert (events.value, nbytes.value) == (0, 0)

    asyncio.run(scenario())


def test_an_inbox_scaled_down_is_full_sooner_and_scaled_back_lets_a_waiting_put_in() -> None:
    async def run() -> None:
        inbox = Inbox("edge", 8, 1 << 20)
        await inbox.put(_batch(4))
        assert not inbox.full()
        inbox.scale(0.25)  # memory pressure: 2 events
        assert inbox.full() and (inbox.max_events, inbox.bounds) == (2, (8, 1 << 20))
        put = asyncio.create_task(inbox.put(_batch(1)))
        await asyncio.sleep(0.01)
        assert not put.done()
        inbox.scale(1.0)  # restored: the waiting put lands without a take
        await asyncio.wait_for(put, 1)
        assert inbox.events == 5

    asyncio.run(run())
