"""A worker pool in this process, and a rig around one chain, for unit tests of the runtime's parent side.

``InProcessPool.execute`` does for one job what a worker does (the job message packed and
unpacked, ``SegmentProgram`` set up and executed by the worker's own functions, the answer
packed and read back as the supervisor reads it), without a process. A test may make a job
slow, or fail it the ways a worker fails one (``WorkerCrashed``, ``JobFailed``), from its records.

``Rig`` loads a config with one onramp and one pipeline, and runs its first chain either on
the loop (``ChainRunner``) or on the in-process pool (``PooledChainRunner``): records go in
through the onramp's real runner, and every port of every component is captured.
"""

from __future__ import annotations

import asyncio
import json
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from headrace import registry
from headrace.config.load import load_text
from headrace.contract.acks import done_each
from headrace.contract.codec import Codec
from headrace.contract.context import PluginContext
from headrace.contract.sink import Offramp
from headrace.contract.source import Onramp
from headrace.metrics.defs import Metrics
from headrace.runtime.batch import Batch
from headrace.runtime.inbox import Inbox
from headrace.runtime.loopchain import ChainRunner
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.offramp import OfframpRunner
from headrace.runtime.onramp import OnrampRunner
from headrace.runtime.placement import Chain, plan_chains
from headrace.runtime.router import Router
from headrace.runtime.stats import ComponentStats
from headrace.runtime.workers.pool import JobFailed, WorkerCrashed, WorkerPool
from headrace.runtime.workers.program import SegmentSpec
from headrace.runtime.workers.segment import PooledChainRunner
from headrace.runtime.workers.wire import Request, Response, pack, unpack_header
from headrace.runtime.workers.worker import JOB, _answer, _configure, _execute
from headrace.testing.harness import CaptureInbox, snapshot

Hook = Callable[[list[Any]], "BaseException | float | None"]  # a job's records -> raise this, or sleep so long first


def records_of(req: Request, blob: bytes) -> list[Any]:
    """The decoded records (or values) of a job, as a test reads them."""
    if req.values is not None:
        return list(req.values)
    lens = array("I")
    lens.frombytes(req.lens)
    out, pos = [], 0
    for n in lens:
        raw = blob[pos : pos + n]
        pos += n
        try:
            out.append(json.loads(raw))
        except ValueError:
            out.append(raw)
    return out


class InProcessPool:
    """The pool's ``execute`` for ``PooledChainRunner``, run in this process."""

    def __init__(self, size: int = 2, max_inflight: int = 2, hook: Hook | None = None) -> None:
        self.size = size
        self.max_inflight = max_inflight
        self.hook = hook
        self.programs: dict[str, Any] = {}
        self.jobs: list[list[Any]] = []  # the records of every job, in the order they were submitted
        self.cpu_ns: Callable[[int], int] | None = None  # job size -> the CPU time the answer reports
        self.wall_ns: Callable[[int], int] | None = None  # job size -> the wall time the answer reports

    def configure(self, specs: list[SegmentSpec]) -> None:
        errors = _configure(self.programs, specs, [])
        assert not errors, errors

    async def execute(self, segment: str, parts: list[Any]) -> Response:
        msg = b"".join(pack((JOB, parts[0]), *parts[1:]))
        (_, req), start = unpack_header(msg)
        req.blob, req.start = msg, start
        records = records_of(req, msg[start:])
        self.jobs.append(records)
        verdict = self.hook(records) if self.hook is not None else None
        if isinstance(verdict, BaseException):
            raise verdict
        await asyncio.sleep(verdict or 0)
        answer = _answer(_execute(self.programs, req))
        header, start = unpack_header(answer)
        header.attach(answer, start)  # as the supervisor does
        if header.fatal is not None:
            raise JobFailed(header.fatal)
        if self.cpu_ns is not None:
            header.cpu_ns = self.cpu_ns(len(records))
        if self.wall_ns is not None:
            header.wall_ns = self.wall_ns(len(records))
        return header  # type: ignore[no-any-return]


Captured = list[tuple[Any, dict[str, Any]]]


class Capture(Inbox):
    """Stands in for whatever a port feeds: keeps each event (decoded) and completes its acks."""

    def __init__(self, name: str, codecs: dict[str, Codec]) -> None:
        super().__init__(name, 2**62, 2**62)
        self.codecs = codecs
        self.got: Captured = []
        self.batches: list[Batch] = []

    async def put(self, batch: Batch) -> None:
        self.batches.append(batch)
        self.got += snapshot(batch, self.codecs)
        done_each(batch.acks)


class Source(Onramp):
    """The onramp of the rig: reads nothing (the test hands records to its runner); notes acks."""

    def __init__(self) -> None:
        super().__init__(None, PluginContext("src", Path(".")))
        self.acked: list[Any] = []
        self.failed: list[Any] = []

    def ack(self, token: Any) -> None:
        self.acked.append(token)

    def fail(self, token: Any) -> None:
        self.failed.append(token)


