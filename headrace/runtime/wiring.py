"""Wiring: a ``Graph`` made into runners, inboxes and routers, reusing what a reload keeps.

``build`` makes the runtime of a graph without changing anything that runs: new runners and
inboxes, new routers for new components, and for kept components the routing they will get.
``commit`` puts a build in effect. ``upstream_onramps`` and ``closes_for`` say which inboxes a
runner closes when it ends (its targets', and the err targets of the onramps upstream, since
decode failures go to their onramp's err port); the test harness wires its graphs with them too.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from headrace import registry
from headrace.config.graph import ComponentSpec, Graph
from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.contract.sink import Offramp
from headrace.contract.source import Onramp
from headrace.contract.stage import Operator
from headrace.metrics.defs import Tally
from headrace.runtime.diskbuffer import DiskBuffer
from headrace.runtime.inbox import Inbox
from headrace.runtime.lastresort import LastResort, state_dir
from headrace.runtime.loopchain import ChainRunner
from headrace.runtime.offramp import OfframpRunner
from headrace.runtime.onramp import OnrampRunner
from headrace.runtime.placement import plan_chains
from headrace.runtime.router import Router
from headrace.runtime.runner import Runner
from headrace.runtime.starting import StartFailed, describe
from headrace.runtime.stats import ComponentStats

if TYPE_CHECKING:
    from headrace.runtime.engine import Engine

T = TypeVar("T")


def component_signature(c: ComponentSpec) -> str:
    """Everything that makes a component what it is; equal signatures keep it running on reload."""
    doc: dict[str, Any] = {"kind": c.kind, "plugin": c.plugin, "raw": c.raw, "codec": c.codec,
                           "processors": [(p.name, repr(p.config)) for p in c.processors]}  # fmt: skip
    if c.kind == "node":
        doc["source"] = [_module_digest(m) for m in registry.load("operators", c.plugin).source_modules(c.config)]
    return hashlib.sha1(orjson.dumps(doc, default=repr, option=orjson.OPT_SORT_KEYS)).hexdigest()


def module_file(module: str) -> Path | None:
    """The source file a module would be imported from, or None."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin != "built-in" else None


def _module_digest(module: str) -> str:
    path = module_file(module)
    if path is None:
        return ""
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return ""


@dataclass
class ReloadDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "unchanged": self.unchanged}


@dataclass
class Build:
    """The runtime of a graph, made but not yet in effect: ``commit`` puts it in place.

    Until then nothing running has changed (kept components still route to the old graph),
    so the fresh components can be started first and the whole build dropped if one fails.
    """

    graph: Graph
    fresh: list[Runner]
    onramps: dict[str, OnrampRunner]
    chains: dict[str, Runner]
    offramps: dict[str, OfframpRunner]
    inboxes: dict[str, Inbox]
    routers: dict[str, Router]
    retarget: list[tuple[Router, dict[str, list[tuple[Inbox, bool]]]]]
    chain_sigs: dict[str, tuple[Any, ...]]
    added_onramps: set[str]
    segments: list[Any]


def _operator(e: Engine, c: ComponentSpec, g: Graph) -> Operator:
    op: Operator = registry.load("operators", c.plugin)(c.id, c.config, e.context(c.id, g))
    return op

def _onramp(e: Engine, c: ComponentSpec, g: Graph) -> tuple[Onramp, list[Preprocessor]]:
    if e.idle_onramps:
        from headrace.runtime.replay import IdleOnramp

        plugin: Onramp = IdleOnramp(c.config, e.context(c.id, g))
    else:
        plugin = registry.load("onramps", c.plugin)(c.config, e.context(c.id, g))
    return plugin, [registry.load("preprocessors", p.name)(p.config) for p in c.processors]

def _offramp(e: Engine, c: ComponentSpec, g: Graph) -> tuple[Offramp, list[Postprocessor]]:
    plugin: Offramp = registry.load("offramps", c.plugin)(c.config, e.context(c.id, g))
    return plugin, [registry.load("postprocessors", p.name)(p.config) for p in c.processors]

def _disk_buffer(e: Engine, c: ComponentSpec, state: Path) -> DiskBuffer | None:
    """An onramp's or offramp's ``buffer: {type: disk}`` (None: memory, its queue only)."""
    b = c.buffer
    if b is None or b.type != "disk":
        return None
    return DiskBuffer(state / "buffers" / c.id, b.max_bytes, b.when_full, b.sync_interval, e.metrics, c.id)


