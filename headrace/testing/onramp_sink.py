"""The sink the onramp contract suite hands an onramp: the runtime's own (an ``OnrampRunner``:
framing, batching, ack references) behind checks of every call the onramp makes, and the
graph behind it (it keeps the records and completes their acks, out of order, failing some).
"""

from __future__ import annotations

import asyncio
import pickle
from array import array
from collections.abc import Hashable, Iterator
from typing import Any

from headrace.config.graph import ComponentSpec
from headrace.contract.acks import AckRef
from headrace.contract.framing import Preprocessor
from headrace.contract.metas import MetaColumns, Metas
from headrace.contract.source import Onramp
from headrace.metrics.defs import Metrics
from headrace.runtime.batch import Batch
from headrace.runtime.inbox import Inbox
from headrace.runtime.onramp import OnrampRunner
from headrace.runtime.router import Router
from headrace.runtime.stats import ComponentStats
from headrace.testing.connector import COMPONENT_ID

BATCH = 64  # records per batch the runner makes (the daemon's batch_size)


class SinkProbe:
    """What the sink saw, and the contract violations it noticed (recorded, not raised: an onramp's
    connection handler could swallow an exception raised into it)."""

    def __init__(self, plugin: Onramp) -> None:
        self.plugin = plugin
        self.problems: list[str] = []
        self.running = False  # between run() starting and returning: calls outside are violations
        self.handed = 0  # hand-overs with an ack token
        self.settled: list[tuple[str, Any]] = []  # ("ack" | "fail", token), as the plugin got them
        self.out: list[bytes] = []  # the records handed on out (what err gets is not compared)

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def call(self, name: str) -> None:
        if not self.running:
            self.problem(f"sink.{name}() was called while run() was not running (records after run() returned are lost)")
        if not self.plugin.ready:
            self.problem(f"sink.{name}() was called before ready was True (ready must be set once records can flow)")

    def raise_problems(self, what: str) -> None:
        assert not self.problems, f"{what}: " + "; ".join(self.problems)


def _check_meta(probe: SinkProbe, meta: Any, call: str) -> None:
    if meta is not None and not isinstance(meta, dict):
        probe.problem(f"{call}: meta must be None or a dict, got {type(meta).__name__}")


def _check_records(probe: SinkProbe, payloads: Any, metas: Any, ack: Any, group: Any, refused: Any, wire: Any) -> None:
    if not isinstance(payloads, list) or not all(isinstance(p, bytes) for p in payloads):
        probe.problem("records(): payloads must be a list of bytes")
        return
    n = len(payloads)
    if ack is not None and not n:
        probe.problem("records(): an ack token with no records is never acked (the runtime sends nothing for it)")
    if metas is not None:
        if not isinstance(metas, (list, MetaColumns)) or len(metas) != n or not all(isinstance(m, dict) for m in metas):
            probe.problem("records(): metas must be None, one dict per record or MetaColumns of as many records")
        else:
            try:
                pickle.dumps(metas)
            except Exception as exc:
                probe.problem(f"records(): a meta cannot be pickled (metas go to worker processes): {exc!r}")
    if not isinstance(group, Hashable):
        probe.problem("records(): group must be hashable (it keys the order of results)")
    if refused is not None and (not isinstance(refused, dict) or not all(isinstance(i, int) and 0 <= i < n for i in refused)):
        probe.problem("records(): refused must map indices of payloads to reasons")
    if wire is not None:
        lens, blobs = wire
        sizes = array("I")
        sizes.frombytes(lens)
        if list(sizes) != [len(p) for p in payloads] or b"".join(blobs) != b"".join(payloads):
            probe.problem("records(): wire does not hold the same records as payloads")


