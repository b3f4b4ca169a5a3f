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
from pathlib import Path
from typing import Any, TypeVar

import orjson

from headrace import registry
from headrace.config.graph import ComponentSpec, Graph
from headrace.contract.codec import Codec
from headrace.contract.context import PluginContext
from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.contract.sink import Offramp
from headrace.contract.source import Onramp
from headrace.contract.stage import Operator
from headrace.metrics.defs import Metrics, Tally
from headrace.runtime.inbox import Inbox
from headrace.runtime.lastresort import LastResort, state_dir
from headrace.runtime.loopchain import ChainRunner
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.offramp import OfframpRunner
from headrace.runtime.onramp import OnrampRunner
from headrace.runtime.placement import plan_chains
from headrace.runtime.router import Router
from headrace.runtime.starting import StartFailed, describe, start_all, start_one
from headrace.runtime.stats import ComponentStats

T = TypeVar("T")

log = logging.getLogger("headrace.engine")


def component_signature(c: ComponentSpec) -> str:
    """Everything that makes a component what it is; equal signatures keep it running on reload."""
    doc: dict[str, Any] = {"kind": c.kind, "plugin": c.plugin, "raw": c.raw, "codec": c.codec,
                           "processors": [(p.name, repr(p.config)) for p in c.processors]}  # fmt: skip
    fn = getattr(c.config, "fn", None)
    if c.plugin == "python" and isinstance(fn, str):
        doc["source"] = _module_digest(fn.partition(":")[0])
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
    fresh: list[Any]
    onramps: dict[str, OnrampRunner]
    chains: dict[str, Any]
    offramps: dict[str, OfframpRunner]
    inboxes: dict[str, Inbox]
    routers: dict[str, Router]
    retarget: list[tuple[Router, dict[str, list[tuple[Inbox, bool]]]]]
    chain_sigs: dict[str, tuple[Any, ...]]
    added_onramps: set[str]
    segments: list[Any]


