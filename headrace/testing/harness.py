"""The graph of a config run in-process for one test, with test doubles at the boundary.

Onramps read nothing: the test injects records through their framing and codec, or
values straight into a pipeline or node. Offramps write nothing: what reaches them is
checked and encoded as ``headrace run`` does (its codec, ``with_meta``), so that what
the codec cannot write goes to the offramp's ``err`` port, and the rest is captured. Every node runs as a chain of its own on the event loop (``workers: 0``),
with the real operators, so that a test can inject at any node and observe any port
(``TapRouter`` records what each component sends, per port). Pipeline ports are
observed and injected through extra offramps and onramps linked to them, so that
they resolve exactly as ``headrace run`` resolves them.

Each injected batch carries an ack; the run checks that every one was acked or
failed once the graph drained (a held event must not be forgotten).
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import Any

import yaml

from headrace import registry
from headrace.config.graph import Graph
from headrace.config.load import load_text
from headrace.contract.acks import AckRef, done_each
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
from headrace.runtime.router import Router
from headrace.runtime.stats import ComponentStats
from headrace.runtime.wiring import closes_for, upstream_onramps
from headrace.testing.cases import Case, Point

UNBOUNDED = 2**62  # a test injects everything before the graph runs: no inbox may make it wait
DRAIN_TIMEOUT = 30.0
Captured = list[tuple[Any, dict[str, Any]]]


def snapshot(batch: Batch, codecs: dict[str, Codec]) -> Captured:
    """The events of a batch as (value, meta), copied now: later stages may change them in place."""
    out: Captured = []
    codec = codecs.get(batch.codec or "")
    for i in range(len(batch)):
        if batch.values is not None:
            value = copy.deepcopy(batch.values[i])
        else:
            raw = batch.payloads[i] if batch.payloads is not None else None
            try:
                value = codec.decode(raw) if codec is not None and raw is not None else raw
            except Exception:  # what an offramp of the same codec would pass on as it is
                value = raw.decode("utf-8", "backslashreplace") if raw is not None else None
        out.append((value, copy.deepcopy(batch.meta(i))))
    return out


class CaptureInbox(Inbox):
    """Stands in for an offramp: accepts every batch at once (acks it) and keeps its events.

    With ``encoder`` (the offramp's runner, never started), a batch is first checked and
    encoded as the offramp would: events it cannot write go to its ``err`` port instead.
    """

    def __init__(self, name: str, codecs: dict[str, Codec]) -> None:
        super().__init__(name, UNBOUNDED, UNBOUNDED)
        self.codecs = codecs
        self.captured: Captured = []
        self.encoder: OfframpRunner | None = None

    async def put(self, batch: Batch) -> None:
        if self.encoder is not None:
            batch = await self.writable(batch, self.encoder)
        self.captured += snapshot(batch, self.codecs)
        done_each(batch.acks)

    @staticmethod
    async def writable(batch: Batch, encoder: OfframpRunner) -> Batch:
        """The events of ``batch`` the offramp would write; the others went where ``run`` sends them."""
        if batch.unchecked and batch.payloads is not None and batch.values is None:
            batch = await encoder.validate(batch)  # undecodable records: to their onramp's err port
        records, bad = encoder.encode(batch)
        if not bad:
            return batch
        await encoder.reject(batch, records, bad, unencoded=True)  # to the offramp's err port, as in run
        refused = {i for i, _ in bad}
        keep = [i for i in range(len(batch)) if i not in refused]
        return batch.select(keep)


class TapRouter(Router):
    """A router that also records what it sends, per port (linked or not)."""

    def __init__(self, stats: ComponentStats, targets: dict[str, list[tuple[Inbox, bool]]], codecs: dict[str, Codec]) -> None:
        super().__init__(stats, targets)
        self.codecs = codecs
        self.recorded: dict[str, Captured] = {}

    async def send(self, port: str, batch: Batch) -> None:
        self.recorded.setdefault(port, []).extend(snapshot(batch, self.codecs))
        await super().send(port, batch)


class InjectedOnramp(Onramp):
    """Stands in for an onramp: reads nothing; remembers which injected batches were acked or failed."""

    def __init__(self, config: Any, context: PluginContext) -> None:
        super().__init__(config, context)
        self.finite = True
        self.ready = True
        self.acked: list[Any] = []
        self.failed: list[Any] = []

    def ack(self, token: Any) -> None:
        self.acked.append(token)

    def fail(self, token: Any) -> None:
        self.failed.append(token)


def _add_boundary(graph: Graph, case: Case, injections: list[Point], expectations: list[Point]) -> tuple[Graph, dict[str, str]]:
    """The graph with an extra onramp per pipeline injected into and an extra offramp per pipeline port observed.

    Returns the new graph and, per such point (``str(point)``), the id of its stand-in.
    """
    pipes_in = sorted({p.id for p in injections if p.kind == "pipeline"})
    pipes_out = sorted({str(p) for p in expectations if p.kind == "pipeline"})
    if not pipes_in and not pipes_out:
        return graph, {}
    data = copy.deepcopy(graph.raw)
    data.pop("tests", None)
    links: dict[str, Any] = data.setdefault("links", {})
    stand_in: dict[str, str] = {}
    for k, pipe in enumerate(pipes_in):
        cid = stand_in[pipe] = f"__test_in_{k}"
        data.setdefault("onramps", {})[cid] = {"type": "stdin", "codec": "json"}
        links[cid] = [pipe]
    for k, port in enumerate(pipes_out):
        cid = stand_in[port] = f"__test_out_{k}"
        data.setdefault("offramps", {})[cid] = {"type": "stdout", "codec": "json"}
        key = port if not port.endswith("/out") else port.removesuffix("/out")
        existing = links.pop(key, None) or links.pop(port, None) or []
        links[key] = [*([existing] if isinstance(existing, str) else existing), cid]
    return load_text(yaml.safe_dump(data, sort_keys=False), graph.file), stand_in


@dataclass
class Outcome:
    """What one test run observed."""

    captured: dict[str, Captured] = field(default_factory=dict)  # str(point) -> events
    unacked: int = 0  # injected batches neither acked nor failed
    error: str | None = None


class IsolatedGraph:
    """One test's graph: every node its own loop chain, doubles at onramps and offramps."""

    def __init__(self, graph: Graph, case: Case, injections: list[Point], expectations: list[Point]) -> None:
        self.case = case
        self.injections = injections
        self.expectations = expectations
        self.graph, self.stand_in = _add_boundary(graph, case, injections, expectations)
        g = self.graph
        self.metrics = Metrics()
        self.codecs: dict[str, Codec] = {}
        for name in {"json", "binary", "string", *(c.codec for c in g.components.values() if c.kind != "node")}:
            self.codecs[name] = registry.make_codec(name, g.codecs)
        self.inboxes: dict[str, Inbox] = {}
        self.captures: dict[str, CaptureInbox] = {}
        for c in g.components.values():
            if c.kind == "node":
                self.inboxes[c.id] = Inbox(c.id, UNBOUNDED, UNBOUNDED)
            elif c.kind == "offramp":
                self.inboxes[c.id] = self.captures[c.id] = CaptureInbox(c.id, self.codecs)
        self.routers: dict[str, Router] = {}
        self.taps: dict[str, TapRouter] = {}
        for c in g.components.values():
            targets: dict[str, list[tuple[Inbox, bool]]] = {}
            for port in c.ports or ("out", "err"):
                for t in g.edges.get((c.id, port), []):
                    targets.setdefault(port, []).append((self.inboxes[t], g.components[t].kind == "node"))
            self.routers[c.id] = self.taps[c.id] = TapRouter(ComponentStats(self.metrics, c.id, c.kind), targets, self.codecs)
        for c in g.of_kind("offramp"):
            if c.id not in self.stand_in.values():  # stand-ins only observe a pipeline port: they write nothing
                self.captures[c.id].encoder = self._encoder(c.id)
        self.source = InjectedOnramp(None, PluginContext("test", g.base_dir))
        self.onramps: dict[str, OnrampRunner] = {}
        for c in g.of_kind("onramp"):
            pre = [registry.load("preprocessors", p.name)(p.config) for p in c.processors]
            self.onramps[c.id] = OnrampRunner(c, self.source, pre, self.routers[c.id], g.daemon.batch_size)
            self.onramps[c.id].closes = self.routers[c.id].inboxes()
        guard = LoopGuard(g.daemon.loop_block_threshold)
        self.chains: list[ChainRunner] = []
        upstream = upstream_onramps(g)
        for c in g.of_kind("node"):
            op = registry.load("operators", c.plugin)(c.id, c.config, PluginContext(c.id, g.base_dir))
            runner = ChainRunner(c.id, [op], self.inboxes[c.id], self.routers, self.codecs, guard, self.metrics)
            runner.closes = closes_for(self.routers, self.inboxes, [c.id], upstream)  # wired as the daemon wires it
            self.chains.append(runner)
        closers = [r.closes for r in self.chains] + [r.closes for r in self.onramps.values()]
        for inbox in self.inboxes.values():  # the test driver is one more producer of every inbox
            inbox.producers = 1 + sum(inbox in closes for closes in closers)

    def _encoder(self, cid: str) -> OfframpRunner:
        """The offramp's runtime runner, only for its checks and encoding (its plugin is never started)."""
        g = self.graph
        c = g.components[cid]
        with_meta = c.with_meta
        router = self.routers[cid]
        runner = OfframpRunner(c, Offramp(None, PluginContext(cid, g.base_dir)), self.codecs[c.codec], [], self.captures[cid], router.stats,
                               self.codecs, self.routers, self.metrics, with_meta)  # fmt: skip
        runner.router = router
        return runner

    def _batch(self, values: list[Any], meta: dict[str, Any], origin: str, token: int) -> Batch:
        n = len(values)
        ref = AckRef(n, token, self.source.ack, self.source.fail) if n else None
        return Batch.decoded(copy.deepcopy(values), [copy.deepcopy(meta) for _ in values], codec="json", origin=origin, group=origin, ack=ref)

    async def _inject(self) -> set[int]:
        """Put every injection in, in order; returns the tokens that must be acked."""
        tokens: set[int] = set()
        for k, (inj, point) in enumerate(zip(self.case.inject, self.injections, strict=True)):
            if point.kind == "onramp":
                runner = self.onramps[point.id]
                if inj.raw is not None:
                    for chunk in [inj.raw] if isinstance(inj.raw, str) else inj.raw:
                        await runner.chunk(chunk.encode("utf-8"), inj.meta or None)
                    await runner.end_of_stream()
                elif inj.events:
                    codec = self.codecs[self.graph.components[point.id].codec]
                    payloads = [codec.encode(v) for v in inj.events]
                    await runner.records(payloads, [copy.deepcopy(inj.meta) for _ in payloads], ack=k)
                    tokens.add(k)
            elif inj.events:
                tokens.add(k)
                if point.kind == "pipeline":
                    cid = self.stand_in[point.id]
                    await self.routers[cid].send("out", self._batch(inj.events, inj.meta, cid, k))
                else:
                    await self.inboxes[point.id].put(self._batch(inj.events, inj.meta, point.id, k))
        return tokens

    async def run(self) -> Outcome:
        tasks = [asyncio.create_task(r.run()) for r in self.chains]
        outcome = Outcome()
        try:
            tokens = await self._inject()
            for r in self.onramps.values():
                for inbox in r.closes:
                    inbox.close()
            for inbox in self.inboxes.values():
                inbox.close()
            done, pending = await asyncio.wait(tasks, timeout=DRAIN_TIMEOUT) if tasks else (set(), set())
            if pending:
                outcome.error = f"the graph did not drain within {DRAIN_TIMEOUT:.0f}s"
                return outcome
            for t in done:
                if t.exception() is not None:
                    outcome.error = f"a stage failed: {t.exception()!r}"
                    return outcome
            outcome.unacked = len(tokens - set(self.source.acked) - set(self.source.failed))
        finally:
            for t in tasks:
                t.cancel()
        for point in self.expectations:
            outcome.captured[str(point)] = self.observed(point)
        return outcome

    def observed(self, point: Point) -> Captured:
        if point.kind == "offramp":
            return self.captures[point.id].captured if point.port is None else self.taps[point.id].recorded.get(point.port, [])
        if point.kind == "pipeline":
            return self.captures[self.stand_in[str(point)]].captured
        return self.taps[point.id].recorded.get(point.port or "out", [])