class CheckedSink:
    """The runtime's sink (an ``OnrampRunner``) behind checks of every call the onramp makes."""

    def __init__(self, probe: SinkProbe, runner: OnrampRunner) -> None:
        self.probe = probe
        self.runner = runner

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None, ack: Any = None, line: int | None = None) -> int | None:
        self.probe.call("chunk")
        if not isinstance(data, bytes):
            self.probe.problem(f"chunk(): data must be bytes, got {type(data).__name__}")
        _check_meta(self.probe, meta, "chunk()")
        if line is not None and (not isinstance(line, int) or isinstance(line, bool) or line < 1):
            self.probe.problem(f"chunk(): line must be a line number (1 or more), got {line!r}")
        if ack is not None:
            self.probe.handed += 1
        return await self.runner.chunk(data, meta, ack, line)

    async def end_of_stream(self, meta: dict[str, Any] | None = None, line: int | None = None) -> None:
        self.probe.call("end_of_stream")
        _check_meta(self.probe, meta, "end_of_stream()")
        await self.runner.end_of_stream(meta, line)

    async def records(self, payloads: list[bytes], metas: Metas | None = None, ack: Any = None, group: Any = None,
                      refused: dict[int, str] | None = None, wire: tuple[bytes, tuple[bytes, ...]] | None = None) -> None:  # fmt: skip
        self.probe.call("records")
        _check_records(self.probe, payloads, metas, ack, group, refused, wire)
        if ack is not None and payloads:
            self.probe.handed += 1
        await self.runner.records(payloads, metas, ack, group, refused, wire)

    async def reject(self, rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None = None) -> None:
        self.probe.call("reject")
        if not all(isinstance(r, bytes) and isinstance(why, str) for r, why in rejected):
            self.probe.problem("reject(): rejected must be (bytes, reason) pairs")
        _check_meta(self.probe, meta, "reject()")
        await self.runner.reject(rejected, meta)

    def stream(self) -> CheckedSink:
        return CheckedSink(self.probe, self.runner.stream())

    def frame(self, data: bytes) -> Iterator[tuple[list[bytes], list[tuple[bytes, str]]]]:
        return self.runner.frame(data)


class _Downstream(Inbox):
    """The graph behind the onramp: takes every batch at once, keeps its records, and completes
    their acks a moment later, out of order, failing every ``fail_every``-th hand-over."""

    def __init__(self, probe: SinkProbe, port: str, fail_every: int) -> None:
        super().__init__(port, 2**62, 2**62)
        self.probe = probe
        self.port = port
        self.fail_every = fail_every
        self.refs: dict[int, int] = {}  # id(AckRef) -> the order it was first seen in
        self.puts = 0

    async def put(self, batch: Batch) -> None:
        if self.port == "out":
            self.probe.out += [p for p in batch.payloads or () if p is not None]
        self.puts += 1
        delay = 0.02 if self.puts % 2 else 0.0  # the second batch completes before the first
        asyncio.get_running_loop().call_later(delay, self._complete, batch.acks or [])

    def _complete(self, refs: list[AckRef]) -> None:
        for ref in refs:
            k = self.refs.setdefault(id(ref), len(self.refs))
            if self.fail_every and k % self.fail_every == self.fail_every - 1:
                ref.failed = True
            try:
                ref.done()
            except Exception as exc:
                self.probe.problem(f"ack()/fail() raised {type(exc).__name__}: {exc}")


class _Settling(Onramp):
    """Stands in for the onramp where the runtime calls ``ack``/``fail``: records each, then forwards it."""

    def __init__(self, probe: SinkProbe) -> None:
        super().__init__(probe.plugin.config, probe.plugin.context)
        self.probe = probe

    def ack(self, token: Any) -> None:
        self.probe.settled.append(("ack", token))
        self.probe.plugin.ack(token)

    def fail(self, token: Any) -> None:
        self.probe.settled.append(("fail", token))
        self.probe.plugin.fail(token)


def runtime_sink(probe: SinkProbe, spec: ComponentSpec, pre: list[Preprocessor], fail_every: int, metrics: Metrics) -> CheckedSink:
    targets: dict[str, list[tuple[Inbox, bool]]] = {"out": [(_Downstream(probe, "out", fail_every), False)],
                                                     "err": [(_Downstream(probe, "err", fail_every), False)]}  # fmt: skip
    router = Router(ComponentStats(metrics, COMPONENT_ID, "onramp"), targets)
    return CheckedSink(probe, OnrampRunner(spec, _Settling(probe), pre, router, BATCH))