def codecs_used(g: Graph) -> set[str]:
    """The codec keys ``g`` uses: the built-ins and those of its onramps and offramps."""
    return {"json", "binary", "string", *(c.codec for c in g.components.values() if c.kind != "node")}


def build(e: Engine, g: Graph, diff: ReloadDiff) -> Build:
    """The runtime for ``g``, reusing what ``diff`` says is unchanged; nothing running changes
    until ``_commit``. A plugin that cannot even be constructed raises ``StartFailed``."""
    d = g.daemon
    keep = set(diff.unchanged)
    folder = state_dir(d, g.base_dir)
    if e.last_resort.state != folder:  # a reload moved the state dir
        e.last_resort.close()
        e.last_resort = LastResort(folder)
    for name in codecs_used(g):
        e.codec(name, g)
    operators: dict[str, Operator] = {}
    for c in g.of_kind("node"):
        operators[c.id] = _construct(c.id, _operator, e, c, g)
    chains = plan_chains(g, operators, e.pool.size if e.pool is not None else 0)
    # a worker chain's segment carries the codec specs of its graph: one whose codecs changed (their
    # options are in their keys) is made anew, else its workers would not know the new keys
    codec_keys = tuple(sorted(g.codecs))
    new_chain_sigs = {ch.id: (tuple((n, e._signatures_new[n]) for n in ch.nodes), ch.on_workers, codec_keys if ch.on_workers else ())
                      for ch in chains}  # fmt: skip
    kept_chains = {ch.id for ch in chains if ch.id in e.chains and e.chain_sigs.get(ch.id) == new_chain_sigs.get(ch.id)}
    kept_offramps = {c.id for c in g.of_kind("offramp") if c.id in keep and c.id in e.offramps}
    kept_onramps = {c.id for c in g.of_kind("onramp") if c.id in keep and c.id in e.onramps}
    inboxes: dict[str, Inbox] = {}
    for cid in [ch.id for ch in chains] + [c.id for c in g.of_kind("offramp")]:
        if cid in kept_chains or cid in kept_offramps:
            inboxes[cid] = e.inboxes[cid]
        else:
            gauges = (Tally(e.metrics["headrace_queue_events"].labels(cid)), Tally(e.metrics["headrace_queue_bytes"].labels(cid)))
            inboxes[cid] = Inbox(cid, d.queue_events, d.queue_bytes, 0, gauges)
            if e.pressure != 1.0:  # under memory pressure: the new edge starts shrunk too
                inboxes[cid].scale(e.pressure)
    kept_nodes = {n for ch in chains if ch.id in kept_chains for n in ch.nodes}
    routers: dict[str, Router] = {}
    retarget: list[tuple[Router, dict[str, list[tuple[Inbox, bool]]]]] = []
    for c in g.components.values():
        targets: dict[str, list[tuple[Inbox, bool]]] = {}
        for port in c.ports:
            for t in g.edges.get((c.id, port), []):
                if t in inboxes:
                    targets.setdefault(port, []).append((inboxes[t], g.components[t].kind == "node"))
        if c.id in kept_onramps or c.id in kept_offramps or c.id in kept_nodes:
            router = e.routers[c.id]
            retarget.append((router, targets))  # at commit, the running component feeds the new graph
        else:
            router = Router(ComponentStats(e.metrics, c.id, c.kind), targets, e.last_resort, e.budget, e.provenance)
        routers[c.id] = router
    onramps: dict[str, OnrampRunner] = {}
    offramps: dict[str, OfframpRunner] = {}
    chain_runners: dict[str, Runner] = {}
    fresh: list[Runner] = []
    for c in g.of_kind("onramp"):
        if c.id in kept_onramps:
            r = e.onramps[c.id]
        else:
            plugin, pre = _construct(c.id, _onramp, e, c, g)
            r = OnrampRunner(c, plugin, pre, routers[c.id], d.batch_size, d.start_timeout)
            r.buffer = _disk_buffer(e, c, folder)
            fresh.append(r)
        onramps[c.id] = r
    generation = e.generation + 1
    segments: list[Any] = []
    for ch in chains:
        if ch.id in kept_chains:
            runner = e.chains[ch.id]
        else:
            stages = [operators[n] for n in ch.nodes]
            if ch.on_workers and e.pool is not None:
                from headrace.runtime.workers.segment import PooledChainRunner

                runner = PooledChainRunner(ch, stages, inboxes[ch.id], e.routers, e.codecs, e.metrics, e.pool, g,
                                           segment_id=f"{ch.id}@{generation}")  # fmt: skip
                segments.append(runner.spec)
            else:
                runner = ChainRunner(ch.id, stages, inboxes[ch.id], e.routers, e.codecs, e.guard, e.metrics, stats_from=routers)
            fresh.append(runner)
        chain_runners[ch.id] = runner
    for c in g.of_kind("offramp"):
        if c.id in kept_offramps:
            r2 = e.offramps[c.id]
        else:
            plugin_off, post = _construct(c.id, _offramp, e, c, g)
            with_meta = c.with_meta
            r2 = OfframpRunner(c, plugin_off, e.codec(c.codec, g), post, inboxes[c.id], routers[c.id].stats,
                               e.codecs, e.routers, e.metrics, with_meta)  # fmt: skip
            r2.buffer = _disk_buffer(e, c, folder)
            fresh.append(r2)
        offramps[c.id] = r2
    added = {c.id for c in g.of_kind("onramp") if c.id not in e.onramps}
    return Build(g, fresh, onramps, chain_runners, offramps, inboxes, routers, retarget, new_chain_sigs, added, segments)

