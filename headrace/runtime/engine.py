"""The asyncio graph: builds runners from a ``Graph``, runs them until drained, and applies
a new ``Graph`` on reload by difference.

On reload, a component whose configuration (and, for python stages, module source) did
not change keeps running untouched: the same plugin instance (a Kafka onramp keeps its
consumer and partitions), the same inbox; only its routing is pointed at the new graph.
Changed and removed components drain what they hold before their replacements start,
so a changed pipeline's output switches at one point with nothing lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from headrace.config.graph import ComponentSpec, Graph
from headrace.metrics.defs import Metrics, Tally
from headrace.plugins import registry
from headrace.plugins.base import Codec, Offramp, Onramp, PluginContext
from headrace.runtime.inbox import Inbox
from headrace.runtime.lastresort import LastResort, state_dir
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.plan import plan_chains
from headrace.runtime.router import ComponentStats, Router
from headrace.runtime.runners import ChainRunner, OfframpRunner, OnrampRunner
from headrace.runtime.stage import Operator

log = logging.getLogger("headrace.engine")


def component_signature(c: ComponentSpec) -> str:
    """Everything that makes a component what it is; equal signatures keep it running on reload."""
    doc: dict[str, Any] = {"kind": c.kind, "plugin": c.plugin, "raw": c.raw, "codec": c.codec,
                           "processors": [(p.name, repr(p.config)) for p in c.processors]}  # fmt: skip
    fn = getattr(c.config, "fn", None)
    if c.plugin == "python" and isinstance(fn, str):
        doc["source"] = _module_digest(fn.partition(":")[0])
    return hashlib.sha1(orjson.dumps(doc, default=repr, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _module_digest(module: str) -> str:
    try:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            return ""
        with open(spec.origin, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()
    except (ImportError, OSError, ValueError):
        return ""


@dataclass
class ReloadDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "unchanged": self.unchanged}


class Engine:
    def __init__(self, graph: Graph, metrics: Metrics, guard: LoopGuard, request_stop: Callable[[], None], pool: Any = None) -> None:
        self.graph = graph
        self.metrics = metrics
        self.guard = guard
        self.pool = pool
        self.request_stop = request_stop
        self.onramps: dict[str, OnrampRunner] = {}
        self.offramps: dict[str, OfframpRunner] = {}
        self.chains: dict[str, Any] = {}
        self.chain_sigs: dict[str, tuple[Any, ...]] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.routers: dict[str, Router] = {}
        self.codecs: dict[str, Codec] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.generation = 0
        self.signatures = {cid: component_signature(c) for cid, c in graph.components.items()}
        self._signatures_new = self.signatures
        self.started = False
        self.draining = False
        self.not_reloading = asyncio.Event()
        self.not_reloading.set()
        self.last_resort = LastResort(state_dir(graph.daemon, graph.base_dir))
        self._build(graph, ReloadDiff(added=list(graph.components)))

    def context(self, cid: str, graph: Graph) -> PluginContext:
        ctx = PluginContext(cid, graph.base_dir)
        ctx.extra["request_stop"] = self.request_stop
        ctx.extra["metrics"] = self.metrics
        return ctx

    def codec(self, name: str) -> Codec:
        if name not in self.codecs:
            self.codecs[name] = registry.make_codec(name, self.graph.codecs)
        return self.codecs[name]

    # -- building ------------------------------------------------------------------------------
    def _build(self, g: Graph, diff: ReloadDiff) -> list[Any]:
        """(Re)build the runtime for ``g``, reusing what ``diff`` says is unchanged; returns new runners."""
        d = g.daemon
        keep = set(diff.unchanged)
        folder = state_dir(d, g.base_dir)
        if self.last_resort.state != folder:  # a reload moved the state dir
            self.last_resort.close()
            self.last_resort = LastResort(folder)
        for name in {"json", "binary", "string", *(c.codec for c in g.components.values() if c.kind != "node")}:
            self.codec(name)
        operators: dict[str, Operator] = {}
        for c in g.of_kind("node"):
            operators[c.id] = registry.load("operators", c.plugin)(c.id, c.config, self.context(c.id, g))
        chains = plan_chains(g, operators, self.pool.size if self.pool is not None else 0)
        new_chain_sigs = {ch.id: (tuple((n, self._signatures_new[n]) for n in ch.nodes), ch.on_workers) for ch in chains}
        kept_chains = {ch.id for ch in chains if ch.id in self.chains and self.chain_sigs.get(ch.id) == new_chain_sigs.get(ch.id)}
        kept_offramps = {c.id for c in g.of_kind("offramp") if c.id in keep and c.id in self.offramps}
        kept_onramps = {c.id for c in g.of_kind("onramp") if c.id in keep and c.id in self.onramps}
        inboxes: dict[str, Inbox] = {}
        for cid in [ch.id for ch in chains] + [c.id for c in g.of_kind("offramp")]:
            if cid in kept_chains or cid in kept_offramps:
                inboxes[cid] = self.inboxes[cid]
            else:
                gauges = (Tally(self.metrics["headrace_queue_events"].labels(cid)), Tally(self.metrics["headrace_queue_bytes"].labels(cid)))
                inboxes[cid] = Inbox(cid, d.queue_events, d.queue_bytes, 0, gauges)
        kept_nodes = {n for ch in chains if ch.id in kept_chains for n in ch.nodes}
        routers: dict[str, Router] = {}
        for c in g.components.values():
            targets: dict[str, list[tuple[Inbox, bool]]] = {}
            for port in c.ports:
                for t in g.edges.get((c.id, port), []):
                    if t in inboxes:
                        targets.setdefault(port, []).append((inboxes[t], g.components[t].kind == "node"))
            reused = c.id in kept_onramps or c.id in kept_offramps or c.id in kept_nodes
            if reused:
                router = self.routers[c.id]
                router.targets = targets  # the running component now feeds the new graph
                router.last_resort = self.last_resort
            else:
                router = Router(ComponentStats(self.metrics, c.id, c.kind), targets, self.last_resort)
            routers[c.id] = router
        self.routers.clear()
        self.routers.update(routers)  # one dict object: running chain runners see the new routing
        self.inboxes = inboxes
        upstream = self._upstream_onramps(g)
        onramps: dict[str, OnrampRunner] = {}
        offramps: dict[str, OfframpRunner] = {}
        chain_runners: dict[str, Any] = {}
        fresh: list[Any] = []
        for c in g.of_kind("onramp"):
            if c.id in kept_onramps:
                r = self.onramps[c.id]
            else:
                plugin: Onramp = registry.load("onramps", c.plugin)(c.config, self.context(c.id, g))
                pre = [registry.load("preprocessors", p.name)(p.config) for p in c.processors]
                r = OnrampRunner(c, plugin, pre, routers[c.id], d.batch_size)
                fresh.append(r)
            r.router = routers[c.id]
            r.closes = routers[c.id].inboxes()
            onramps[c.id] = r
        self.generation += 1
        for ch in chains:
            if ch.id in kept_chains:
                runner = self.chains[ch.id]
            else:
                stages = [operators[n] for n in ch.nodes]
                if ch.on_workers and self.pool is not None:
                    from headrace.runtime.pooled import PooledChainRunner

                    runner = PooledChainRunner(ch, stages, inboxes[ch.id], self.routers, self.codecs, self.metrics, self.pool, g,
                                               segment_id=f"{ch.id}@{self.generation}")  # fmt: skip
                else:
                    runner = ChainRunner(ch.id, stages, inboxes[ch.id], self.routers, self.codecs, self.guard, self.metrics)
                fresh.append(runner)
            runner.closes = self._closes(g, ch.nodes, upstream)
            chain_runners[ch.id] = runner
        for c in g.of_kind("offramp"):
            if c.id in kept_offramps:
                r2 = self.offramps[c.id]
            else:
                plugin_off: Offramp = registry.load("offramps", c.plugin)(c.config, self.context(c.id, g))
                post = [registry.load("postprocessors", p.name)(p.config) for p in c.processors]
                with_meta = bool((g.raw.get("offramps") or {}).get(c.id, {}).get("with_meta", False))
                r2 = OfframpRunner(c, plugin_off, self.codec(c.codec), post, inboxes[c.id], routers[c.id].stats,
                                   self.codecs, self.routers, self.metrics, with_meta)  # fmt: skip
                fresh.append(r2)
                if plugin_off.frames_itself:  # it gets one record per event and frames groups of them itself
                    plugin_off.postprocess = _chain(post)
            r2.router = routers[c.id]
            r2.closes = self._closes(g, [], upstream, c.id)
            offramps[c.id] = r2
        self.onramps, self.chains, self.offramps = onramps, chain_runners, offramps
        self.chain_sigs = new_chain_sigs
        for inbox in inboxes.values():
            inbox.producers = sum(inbox in r.closes for r in self.runners())
        self.graph = g
        return fresh

    def _upstream_onramps(self, g: Graph) -> dict[str, set[str]]:
        up: dict[str, set[str]] = {cid: set() for cid in g.components}
        for on in g.of_kind("onramp"):
            stack, seen = [on.id], set()
            while stack:
                cur = stack.pop()
                if cur in seen:
                    continue
                seen.add(cur)
                up[cur].add(on.id)
                for port in g.components[cur].ports:
                    stack.extend(g.edges.get((cur, port), []))
        return up

    def _closes(self, g: Graph, nodes: list[str], upstream: dict[str, set[str]], offramp: str | None = None) -> list[Inbox]:
        """Inboxes a runner may send to: its own targets, and the err targets of upstream onramps."""
        seen: dict[int, Inbox] = {}
        for n in [*nodes, *([offramp] if offramp else [])]:
            for inbox in self.routers[n].inboxes():
                seen[id(inbox)] = inbox
            for on in upstream[n]:
                for inbox, _ in self.routers[on].targets.get("err", []):
                    seen[id(inbox)] = inbox
        own = self.inboxes.get(nodes[0]) if nodes else self.inboxes.get(offramp or "")
        return [i for i in seen.values() if i is not own]

    def runners(self) -> list[Any]:
        return [*self.onramps.values(), *self.chains.values(), *self.offramps.values()]

    @property
    def finite(self) -> bool:
        return all(r.plugin.finite for r in self.onramps.values())

    @property
    def ready(self) -> bool:
        return not self.draining and all(r.plugin.ready for r in self.onramps.values())

    # -- running -------------------------------------------------------------------------------
    async def _start(self, runners: list[Any]) -> None:
        from headrace.runtime.pooled import PooledChainRunner

        if self.pool is not None:
            await self.pool.configure(add=[r.spec for r in runners if isinstance(r, PooledChainRunner)])
        for r in runners:
            if isinstance(r, OfframpRunner):
                await r.plugin.start()
        order = [r for r in runners if isinstance(r, OfframpRunner)] + [r for r in runners if not isinstance(r, (OfframpRunner, OnrampRunner))]
        order += [r for r in runners if isinstance(r, OnrampRunner)]
        for runner in order:
            task = asyncio.create_task(runner.run(), name=f"headrace:{_name(runner)}")
            runner.task_handle = task
            self.tasks[id(runner)] = task

    async def start(self) -> None:
        self.started = True
        await self._start(self.runners())

    async def wait(self) -> None:
        """Until every runner has finished (sources ended or stopped, graph drained)."""
        while True:
            pending = [t for t in self.tasks.values() if not t.done()]
            if not pending:
                if self.not_reloading.is_set():
                    break
                await self.not_reloading.wait()  # a reload swaps every runner: not the end
                continue
            await asyncio.wait(pending)
        for t in self.tasks.values():
            if not t.cancelled() and t.exception() is not None:
                log.error("component failed: %r", t.exception(), exc_info=t.exception())
        for r in self.onramps.values():  # after the drain: a final commit sees every ack
            try:
                await r.plugin.stop()
            except Exception:
                log.exception("stopping onramp %s failed", r.spec.id)
        for off in self.offramps.values():
            try:
                await off.plugin.stop()
            except Exception:
                log.exception("stopping offramp %s failed", off.spec.id)
        self.last_resort.close()

    def stop_intake(self) -> None:
        self.draining = True  # /ready turns false: a load balancer stops sending
        for r in self.onramps.values():
            r.stop()

    def cancel(self) -> None:
        for t in self.tasks.values():
            t.cancel()

    def spec(self, cid: str) -> ComponentSpec:
        return self.graph.components[cid]

    # -- reload --------------------------------------------------------------------------------
    def diff(self, new: Graph) -> ReloadDiff:
        self._signatures_new = {cid: component_signature(c) for cid, c in new.components.items()}
        diff = ReloadDiff()
        for cid in new.components:
            if cid not in self.signatures:
                diff.added.append(cid)
            elif self.signatures[cid] != self._signatures_new[cid]:
                diff.changed.append(cid)
            else:
                diff.unchanged.append(cid)
        diff.removed = [cid for cid in self.signatures if cid not in new.components]
        return diff

    async def reload(self, new: Graph) -> ReloadDiff:
        """Apply ``new``: keep what did not change, drain what changed, start what is new."""
        self.not_reloading.clear()
        try:
            return await self._reload(new)
        finally:
            self.not_reloading.set()

    async def _reload(self, new: Graph) -> ReloadDiff:
        diff = self.diff(new)
        old_runners = {id(r): r for r in self.runners()}
        old_routers = dict(self.routers)
        old_inboxes = {id(i): i for i in self.inboxes.values()}
        old_specs = [r.spec for r in self.chains.values() if hasattr(r, "spec") and hasattr(r.spec, "nodes")]
        fresh = self._build(new, diff)
        current = {id(r) for r in self.runners()}
        retiring = [r for rid, r in old_runners.items() if rid not in current]
        live_inboxes = {id(i) for i in self.inboxes.values()}
        # retiring runners keep the old routing while they drain, and close nothing shared
        for r in retiring:
            r.closes = []
            if hasattr(r, "routers"):
                r.routers = old_routers
        for r in [r for r in retiring if isinstance(r, OnrampRunner)]:
            r.stop()
        for r in retiring:  # in the old topological order: upstream drains before downstream closes
            inbox = getattr(r, "inbox", None)
            if inbox is not None and id(inbox) in old_inboxes and id(inbox) not in live_inboxes:
                inbox.retire()
            task = self.tasks.pop(id(r), None)
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            plugin = getattr(r, "plugin", None)
            if plugin is not None:
                try:
                    await plugin.stop()
                except Exception:
                    log.exception("stopping %s failed", _name(r))
        if self.pool is not None:
            kept = {r.spec.id for r in self.chains.values() if hasattr(r, "spec") and hasattr(r.spec, "nodes")}
            await self.pool.configure(drop=[s.id for s in old_specs if s.id not in kept])
        for cid in diff.removed:  # their series disappear from /metrics
            old_routers[cid].stats.forget()
        self.signatures = dict(self._signatures_new)
        await self._start(fresh)
        return diff


def _name(runner: Any) -> str:
    spec = getattr(runner, "spec", None)
    return str(getattr(spec, "id", None) or getattr(runner, "cid", "?"))


def _chain(post: list[Any]) -> Callable[[list[bytes]], list[bytes]]:
    def run(records: list[bytes]) -> list[bytes]:
        for p in post:
            records = p.process(records)
        return records

    return run