class Engine:
    def __init__(self, graph: Graph, metrics: Metrics, guard: LoopGuard, request_stop: Callable[[], None], pool: Any = None,
                 on_failure: Callable[[str, BaseException], None] | None = None) -> None:  # fmt: skip
        self.graph = graph
        self.metrics = metrics
        self.guard = guard
        self.pool = pool
        self.request_stop = request_stop
        self.on_failure = on_failure  # a runner died at run time: the daemon fails (it never reports success then)
        self.onramps: dict[str, OnrampRunner] = {}
        self.offramps: dict[str, OfframpRunner] = {}
        self.chains: dict[str, Any] = {}
        self.chain_sigs: dict[str, tuple[Any, ...]] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.routers: dict[str, Router] = {}
        self.codecs: dict[str, Codec] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.failures: list[tuple[str, BaseException]] = []
        self.generation = 0
        self.signatures: dict[str, str] = {}
        self._signatures_new: dict[str, str] = {}
        self.started = False
        self.draining = False
        self.not_reloading = asyncio.Event()
        self.not_reloading.set()
        self.last_resort = LastResort(state_dir(graph.daemon, graph.base_dir))

    def context(self, cid: str, graph: Graph) -> PluginContext:
        return PluginContext(cid, graph.base_dir, metrics=self.metrics, request_stop=self.request_stop)

    def codec(self, name: str, graph: Graph | None = None) -> Codec:
        if name not in self.codecs:
            self.codecs[name] = registry.make_codec(name, (graph or self.graph).codecs)
        return self.codecs[name]

    # -- building ------------------------------------------------------------------------------
    def _operator(self, c: ComponentSpec, g: Graph) -> Operator:
        op: Operator = registry.load("operators", c.plugin)(c.id, c.config, self.context(c.id, g))
        return op

    def _onramp(self, c: ComponentSpec, g: Graph) -> tuple[Onramp, list[Preprocessor]]:
        plugin: Onramp = registry.load("onramps", c.plugin)(c.config, self.context(c.id, g))
        return plugin, [registry.load("preprocessors", p.name)(p.config) for p in c.processors]

    def _offramp(self, c: ComponentSpec, g: Graph) -> tuple[Offramp, list[Postprocessor]]:
        plugin: Offramp = registry.load("offramps", c.plugin)(c.config, self.context(c.id, g))
        return plugin, [registry.load("postprocessors", p.name)(p.config) for p in c.processors]

    def _build(self, g: Graph, diff: ReloadDiff) -> Build:
        """The runtime for ``g``, reusing what ``diff`` says is unchanged; nothing running changes
        until ``_commit``. A plugin that cannot even be constructed raises ``StartFailed``."""
        d = g.daemon
        keep = set(diff.unchanged)
        folder = state_dir(d, g.base_dir)
        if self.last_resort.state != folder:  # a reload moved the state dir
            self.last_resort.close()
            self.last_resort = LastResort(folder)
        for name in {"json", "binary", "string", *(c.codec for c in g.components.values() if c.kind != "node")}:
            self.codec(name, g)
        operators: dict[str, Operator] = {}
        for c in g.of_kind("node"):
            operators[c.id] = _construct(c.id, self._operator, c, g)
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
        retarget: list[tuple[Router, dict[str, list[tuple[Inbox, bool]]]]] = []
        for c in g.components.values():
            targets: dict[str, list[tuple[Inbox, bool]]] = {}
            for port in c.ports:
                for t in g.edges.get((c.id, port), []):
                    if t in inboxes:
                        targets.setdefault(port, []).append((inboxes[t], g.components[t].kind == "node"))
            if c.id in kept_onramps or c.id in kept_offramps or c.id in kept_nodes:
                router = self.routers[c.id]
                retarget.append((router, targets))  # at commit, the running component feeds the new graph
            else:
                router = Router(ComponentStats(self.metrics, c.id, c.kind), targets, self.last_resort)
            routers[c.id] = router
        onramps: dict[str, OnrampRunner] = {}
        offramps: dict[str, OfframpRunner] = {}
        chain_runners: dict[str, Any] = {}
        fresh: list[Any] = []
        for c in g.of_kind("onramp"):
            if c.id in kept_onramps:
                r = self.onramps[c.id]
            else:
                plugin, pre = _construct(c.id, self._onramp, c, g)
                r = OnrampRunner(c, plugin, pre, routers[c.id], d.batch_size, d.start_timeout)
                fresh.append(r)
            onramps[c.id] = r
        generation = self.generation + 1
        segments: list[Any] = []
        for ch in chains:
            if ch.id in kept_chains:
                runner = self.chains[ch.id]
            else:
                stages = [operators[n] for n in ch.nodes]
                if ch.on_workers and self.pool is not None:
                    from headrace.runtime.workers.segment import PooledChainRunner

                    runner = PooledChainRunner(ch, stages, inboxes[ch.id], self.routers, self.codecs, self.metrics, self.pool, g,
                                               segment_id=f"{ch.id}@{generation}")  # fmt: skip
                    segments.append(runner.spec)
                else:
                    runner = ChainRunner(ch.id, stages, inboxes[ch.id], self.routers, self.codecs, self.guard, self.metrics, stats_from=routers)
                fresh.append(runner)
            chain_runners[ch.id] = runner
        for c in g.of_kind("offramp"):
            if c.id in kept_offramps:
                r2 = self.offramps[c.id]
            else:
                plugin_off, post = _construct(c.id, self._offramp, c, g)
                with_meta = bool((g.raw.get("offramps") or {}).get(c.id, {}).get("with_meta", False))
                r2 = OfframpRunner(c, plugin_off, self.codec(c.codec, g), post, inboxes[c.id], routers[c.id].stats,
                                   self.codecs, self.routers, self.metrics, with_meta)  # fmt: skip
                fresh.append(r2)
            offramps[c.id] = r2
        added = {c.id for c in g.of_kind("onramp") if c.id not in self.onramps}
        return Build(g, fresh, onramps, chain_runners, offramps, inboxes, routers, retarget, new_chain_sigs, added, segments)

    def _commit(self, b: Build) -> None:
        """Put ``b`` in effect: kept components route to the new graph, runners close what they feed."""
        g = b.graph
        for router, targets in b.retarget:
            router.targets = targets
            router.last_resort = self.last_resort
        self.routers.clear()
        self.routers.update(b.routers)  # one dict object: running chain runners see the new routing
        self.inboxes = b.inboxes
        self.generation += 1
        upstream = self._upstream_onramps(g)
        for cid, r in b.onramps.items():
            r.router = b.routers[cid]
            r.closes = b.routers[cid].inboxes()
        for runner in b.chains.values():
            runner.closes = self._closes(g, [st.id for st in runner.stages], upstream)
        for cid, r2 in b.offramps.items():
            r2.router = b.routers[cid]
            r2.closes = self._closes(g, [], upstream, cid)
        self.onramps, self.chains, self.offramps = b.onramps, b.chains, b.offramps
        self.chain_sigs = b.chain_sigs
        for inbox in b.inboxes.values():
            inbox.producers = sum(inbox in r.closes for r in self.runners())
        self.graph = g

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
        return self.started and not self.draining and all(r.plugin.ready for r in self.onramps.values())

    # -- starting ------------------------------------------------------------------------------
    async def _preflight(self, b: Build, timeout: float) -> None:
        """Start what ``b`` adds before anything running changes: offramps, worker segments, and
        onramps new to the graph. A failure stops them again and raises ``StartFailed``."""
        offs = [r for r in b.fresh if isinstance(r, OfframpRunner)]
        # at a reload, an added onramp starts before anything changes (a failure then leaves all as it
        # was); at start-up each onramp starts in its own task and runs at once (``_launch``)
        ons = [r for r in b.fresh if isinstance(r, OnrampRunner) and r.spec.id in b.added_onramps] if self.started else []
        loops = [r for r in b.fresh if isinstance(r, ChainRunner)]
        try:
            await start_all([(f"offramp {r.spec.id}", r.plugin.start) for r in offs], timeout)
            await start_all([(f"node {r.cid}", r.start) for r in loops], timeout)
            if self.pool is not None and b.segments:
                await start_one("worker segments " + ", ".join(s.id.partition("@")[0] for s in b.segments),
                                lambda: self.pool.configure(add=b.segments), timeout)  # fmt: skip
            await start_all([(f"onramp {r.spec.id}", r.plugin.start) for r in ons], timeout)
        except BaseException:
            await self._discard(b)
            raise
        for r in offs:
            r.started = True
        for r2 in ons:
            r2.started = True

    async def _discard(self, b: Build) -> None:
        """Undo a build that never took effect: stop its fresh plugins and drop its segments."""
        for r in b.fresh:
            plugin = getattr(r, "plugin", None)
            if plugin is not None:
                try:
                    await plugin.stop()
                except Exception:
                    log.exception("stopping %s failed", _name(r))
        if self.pool is not None and b.segments:
            try:
                await self.pool.configure(drop=[s.id for s in b.segments])
            except Exception:
                log.exception("dropping the worker segments of a failed start failed")
        kept = set(self.routers)
        for cid, router in b.routers.items():
            if cid not in kept:
                router.stats.forget()

    async def _launch(self, runners: list[Any]) -> None:
        """Run ``runners`` (committed). Onramps not started yet (all of them at start-up; at a reload
        those that changed, whose predecessors have now released what they held) start in their own
        tasks, each running as soon as it has started: one slow to connect does not hold the others.
        Returns once all have started; raises ``StartFailed`` for the first that could not (the
        caller then stops intake, so that the graph drains and ends cleanly)."""
        loop = asyncio.get_running_loop()
        late = [r for r in runners if isinstance(r, OnrampRunner) and not r.started]
        for r in late:
            r.started_future = loop.create_future()
        order = [r for r in runners if isinstance(r, OfframpRunner)] + [r for r in runners if not isinstance(r, (OfframpRunner, OnrampRunner))]
        order += [r for r in runners if isinstance(r, OnrampRunner)]
        for runner in order:
            task = asyncio.create_task(runner.run(), name=f"headrace:{_name(runner)}")
            task.add_done_callback(self._ended)
            self.tasks[id(runner)] = task
        pending: set[asyncio.Future[None]] = {r.started_future for r in late if r.started_future is not None}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                if not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        name = task.get_name().removeprefix("headrace:")
        log.error("component %s failed: %s", name, describe(exc), exc_info=exc)
        self.failures.append((name, exc))
        if self.on_failure is not None:
            self.on_failure(name, exc)

    async def start(self, timeout: float = 60.0) -> None:
        """Build the graph, start every component (each within ``timeout``) and run it.

        ``StartFailed`` names the component that could not start; the daemon then stops what
        did (``wait`` returns at once: nothing was read)."""
        self._signatures_new = {cid: component_signature(c) for cid, c in self.graph.components.items()}
        b = self._build(self.graph, ReloadDiff(added=list(self.graph.components)))
        await self._preflight(b, timeout)
        self._commit(b)
        self.signatures = dict(self._signatures_new)
        self.started = True
        await self._launch(b.fresh)

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

    async def reload(self, new: Graph, timeout: float = 60.0) -> ReloadDiff:
        """Apply ``new``: keep what did not change, drain what changed, start what is new.

        Raises ``StartFailed`` when a new component cannot start; the running graph then stays
        as it was (a failure before anything changed) or is put back (a changed onramp that could
        not start once its predecessor had stopped)."""
        self.not_reloading.clear()
        try:
            old = self.graph
            try:
                return await self._reload(new, timeout)
            except RolledForward as exc:
                log.error("reload failed (%s); putting the previous config back", exc.failure)
                try:
                    await self._reload(old, timeout)
                except StartFailed as again:
                    raise RollbackFailed(f"{exc.failure}; the previous config could not be restored either: {again}") from again
                raise exc.failure from None
        finally:
            self.not_reloading.set()

    async def _reload(self, new: Graph, timeout: float) -> ReloadDiff:
        diff = self.diff(new)
        old_runners = {id(r): r for r in self.runners()}
        old_routers = dict(self.routers)
        old_inboxes = {id(i): i for i in self.inboxes.values()}
        old_specs = [r.spec for r in self.chains.values() if hasattr(r, "spec") and hasattr(r.spec, "nodes")]
        b = self._build(new, diff)
        await self._preflight(b, timeout)  # nothing running has changed yet: a failure leaves it all as it was
        self._commit(b)
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
        try:
            await self._launch(b.fresh)
        except StartFailed as exc:  # a changed onramp: its predecessor is gone, so put the old graph back
            raise RolledForward(exc) from exc
        return diff


class RolledForward(Exception):
    """A reload took effect and then one of its onramps could not start (internal to ``reload``)."""

    def __init__(self, failure: StartFailed) -> None:
        super().__init__(str(failure))
        self.failure = failure


class RollbackFailed(Exception):
    """A failed reload could not put the previous config back: the daemon cannot go on."""


def _construct(cid: str, make: Callable[..., T], *args: Any) -> T:
    """A plugin made from its config; whatever its constructor raises names the component."""
    try:
        return make(*args)
    except Exception as exc:
        raise StartFailed(cid, describe(exc)) from exc


def _name(runner: Any) -> str:
    spec = getattr(runner, "spec", None)
    return str(getattr(spec, "id", None) or getattr(runner, "cid", "?"))