class Rig:
    """One onramp ``src`` (options ``onramp``) linked to pipeline ``main`` (``pipeline``, YAML) linked to offramp ``out``.

    The offramp checks and encodes what reaches it as ``headrace run`` does (``CaptureInbox``), so
    that an event its codec cannot write goes to ``out/err``; it writes nothing."""

    def __init__(self, tmp_path: Path, pipeline: str, onramp: str = "", workers: int = 2, pool: InProcessPool | None = None) -> None:
        self.graph = load_text(f"""
version: 1
onramps: {{src: {{type: stdin, codec: json{onramp}}}}}
pipelines: {{main: {pipeline}}}
offramps: {{out: {{type: stdout, codec: json}}}}
links: {{src: [main], main: [out]}}
""", tmp_path / "c.yaml")  # fmt: skip
        g = self.graph
        self.metrics = Metrics()
        self.codecs: dict[str, Codec] = {n: registry.make_codec(n, g.codecs) for n in {"json", "binary", "string", *(c.codec for c in g.components.values())}}
        self.ops = {c.id: registry.load("operators", c.plugin)(c.id, c.config, PluginContext(c.id, g.base_dir)) for c in g.of_kind("node")}
        self.chain: Chain = plan_chains(g, self.ops, workers)[0]
        self.inbox = Inbox(self.chain.id, 2**62, 2**62, producers=1)
        self.captures: dict[tuple[str, str], Capture] = {}
        self.routers: dict[str, Router] = {}
        self.offramp = CaptureInbox("out", self.codecs)  # what the offramp would write; what it cannot encode goes to out/err
        for c in g.components.values():
            targets: dict[str, list[tuple[Inbox, bool]]] = {}
            for port in c.ports:
                if c.id == "src" and port == "out":
                    targets[port] = [(self.inbox, True)]
                elif "out" in g.edges.get((c.id, port), ()):
                    targets[port] = [(self.offramp, False)]
                else:
                    capture = self.captures[(c.id, port)] = Capture(f"{c.id}/{port}", self.codecs)
                    targets[port] = [(capture, False)]
            self.routers[c.id] = Router(ComponentStats(self.metrics, c.id, c.kind), targets)
        out = g.components["out"]
        self.offramp.encoder = OfframpRunner(out, Offramp(None, PluginContext("out", g.base_dir)), self.codecs[out.codec], [], self.offramp,
                                             self.routers["out"].stats, self.codecs, self.routers, self.metrics, False)  # fmt: skip
        self.offramp.encoder.router = self.routers["out"]
        self.source = Source()
        self.onramp = OnrampRunner(g.components["src"], self.source, [], self.routers["src"], g.daemon.batch_size)
        self.pool = pool
        stages = [self.ops[n] for n in self.chain.nodes]
        if pool is None:
            self.runner: ChainRunner | PooledChainRunner = ChainRunner(self.chain.id, stages, self.inbox, self.routers, self.codecs,
                                                                      LoopGuard(60.0), self.metrics)  # fmt: skip
        else:
            self.runner = PooledChainRunner(self.chain, stages, self.inbox, self.routers, self.codecs, self.metrics,
                                            cast(WorkerPool, pool), g)  # fmt: skip
            pool.configure([self.runner.spec])

    async def run(self, hand_over: Callable[[OnrampRunner], Any]) -> None:
        """``hand_over(onramp_runner)`` feeds the records (a coroutine); then input ends and the chain drains."""
        task = asyncio.ensure_future(self.runner.run())
        await hand_over(self.onramp)
        self.inbox.close()
        await asyncio.wait_for(task, 30)

    def got(self, cid: str, port: str) -> Captured:
        """What ``cid`` sent on ``port`` (for the port linked to the offramp: what the offramp would write)."""
        if "out" in self.graph.edges.get((cid, port), ()):
            return self.offramp.captured
        capture = self.captures.get((cid, port))
        return capture.got if capture is not None else []

    def outputs(self) -> dict[str, Captured]:
        """Every event every port of every component sent, by ``component/port``, and what the offramp would write (``out``)."""
        got = {f"{cid}/{port}": c.got for (cid, port), c in self.captures.items() if c.got}
        return {**got, "out": self.offramp.captured} if self.offramp.captured else got

    def counts(self) -> dict[str, float]:
        """The runtime's per-component counters, as /metrics shows them (series at 0 left out)."""
        out: dict[str, float] = {}
        for metric in self.metrics.registry.collect():
            if not metric.name.startswith("headrace_component_"):
                continue
            for sample in metric.samples:
                if sample.value and sample.name.endswith("_total"):
                    out[sample.name + str(sorted(sample.labels.items()))] = sample.value
        return out


__all__ = ["Capture", "InProcessPool", "JobFailed", "Rig", "WorkerCrashed", "records_of"]