def commit(e: Engine, b: Build) -> None:
    """Put ``b`` in effect: kept components route to the new graph, runners close what they feed."""
    g = b.graph
    for router, targets in b.retarget:
        router.targets = targets
        router.last_resort = e.last_resort
    e.routers.clear()
    e.routers.update(b.routers)  # one dict object: running chain runners see the new routing
    e.inboxes = b.inboxes
    e.generation += 1
    upstream = upstream_onramps(g)
    for cid, r in b.onramps.items():
        r.router = b.routers[cid]
        r.closes = b.routers[cid].inboxes()
        fans_out = len(b.routers[cid].targets.get("out", ())) > 1
        r.fanout_codec = e.codec(g.components[cid].codec, g) if fans_out else None
        source_codec = e.codec(g.components[cid].codec, g)
        r.source_codec = source_codec if source_codec.needs_parent() else None
    for runner in b.chains.values():
        runner.closes = closes_for(e.routers, e.inboxes, list(runner.nodes), upstream)
    for cid, r2 in b.offramps.items():
        r2.router = b.routers[cid]
        r2.closes = closes_for(e.routers, e.inboxes, [], upstream, cid)
    e.onramps, e.chains, e.offramps = b.onramps, b.chains, b.offramps
    e.chain_sigs = b.chain_sigs
    for inbox in b.inboxes.values():
        inbox.producers = sum(inbox in r.closes for r in e.runners())
    e.graph = g

def upstream_onramps(g: Graph) -> dict[str, set[str]]:
    up: dict[str, set[str]] = {cid: set() for cid in g.components}
    for on in g.of_kind("onramp"):
        stack, seen = [on.id], set()
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            up[cur].add(on.id)
            for port in g.components[cur].ports or ("out", "err"):
                stack.extend(g.edges.get((cur, port), []))
    return up

def closes_for(routers: dict[str, Router], inboxes: dict[str, Inbox], nodes: list[str], upstream: dict[str, set[str]], offramp: str | None = None) -> list[Inbox]:
    """Inboxes a runner may send to: its own targets, and the err targets of upstream onramps."""
    seen: dict[int, Inbox] = {}
    for n in [*nodes, *([offramp] if offramp else [])]:
        for inbox in routers[n].inboxes():
            seen[id(inbox)] = inbox
        for on in upstream[n]:
            for inbox, _ in routers[on].targets.get("err", []):
                seen[id(inbox)] = inbox
    own = inboxes.get(nodes[0]) if nodes else inboxes.get(offramp or "")
    return [i for i in seen.values() if i is not own]


def _construct(cid: str, make: Callable[..., T], *args: Any) -> T:
    """A plugin made from its config; whatever its constructor raises names the component."""
    try:
        return make(*args)
    except Exception as exc:
        raise StartFailed(cid, describe(exc)) from exc


