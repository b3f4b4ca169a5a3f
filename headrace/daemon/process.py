"""Process life: start workers, run the loop, turn signals into actions, drain, exit.

Signal handlers only enqueue; one loop dispatches: SIGHUP -> reload, SIGTERM/SIGINT ->
drain, a second SIGTERM/SIGINT -> force. Exit codes: 0 ok, 78 bad config, 1 failure.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from headrace import registry
from headrace.config.errors import ConfigError
from headrace.config.graph import Graph
from headrace.config.load import load_file
from headrace.daemon.early import SIGNALS, record_early_signals
from headrace.errors import EX_CONFIG, EX_FAIL, EX_OK
from headrace.metrics.defs import Metrics
from headrace.metrics.stagemetrics import StageCollector
from headrace.runtime.engine import Engine, RollbackFailed
from headrace.runtime.heap import keep_freed_buffers
from headrace.runtime.loopguard import LoopGuard
from headrace.runtime.starting import StartFailed, describe

if TYPE_CHECKING:
    from headrace.runtime.replay import Job as ReplayJob
    from headrace.runtime.workers.pool import WorkerPool

log = logging.getLogger("headrace.daemon")

FORCE_GRACE = 0.5  # seconds a forced exit still gives the cancelled graph (and its final commit) to wind down


def worker_count(setting: Any) -> int:
    if setting == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:
            return os.cpu_count() or 1
    return int(setting)


# daemon settings a reload applies at once (read where used, or handed to the pool and the loop guard)
LIVE_DAEMON_SETTINGS = frozenset({"shutdown_timeout", "start_timeout", "stage_timeout", "loop_block_threshold", "state_dir", "unready_after"})


class Daemon:
    def __init__(self, config_path: str, watch: bool = False, early: list[str] | None = None, replay: ReplayJob | None = None) -> None:
        self.early = early if early is not None else record_early_signals()
        self.replay_job = replay  # a one-shot replay (headrace replay --config): no admin endpoint, onramps idle, exit when sent
        self.config_path = Path(config_path)
        self.watch = watch
        self.metrics = Metrics()
        self.metrics.registry.register(StageCollector())  # what stages declare with headrace.metric
        self.signals: asyncio.Queue[str] = asyncio.Queue()
        self.engine: Engine | None = None
        self.pool: WorkerPool | None = None
        self.graph: Graph | None = None
        self.exit_code = EX_OK
        self.stop_requested = False
        self.forced = False
        self.deferred: list[str] = []  # signals that came while starting, handled once running
        self.reload_lock = asyncio.Lock()

    # -- entry -------------------------------------------------------------------------------
    def run(self) -> int:
        early = self.early
        try:
            self.graph = load_file(self.config_path)
        except ConfigError as exc:
            log.error("invalid config:\n%s", exc)
            return EX_CONFIG
        for issue in self.graph.warnings:  # what `headrace check` warns about, said by `run` too
            log.warning("config: %s: warning: %s", issue.position, issue.message)
        workers = worker_count(self.graph.daemon.workers)
        if workers > 0 and _needs_pool(self.graph):
            self.pool = _worker_pool(self.graph, self.metrics)  # before the loop: the fork server is started from a quiet process
            self.pool.start()
        # decoded events on the loop are many small containers that die within their batch: collecting
        # the young generation every 700 allocations (and the old ones, with everything imported so
        # far, every 100 of those) cost about a quarter of the parent's time under an async stage (K3)
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
        if self.graph.daemon.memory is None:  # under a budget the resident size is what it holds (runtime/heap.py)
            keep_freed_buffers()  # batches, worker jobs and answers, Kafka fetches of MiBs: no page faults for each
        try:
            try:
                import uvloop

                return uvloop.run(self.main(early))
            except ImportError:
                return asyncio.run(self.main(early))
        finally:
            if self.pool is not None:
                self.pool.shutdown(timeout=0.0 if self.forced else 5.0)  # forced: workers busy in a stage are killed at once

    async def main(self, early: list[str] | None = None) -> int:
        assert self.graph is not None
        loop = asyncio.get_running_loop()
        for sig, name in SIGNALS:
            loop.add_signal_handler(sig, self.signals.put_nowait, name)
        for name in early or ():  # signals that came while the config loaded and workers started
            self.signals.put_nowait(name)
        from headrace.daemon.notify import Notifier

        self.notifier = Notifier()
        self.memory_paused: str | None = None  # why every source is paused for memory (sd_notify STATUS says it)
        guard = LoopGuard(self.graph.daemon.loop_block_threshold, self._blocked)
        self.guard = guard
        lag = self.metrics["headrace_event_loop_lag_seconds"]
        background = [asyncio.create_task(guard.measure_lag(0.05, lag.observe))]
        admin = None
        try:
            listen = self.graph.daemon.metrics.listen
            if listen and self.replay_job is None:
                from headrace.daemon.admin import AdminServer, admin_token

                try:
                    token = admin_token(self.graph.daemon.metrics, self.graph.base_dir)
                except OSError as exc:
                    log.error("cannot start: daemon.metrics.token_file: %s", exc)
                    return EX_CONFIG
                admin = AdminServer(listen, self.metrics, self._ready, self._status, self._reload_request,
                                    tuple(self.graph.daemon.metrics.allowed_hosts), self._tap, self._codec, self._replay, token)  # fmt: skip
                try:
                    await admin.start()
                except OSError as exc:
                    log.error("cannot start: metrics listen %s: %s", listen, exc)
                    return EX_FAIL
            if self.pool is not None:
                await self.pool.attach()
            self.engine = Engine(self.graph, self.metrics, guard, self.request_stop, self.pool, on_failure=self._component_failed,
                                 idle_onramps=self.replay_job is not None)  # fmt: skip
            if not await self._start():
                return self.exit_code
            log.info("running %s: %d onramp(s), %d node(s), %d offramp(s)%s", self.config_path.name,
                     len(self.graph.of_kind("onramp")), len(self.graph.of_kind("node")), len(self.graph.of_kind("offramp")),
                     f", {self.pool.size} worker(s)" if self.pool else "")  # fmt: skip
            background.append(asyncio.create_task(self._announce_ready()))
            from headrace.metrics.sampler import run_sampler

            background.append(asyncio.create_task(run_sampler(self)))
            background.append(asyncio.create_task(self._watch_memory()))
            background.append(asyncio.create_task(self._heartbeat()))
            if self.watch and self.replay_job is None:
                background.append(asyncio.create_task(self._watch()))
            if self.replay_job is not None:
                background.append(asyncio.create_task(self._one_shot(self.replay_job)))
            await self._serve()
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if admin:
                await admin.stop()
        if self.exit_code == EX_OK:
            log.info("stopped: everything in flight was delivered")
        return self.exit_code

    async def _start(self) -> bool:
        """Start the graph while signals keep working: a stop cancels a start that waits (for a
        broker, a port, a stage's setup), a reload waits for the start. False: do not serve
        (start failed, exit code set; or stopped before anything ran)."""
        assert self.engine is not None and self.graph is not None
        start = asyncio.create_task(self.engine.start(self.graph.daemon.start_timeout))
        while not start.done():
            sig_task = asyncio.create_task(self.signals.get())
            await asyncio.wait({start, sig_task}, return_when=asyncio.FIRST_COMPLETED)
            if not sig_task.done():
                await _reap(sig_task)
                continue
            name = sig_task.result()
            if name == "hup":
                self.deferred.append(name)  # reloaded once running
                log.info("reload requested while starting: it is applied once the daemon runs")
                continue
            log.info("stop requested while starting: components still starting are abandoned")
            self.deferred.append("stop")
            start.cancel()
        try:
            await start
        except asyncio.CancelledError:
            pass
        except StartFailed as exc:
            log.error("cannot start: %s", exc)
            self.exit_code = EX_FAIL
        for name in self.deferred:
            self.signals.put_nowait(name)
        self.deferred.clear()
        if self.exit_code != EX_OK:
            self.engine.stop_intake()  # what did start stops again; nothing was read
            await asyncio.wait_for(asyncio.shield(self.engine.wait()), self.graph.daemon.shutdown_timeout)
            return False
        return True

    async def _serve(self) -> None:
        """The running daemon: one loop for signals, reloads and the drain deadline."""
        assert self.engine is not None and self.graph is not None
        engine_done = asyncio.create_task(self.engine.wait())
        reloading: asyncio.Task[dict[str, Any]] | None = None
        stop_after_reload = False
        deadline: float | None = None
        while not engine_done.done():
            if stop_after_reload and reloading is None:
                stop_after_reload = False
                self._drain("stop requested during a reload")
                deadline = time.monotonic() + self.graph.daemon.shutdown_timeout
            sig_task = asyncio.create_task(self.signals.get())
            waiting: set[asyncio.Future[Any]] = {engine_done, sig_task}
            if reloading is not None:
                waiting.add(reloading)
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if sig_task not in done:
                await _reap(sig_task)
            if reloading is not None and reloading.done():
                reloading = None
            if not done:  # drain deadline passed
                log.error("drain did not finish within shutdown_timeout (%.1fs); forcing exit", self.graph.daemon.shutdown_timeout)
                self._force()
                break
            if sig_task not in done:
                continue
            name = sig_task.result()
            if name == "hup":
                if self.engine.draining:
                    log.warning("reload refused: the daemon is draining (a reload now would start onramps that the drain ends)")
                elif reloading is None:
                    reloading = asyncio.create_task(self._reload_request())
                else:
                    log.info("reload requested while one is in progress: the config file is read again after it")
                    reloading.add_done_callback(lambda _t: self.signals.put_nowait("hup"))
            elif name == "stop" and (deadline is not None or stop_after_reload):
                continue  # a component asking for the stop that is already under way
            elif deadline is None and not stop_after_reload:
                if reloading is not None:
                    log.info("stop requested during a reload: draining once the reload is done")
                    stop_after_reload = True
                    continue
                self._drain("draining: intake stopped, delivering what is in flight")
                deadline = time.monotonic() + self.graph.daemon.shutdown_timeout
            else:
                log.error("second signal: forcing exit without draining")
                self._force()
                break
        if not engine_done.done():  # forced: a final commit to a hung broker must not hold the exit past the deadline
            await asyncio.wait({engine_done}, timeout=FORCE_GRACE)
            engine_done.cancel()
        await asyncio.gather(engine_done, return_exceptions=True)
        if reloading is not None:
            reloading.cancel()
            await asyncio.gather(reloading, return_exceptions=True)
        if self.engine.failures and self.exit_code == EX_OK:
            self.exit_code = EX_FAIL

    def _drain(self, why: str) -> None:
        assert self.engine is not None
        log.info("%s", why)
        self.notifier.stopping()
        self.engine.stop_intake()

    def _force(self) -> None:
        assert self.engine is not None
        self.exit_code = EX_FAIL
        self.forced = True
        self.engine.cancel()

    def _component_failed(self, name: str, exc: BaseException) -> None:
        """A component died at run time (a bug, or a source that could not be restarted): the daemon
        drains what it can and exits 1, never claiming that everything was delivered."""
        self.exit_code = EX_FAIL
        log.error("the daemon stops: component %s failed", name)
        self.request_stop()

    # -- hooks -------------------------------------------------------------------------------
    async def _one_shot(self, job: ReplayJob) -> None:
        """``headrace replay --config``: send the job's records through the graph, then drain and exit."""
        assert self.engine is not None
        try:
            t0 = time.monotonic()
            for due, chunk in job.chunks():
                wait = due - (time.monotonic() - t0)
                if wait > 0:
                    await asyncio.sleep(wait)
                result = await self.engine.replay(job.into, chunk, job.dry_run)
                if "error" in result:
                    job.error = str(result["error"])
                    break
                job.add(result)
        except Exception as exc:  # a bug: the report must not claim the rest was sent
            log.exception("replay failed")
            job.error = f"replay failed: {exc!r}"
        finally:
            self.request_stop()

    def request_stop(self) -> None:
        if not self.stop_requested:
            self.stop_requested = True
            self.signals.put_nowait("stop")

    def _blocked(self, cid: str, seconds: float) -> None:
        self.metrics["headrace_loop_blocked_seconds_total"].labels(cid).inc(seconds)

    def _ready(self) -> bool:
        return self.engine is not None and self.engine.ready and (self.pool is None or self.pool.ready)

    async def _announce_ready(self) -> None:
        while not self._ready():
            await asyncio.sleep(0.05)
        self.notifier.ready("running")

    def _status(self) -> dict[str, Any]:
        from headrace.metrics.status import build_status

        return build_status(self)

    @property
    def workers(self) -> WorkerPool | None:
        return self.pool

    def _processes(self) -> list[tuple[str, int]]:
        return [("parent", os.getpid()), *((f"worker {i}", pid) for i, pid in enumerate(self.pool.pids() if self.pool else []))]

    def _memory_pause(self, why: str) -> None:
        log.error("pausing every source: %s", why)
        self.memory_paused = why
        self.notifier.status(f"paused: {why}")
        if self.engine is not None:
            self.engine.pause_all(why, "memory")

    def _memory_resume(self) -> None:
        self.memory_paused = None
        self.notifier.status("running")
        if self.engine is not None:
            self.engine.release_all("memory")

    def _memory_shrink(self, factor: float) -> None:
        if self.engine is not None:
            self.engine.read_less(factor)

    async def _watch_memory(self) -> None:
        """``daemon.memory`` (see ``headrace.daemon.memory``); the gauges are kept without it too."""
        from headrace.daemon.memory import MemoryWatch

        assert self.graph is not None
        watch = MemoryWatch(self.graph.daemon.memory, self.metrics, self._processes, self._memory_pause, self._memory_resume,
                            shrink=self._memory_shrink)  # fmt: skip
        while True:
            try:
                watch.sample()
            except Exception:  # a failed read of /proc must not stop the daemon
                log.exception("memory watch failed")
            await asyncio.sleep(watch.interval)

    def _tap(self, tap: Any) -> Any:
        if self.engine is None:
            raise ValueError("the daemon is not running a graph yet")
        return self.engine.tap(tap)

    async def _replay(self, into: str | None, records: list[Any], dry_run: bool) -> dict[str, Any]:
        if self.engine is None or not self.engine.started:
            return {"error": "the daemon is not running a graph yet"}
        return await self.engine.replay(into, records, dry_run)

    def _codec(self, name: str) -> Any:
        return self.engine.codec(name) if self.engine is not None else registry.make_codec(name.split("@")[0])

    def placements(self) -> list[tuple[list[str], str]]:
        if self.engine is None:
            return []
        return [(list(r.nodes), "workers" if r.segment is not None else "loop") for r in self.engine.chains.values()]

    def is_ready(self) -> bool:
        return self._ready()

    def loop_lag_p99(self) -> float:
        return _p99(self.guard.lag_samples[-200:])

    async def _reload_request(self) -> dict[str, Any]:
        """Validate the config file again and apply it by difference; on any error keep running."""
        async with self.reload_lock:
            return await self._reload()

    async def _reload(self) -> dict[str, Any]:
        assert self.engine is not None
        if self.engine.draining:
            log.warning("reload refused: the daemon is draining")
            return {"ok": False, "errors": ["the daemon is draining: a reload now would start onramps that the drain ends"]}
        self.notifier.reloading()
        t0 = time.monotonic()
        try:
            new = load_file(self.config_path)
            for issue in new.warnings:
                log.warning("reload: config: %s: warning: %s", issue.position, issue.message)
        except ConfigError as exc:
            log.error("reload rejected, the running config stays:\n%s", exc)
            return self._reload_failed("reload failed; running the previous config", [str(i) for i in exc.issues])
        except Exception as exc:  # a loader bug must not end the daemon: the running config stays
            log.exception("reload rejected (the config could not be loaded), the running config stays")
            return self._reload_failed("reload failed; running the previous config", [describe(exc)])
        try:
            if self.pool is None and _needs_pool(new) and worker_count(new.daemon.workers) > 0:
                self.pool = _worker_pool(new, self.metrics)
                self.pool.start()
                await self.pool.attach()
                self.engine.pool = self.pool
            diff = await self.engine.reload(new, new.daemon.start_timeout)
        except StartFailed as exc:
            log.error("reload failed, the running config stays: %s", exc)
            return self._reload_failed("reload failed; running the previous config", [str(exc)])
        except RollbackFailed as exc:
            log.error("reload failed and the previous config could not be restored: %s", exc)
            self._component_failed("reload", exc)
            return self._reload_failed("reload failed; stopping", [str(exc)])
        except Exception as exc:
            log.exception("reload failed while applying")
            self._component_failed("reload", exc)
            return self._reload_failed("reload failed; stopping", [describe(exc)])
        restart = self._daemon_settings(self.graph, new) if self.graph is not None else []
        self.graph = new
        self.metrics["headrace_config_reloads_total"].labels("success").inc()
        self.metrics["headrace_config_last_reload_successful"].set(1)
        took = time.monotonic() - t0
        log.info("reloaded in %.2fs: added %s, changed %s, removed %s, unchanged %d", took, diff.added or "-", diff.changed or "-",
                 diff.removed or "-", len(diff.unchanged))  # fmt: skip
        for key in restart:
            log.warning("reload: daemon.%s changed; it takes effect only after a restart", key)
        self.notifier.ready("reloaded")
        answer: dict[str, Any] = {"ok": True, "seconds": round(took, 3), "diff": diff.as_dict()}
        if restart:
            answer["restart_required"] = restart
        return answer

    def _reload_failed(self, status: str, errors: list[str]) -> dict[str, Any]:
        self.metrics["headrace_config_reloads_total"].labels("failure").inc()
        self.metrics["headrace_config_last_reload_successful"].set(0)
        self.notifier.ready(status)
        return {"ok": False, "errors": errors}

    def _daemon_settings(self, old: Graph, new: Graph) -> list[str]:
        """Apply the daemon settings a running daemon can change; the names of those it cannot
        (every other ``daemon:`` setting that changed: components a reload keeps, the admin
        endpoint and the running workers were built with the old value)."""
        a, b = old.daemon, new.daemon
        if self.pool is not None:
            self.pool.stage_timeout = b.stage_timeout
        self.guard.threshold = b.loop_block_threshold
        restart = []
        for key in sorted(type(b).model_fields):
            if key in LIVE_DAEMON_SETTINGS:
                continue
            before, after = getattr(a, key), getattr(b, key)
            if key == "workers":
                if self.pool is not None and worker_count(after) != self.pool.size:
                    restart.append(key)
            elif key == "metrics":
                restart += [f"metrics.{k}" for k in sorted(type(after).model_fields) if getattr(before, k) != getattr(after, k)]
            elif before != after:
                restart.append(key)
        return restart

    async def _watch(self, interval: float = 0.5, debounce: float = 1.0) -> None:
        """--watch: reload when the config file or a stage module it names changes (after the files
        stayed unchanged for ``debounce``), like SIGHUP, which re-imports edited stage modules."""

        def stamp() -> tuple[tuple[str, int, int] | None, ...]:
            out: list[tuple[str, int, int] | None] = []
            for path in [self.config_path, *self._stage_files()]:
                try:
                    st = path.stat()
                    out.append((str(path), st.st_mtime_ns, st.st_size))
                except OSError:
                    out.append(None)
            return tuple(out)

        last = stamp()
        changed_at: float | None = None
        while True:
            await asyncio.sleep(interval)
            now = stamp()
            if now != last:
                last, changed_at = now, time.monotonic()
            elif changed_at is not None and time.monotonic() - changed_at >= debounce:
                changed_at = None
                log.info("config file or a stage module changed; reloading")
                await self._reload_request()
                last = stamp()  # the new config may name other modules

    def _stage_files(self) -> list[Path]:
        """The source files of the python stages' modules in the running config."""
        from headrace import registry
        from headrace.runtime.wiring import module_file

        files = []
        for c in self.graph.of_kind("node") if self.graph is not None else []:
            for module in registry.load("operators", c.plugin).source_modules(c.config):
                found = module_file(module)
                if found is not None:
                    files.append(found)
        return files

    async def _heartbeat(self) -> None:
        """sd_notify WATCHDOG=1 while the loop and every worker are healthy, and a STATUS line."""
        interval = self.notifier.watchdog_interval or 5.0
        received = self.metrics["headrace_component_received_events_total"]
        last_total, last_t = 0.0, time.monotonic()
        while True:
            await asyncio.sleep(min(interval, 5.0))
            healthy = self.pool is None or self.pool.healthy(max(interval * 2, 1.0))
            if healthy and self.notifier.watchdog_interval:
                self.notifier.watchdog()
            elif not healthy:
                log.warning("a worker is wedged or down: withholding the watchdog ping")
            total = sum(s.value for m in received.collect() for s in m.samples if s.labels.get("component_kind") == "onramp")
            now = time.monotonic()
            rate = (total - last_total) / max(now - last_t, 1e-9)
            last_total, last_t = total, now
            if self.memory_paused:  # STATUS keeps saying why nothing is read
                self.notifier.status(f"paused: {self.memory_paused}")
            else:
                self.notifier.status(f"{rate:,.0f} events/s in; {self.pool.size if self.pool else 0} worker(s)")

def _worker_pool(graph: Graph, metrics: Metrics) -> WorkerPool:
    """The worker pool the config's ``daemon:`` settings ask for (at start, or at a reload that first needs one)."""
    from headrace.runtime.workers.pool import WorkerPool

    d = graph.daemon
    return WorkerPool(worker_count(d.workers), metrics, stage_timeout=d.stage_timeout, max_rss=d.worker_max_rss or 0,
                      keep_heap=d.memory is None, nice=d.worker_nice, job_transport=d.job_transport)  # fmt: skip


def _needs_pool(graph: Graph) -> bool:
    """True when some stage would run on workers (imports stage modules, as the engine will)."""
    from headrace import registry
    from headrace.contract.context import PluginContext

    for c in graph.of_kind("node"):
        op = registry.load("operators", c.plugin)(c.id, c.config, PluginContext(c.id, graph.base_dir))
        if op.placement in ("workers", "any") and not op.is_async:
            return True
    return False


def _p99(samples: list[float]) -> float:
    if not samples:
        return 0.0
    s = sorted(samples)
    return s[min(int(0.99 * len(s)), len(s) - 1)]


async def _reap(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it is finished (a signal wait: no signal is lost, the
    queue keeps what a cancelled ``get`` did not take)."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
