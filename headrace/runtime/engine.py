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
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from headrace import registry
from headrace.config.graph import Graph
from headrace.contract.acks import AckRef
from headrace.contract.codec import Codec
from headrace.contract.context import PluginContext
from headrace.metrics.defs import Metrics
from headrace.runtime import replay
from headrace.runtime.batch import Batch
from headrace.runtime.budget import ErrorBudget
from headrace.runtime.inbox import Inbox
from headrace.runtime.lastresort import LastResort, state_dir
from headrace.runtime.loopchain import ChainRunner
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.offramp import OfframpRunner
from headrace.runtime.onramp import OnrampRunner
from headrace.runtime.router import Router, config_digest
from headrace.runtime.runner import Runner
from headrace.runtime.starting import StartFailed, describe, start_all, start_one
from headrace.runtime.tap import Tap
from headrace.runtime.wiring import Build, ReloadDiff, build, codecs_used, commit, component_signature

log = logging.getLogger("headrace.engine")
# a changed onramp waits at most this long at a reload for the acks of what it handed on, before it stops
SETTLE_TIMEOUT = 5.0


class Engine:
    def __init__(self, graph: Graph, metrics: Metrics, guard: LoopGuard, request_stop: Callable[[], None], pool: Any = None,
                 on_failure: Callable[[str, BaseException], None] | None = None, idle_onramps: bool = False) -> None:  # fmt: skip
        self.graph = graph
        self.idle_onramps = idle_onramps  # a one-shot replay: onramps read nothing (their outputs take the replayed records)
        self.metrics = metrics
        self.guard = guard
        self.pool = pool
        self.request_stop = request_stop
        self.on_failure = on_failure  # a runner died at run time: the daemon fails (it never reports success then)
        self.onramps: dict[str, OnrampRunner] = {}
        self.offramps: dict[str, OfframpRunner] = {}
        self.chains: dict[str, Runner] = {}
        self.chain_sigs: dict[str, tuple[Any, ...]] = {}
        self.inboxes: dict[str, Inbox] = {}
        self.routers: dict[str, Router] = {}
        self.codecs: dict[str, Codec] = {}
        self.opened: set[str] = set()  # codec keys whose ``open`` returned
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.failures: list[tuple[str, BaseException]] = []
        self.generation = 0
        self.signatures: dict[str, str] = {}
        # what every dead letter carries of where it came from (see Router.send); updated in place on reload
        self.provenance: dict[str, str] = {"config": ""}
        self.pressure = 1.0  # queue bounds and reads ahead under memory pressure (read_less)
        self._signatures_new: dict[str, str] = {}
        self.started = False
        self.draining = False
        self.not_reloading = asyncio.Event()
        self.not_reloading.set()
        self.last_resort = LastResort(state_dir(graph.daemon, graph.base_dir))
        budget = graph.daemon.error_budget
        self.budget = ErrorBudget(budget, metrics, self._budget_spent) if budget is not None else None

    def _budget_spent(self, onramp: str, why: str) -> None:
        """``daemon.error_budget`` tripped for ``onramp``: pause it, or stop the daemon (exit 1)."""
        assert self.budget is not None
        if self.budget.cfg.then == "stop":
            self.failures.append((onramp, RuntimeError(f"error budget exceeded: {why}")))
            self.request_stop()
            return
        runner = self.onramps.get(onramp)
        if runner is not None:
            runner.hold(f"error budget exceeded: {why}")

    def context(self, cid: str, graph: Graph) -> PluginContext:
        spec = graph.components.get(cid)
        return PluginContext(cid, graph.base_dir, metrics=self.metrics, request_stop=self.request_stop,
                             state_dir=state_dir(graph.daemon, graph.base_dir), framing=tuple(p.name for p in spec.processors) if spec else ())  # fmt: skip

    def codec(self, name: str, graph: Graph | None = None) -> Codec:
        if name not in self.codecs:
            self.codecs[name] = registry.make_codec(name, (graph or self.graph).codecs)
        return self.codecs[name]

    def _prune_codecs(self, graph: Graph) -> None:
        """Forget the codec instances of keys the running graph no longer names (a codec's options
        are part of its key: every reload that changes them made a new one). Runners still draining
        hold their own."""
        used = codecs_used(graph)
        for key in [k for k in self.codecs if k not in used]:
            del self.codecs[key]
            self.opened.discard(key)

    def runners(self) -> list[Runner]:
        return [*self.onramps.values(), *self.chains.values(), *self.offramps.values()]

    @property
    def finite(self) -> bool:
        return all(r.plugin.finite for r in self.onramps.values())

    @property
    def ready(self) -> bool:
        return (self.started and not self.draining and all(r.plugin.ready and r.unheld.is_set() for r in self.onramps.values())
                and not self.failing_offramps())

    async def replay(self, into: str | None, records: list[Any], dry_run: bool = False, timeout: float = 60.0) -> dict[str, Any]:
        """Put dead letters back into an onramp's output (see ``headrace.runtime.replay``); returns the report."""
        ledger = replay.Ledger(state_dir(self.graph.daemon, self.graph.base_dir))
        done = ledger.load()
        groups: dict[str, list[tuple[str, Any, dict[str, Any]]]] = {}
        unroutable: Counter[str] = Counter()
        skipped = invalid = 0
        seen: set[str] = set()
        for rec in records:
            if not isinstance(rec, dict) or "event" not in rec or not isinstance(rec.get("meta"), dict):
                invalid += 1
                continue
            event, meta = rec["event"], rec["meta"]
            key = replay.record_key(event, meta)
            if key in done or key in seen:
                skipped += 1
                continue
            seen.add(key)
            err = meta.get("error") if isinstance(meta.get("error"), dict) else {}
            target = into or err.get("origin")
            if not target or (target not in self.onramps and target not in self.inboxes):
                why = f"no onramp or first node of a chain {target!r} to replay into (give --into)" if target else "no error.origin in its meta (give --into)"
                unroutable[why] += 1
                continue
            fresh = {k: v for k, v in meta.items() if k not in ("error", "replayed")}
            fresh["replayed"] = {"key": key, "error": err}
            groups.setdefault(target, []).append((key, event, fresh))
        if dry_run:
            return {"would_replay": sum(len(g) for g in groups.values()), "skipped": skipped, "invalid": invalid,
                    "failed": sum(unroutable.values()), "reasons": dict(unroutable)}  # fmt: skip
        run = replay.ReplayRun()
        keys_by_token: dict[int, list[str]] = {}
        try:
            for token, (target, items) in enumerate(groups.items()):
                keys_by_token[token] = [k for k, _, _ in items]
                for k, _, _ in items:
                    replay.PENDING[k] = run
                run.expect()
                ref = AckRef(len(items), token, run.ack, run.fail)
                spec = self.graph.components[target]
                codec = spec.codec if spec.kind != "node" else "json"
                batch = Batch.decoded([v for _, v, _ in items], [m for _, _, m in items], codec=codec, origin=target, group=target, ack=ref)
                if target in self.onramps:  # as if the onramp read them again: to everything it is linked to
                    await self.routers[target].send("out", batch)
                else:  # the first node of a chain (on the loop or a worker segment): into its queue
                    await self.inboxes[target].put(batch)
            if keys_by_token:
                await asyncio.wait_for(run.finished.wait(), timeout)
        except TimeoutError:
            return {"error": f"the replayed records were not all delivered within {timeout:g}s; see the dead letters for them"}
        finally:
            for keys in keys_by_token.values():
                for k in keys:
                    replay.PENDING.pop(k, None)
        result = replay.report(keys_by_token, run, skipped, unroutable, invalid)
        ledger.add(result.pop("keys"))
        return result

    def tap(self, tap: Tap) -> Callable[[], None]:
        """Attach ``tap`` to its component's port; returns what detaches it. ``ValueError`` names
        what cannot be tapped: an unknown component or port. The ``out`` of a node inside a chain
        goes straight into the next node: the chain runner copies what it sends there."""
        spec = self.graph.components.get(tap.component)
        if spec is None:
            raise ValueError(f"no component {tap.component!r} (see headrace graph or /status)")
        key = tap.port
        if spec.kind == "offramp" and tap.port == "in":
            holder = self.offramps[tap.component].taps
        else:
            ports = {p for (cid, p) in self.graph.edges if cid == tap.component} | set(spec.ports)
            if tap.port not in ports:
                extra = ' (an offramp: "in" is what it is given)' if spec.kind == "offramp" else ""
                raise ValueError(f"{tap.component} has no port {tap.port!r}; its ports: {sorted(ports)}{extra}")
            holder = self.routers[tap.component].taps
            for r in self.chains.values():
                if tap.component in r.nodes[:-1] and tap.port == "out":  # its out goes straight into the next node: the chain
                    holder, key = r.interior, tap.component  # copies every n-th event of it (a worker segment runs unfused then)
        holder.setdefault(key, []).append(tap)

        def detach() -> None:
            taps = holder.get(key, [])
            if tap in taps:
                taps.remove(tap)
            if not taps:
                holder.pop(key, None)

        return detach

    def pause_all(self, why: str, kind: str) -> None:
        """Every onramp stops reading (``release_all`` lets them read again)."""
        for r in self.onramps.values():
            r.hold(why, kind)

    def release_all(self, kind: str) -> None:
        for r in self.onramps.values():
            r.unhold(kind)

    def read_less(self, factor: float) -> None:
        """Memory pressure: every queue bound and every source's reads ahead at ``factor`` of the configured (1.0: restored)."""
        self.pressure = factor
        for inbox in self.inboxes.values():
            inbox.scale(factor)
        for r in self.onramps.values():
            r.plugin.read_less(factor)

    def failing_offramps(self) -> list[str]:
        """Offramps failing for longer than ``daemon.unready_after``: the daemon is not ready while there are any."""
        after = self.graph.daemon.unready_after
        if after is None:
            return []
        return [cid for cid, r in self.offramps.items() if r.retry.failing_for() >= after]

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
            # codecs that need the parent (a schema registry) learn what they write with before any record
            opening = [(k, c) for k, c in self.codecs.items() if c.needs_parent() and k not in self.opened]
            await start_all([(f"codec {k}", c.open) for k, c in opening], timeout)
            self.opened.update(k for k, _ in opening)
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
            try:
                await r.release()
            except Exception:
                log.exception("stopping %s failed", r.name)
        if self.pool is not None and b.segments:
            try:
                await self.pool.configure(drop=[s.id for s in b.segments])
            except Exception:
                log.exception("dropping the worker segments of a failed start failed")
        kept = set(self.routers)
        for cid, router in b.routers.items():
            if cid not in kept:
                router.stats.forget()

    async def _launch(self, runners: list[Runner]) -> None:
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
            task = asyncio.create_task(runner.run(), name=f"headrace:{runner.name}")
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
        b = build(self, self.graph, ReloadDiff(added=list(self.graph.components)))
        await self._preflight(b, timeout)
        commit(self, b)
        self.signatures = dict(self._signatures_new)
        self.provenance["config"] = config_digest(self.signatures)
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
            try:
                await r.close_buffer()
            except Exception:
                log.exception("closing the disk buffer of onramp %s failed", r.spec.id)
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
        old_inboxes = {id(i) for i in self.inboxes.values()}
        old_segments = [r.segment for r in self.chains.values() if r.segment is not None]
        b = build(self, new, diff)
        await self._preflight(b, timeout)  # nothing running has changed yet: a failure leaves it all as it was
        commit(self, b)
        current = {id(r) for r in self.runners()}
        retiring = [r for rid, r in old_runners.items() if rid not in current]
        live_inboxes = {id(i) for i in self.inboxes.values()}
        for r in retiring:  # they keep the old routing while they drain, and close nothing shared
            r.retire(old_routers)
        for r in retiring:
            r.stop()
        for r in retiring:  # in the old topological order: upstream drains before downstream closes
            if r.inbox is not None and id(r.inbox) in old_inboxes and id(r.inbox) not in live_inboxes:
                r.inbox.retire()
            task = self.tasks.pop(id(r), None)
            if task is not None:
                await asyncio.wait({task})  # not gather: a cancelled reload must not cancel a drain
            if isinstance(r, OnrampRunner) and r.unsettled:  # its acks reach it before it stops (a broker would resend)
                await r.settle(SETTLE_TIMEOUT)
            try:
                await r.release()
            except Exception:
                log.exception("stopping %s failed", r.name)
        if self.pool is not None:
            kept = {r.segment.id for r in self.chains.values() if r.segment is not None}
            await self.pool.configure(drop=[s.id for s in old_segments if s.id not in kept])
        for cid in diff.removed:  # their series disappear from /metrics
            old_routers[cid].stats.forget()
        self.signatures = dict(self._signatures_new)
        self.provenance["config"] = config_digest(self.signatures)
        self._prune_codecs(new)
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
