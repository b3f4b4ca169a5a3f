"""The one chain executor: events through a chain of stages, on the loop and on the workers.

``ChainExecutor.steps`` is the whole logic, written once: per stage, the emitter of its other
ports, the call, a stage that fails a whole batch (its events to ``err``), and the counts. It
is a generator: an ``async def`` stage's call is yielded for the driver to await, so the same
steps serve ``run`` (a worker: stages are synchronous there; the python stage runs an async
function to completion itself) and ``run_async`` (the loop). What a pass did is returned as
``NodeCounts`` per node; ``apply_counts`` turns them into metrics, for a loop chain directly
and for a worker segment when its answer reaches the parent.

On the loop a pass may also carry ack refs (``PassRefs``): stages that hold events past
their batch (``batch``, ``window``) and passes that a tick or a flush starts make events
whose deliveries are owed to the refs of other batches.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headrace.contract.acks import AckRef, MergedAck
from headrace.contract.stage import STAGE_ERRORS, Emit, Ev, Operator
from headrace.errors import describe_exception

if TYPE_CHECKING:
    from headrace.runtime.stats import ComponentStats

log = logging.getLogger("headrace.runtime")

Outputs = dict[tuple[str, str], list[Ev]]  # (node, port) -> events leaving the chain there
Produce = Callable[[Operator, Emit], list[Ev]]  # a tick or a flush: a stage making events by itself


@dataclass
class NodeCounts:
    """What one node did in one pass (pickled from a worker to the parent)."""

    received: int = 0
    out: int = 0  # sent to ``out`` inside the chain (where a chain's last node sends is counted by its router)
    errors: int = 0
    dropped: int = 0


Counts = dict[str, NodeCounts]


def _ignore(token: Any) -> None:
    pass


NO_ACK = AckRef(1, None, _ignore, _ignore)  # stands in for events of a source without acks next to ones that have them


class PassRefs:
    """The ack refs of one pass through a loop chain, one share per event index: the input
    batch's, then those of events that stages made without an input (a tick, a flush, a batch
    or window result), so that building the output batches treats them alike."""

    __slots__ = ("n", "own", "refs")

    def __init__(self, refs: list[AckRef] | None, n: int) -> None:
        self.refs = refs
        self.n = n
        self.own = False

    def fill(self, evs: list[Ev]) -> None:
        """Events a python stage made (a fan-out) carry no ack yet: that of their source event."""
        if self.refs is not None:
            for ev in evs:
                if ev.ack is None:
                    ev.ack = self.refs[ev.src]

    def adopt(self, evs: list[Ev], every: bool) -> None:
        """Index new events: those with a fresh ``MergedAck`` (its first share is the index's),
        and with ``every`` (what a tick or flush made) all others too, taking a share for each."""
        for ev in evs:
            ack = ev.ack
            if isinstance(ack, MergedAck) and ack.fresh:
                ack.fresh = False
            elif not every:
                continue
            elif ack is None:
                ack = ev.ack = NO_ACK
            else:
                ack.take_share()
            if not self.own:
                self.refs = list(self.refs) if self.refs is not None else [NO_ACK] * self.n
                self.own = True
            assert self.refs is not None
            ev.src = len(self.refs)
            self.refs.append(ack)


class ChainExecutor:
    """Runs events through ``stages``; ``timer(node, seconds)`` hears how long each synchronous
    call took (the loop guard), when given."""

    def __init__(self, stages: list[Operator], timer: Callable[[str, float], None] | None = None) -> None:
        self.stages = stages
        self.timer = timer
        self.last = len(stages) - 1
        self.holding = {k for k, s in enumerate(stages) if type(s).flush is not Operator.flush}
        # taps on the out of nodes inside the chain: node -> every n-th event copied into ``tapped``
        self.tap_every: dict[str, int] = {}
        self.tapped: dict[str, list[Ev]] = {}

    def steps(self, cur: list[Ev], outputs: Outputs, counts: Counts, start: int = 0, produce: Produce | None = None,
              refs: PassRefs | None = None) -> Generator[Awaitable[list[Ev]], list[Ev], None]:  # fmt: skip
        """Stages ``start..`` on ``cur``; with ``produce`` (a tick or flush), stage ``start`` makes its input itself."""
        for k in range(start, self.last + 1):
            st = self.stages[k]
            sid = st.id

            def emit(port: str, ev: Ev, _out: Outputs = outputs, _id: str = sid) -> None:
                _out.setdefault((_id, port), []).append(ev)

            making = produce is not None and k == start
            holding = k in self.holding
            if holding and refs is not None:
                refs.fill(cur)
            n_in = len(cur)
            c = counts.get(sid)
            if c is None:
                c = counts[sid] = NodeCounts()
            if not making:
                c.received += n_in
            try:
                t0 = time.perf_counter()
                if making:
                    assert produce is not None
                    cur = produce(st, emit)
                elif st.is_async:
                    cur = yield st.process_async(cur, emit)
                else:
                    cur = st.process(cur, emit)
                if self.timer is not None and (making or not st.is_async):
                    self.timer(sid, time.perf_counter() - t0)
            except STAGE_ERRORS as exc:
                log.error("stage %s failed on a whole batch: %s", sid, describe_exception(exc), exc_info=exc)
                for ev in [] if making else cur:
                    emit("err", ev.fail(sid, exc))
                cur = []
            c.errors += len(outputs.get((sid, "err"), ()))
            if refs is not None and (holding or making):
                refs.adopt(cur, making)
                for (s, _), evs in outputs.items():
                    if s == sid:
                        refs.adopt(evs, making)
            if not holding and not making:  # a holding stage's input is not lost when less comes out: it waits in the stage
                produced = len(cur) + sum(len(v) for (s, _), v in outputs.items() if s == sid)
                gone = st.dropped if st.dropped is not None else n_in - produced
                if gone > 0:
                    c.dropped += gone
            if k < self.last:
                c.out += len(cur)
                if self.tap_every and sid in self.tap_every and cur:
                    self._tap(sid, cur, self.tap_every[sid])
            else:
                outputs.setdefault((sid, "out"), []).extend(cur)

    def _tap(self, sid: str, cur: list[Ev], every: int) -> None:
        """Copies of every ``every``-th event leaving ``sid`` for the next node, as they are now (later
        stages may change them in place): unchanged ones keep their bytes, changed ones are deep-copied."""
        out = self.tapped.setdefault(sid, [])
        for ev in cur[::every]:
            value = ev.value if ev.raw is not None else copy.deepcopy(ev.value)
            out.append(Ev(value, dict(ev.meta), ev.src, ev.raw, ev.ingest))

    def run(self, evs: list[Ev], start: int = 0, produce: Produce | None = None) -> tuple[Outputs, Counts]:
        """The pass, for synchronous stages only (a worker)."""
        outputs: Outputs = {}
        counts: Counts = {}
        for awaitable in self.steps(evs, outputs, counts, start, produce):
            if isinstance(awaitable, Coroutine):
                awaitable.close()  # never awaited: no warning about it
            raise TypeError("an async stage's process_async cannot run outside the event loop")
        return outputs, counts

    async def run_async(self, evs: list[Ev], outputs: Outputs, counts: Counts, start: int = 0, produce: Produce | None = None,
                        refs: PassRefs | None = None) -> None:  # fmt: skip
        """The pass on the loop: async stages are awaited; a cancellation of the caller propagates."""
        gen = self.steps(evs, outputs, counts, start, produce, refs)
        result: list[Ev] | None = None
        failure: BaseException | None = None
        while True:
            try:
                awaitable = gen.throw(failure) if failure is not None else gen.send(result)  # type: ignore[arg-type]
            except StopIteration:
                return
            failure = None
            try:
                result = await awaitable
            except STAGE_ERRORS as exc:  # the stage's own exception: the steps route its batch to err
                result, failure = None, exc


def apply_counts(stats: Mapping[str, ComponentStats], stages: list[Operator], counts: Counts) -> None:
    """Metrics of a pass. The first stage's ``received`` is the caller's (a batch's size, decode
    failures included); the last stage's ``out`` is counted by its router when sent on."""
    for k, st in enumerate(stages):
        c = counts.get(st.id)
        if c is None:
            continue
        s = stats[st.id]
        if k and c.received:
            s.received.inc(c.received)
        if c.out:
            s.sent("out").inc(c.out)
        if c.errors:
            s.error("stage_exception", c.errors)
        if c.dropped:
            s.discard("dropped" if st.name == "python" else "filtered", c.dropped)
