"""Process life: start workers, run the loop, turn signals into actions, drain, exit.

Signal handlers only enqueue; one loop dispatches: SIGHUP -> reload, SIGTERM/SIGINT ->
drain, a second SIGTERM/SIGINT -> force. Exit codes: 0 ok, 78 bad config, 1 failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from headrace.config.errors import ConfigError
from headrace.config.graph import Graph
from headrace.config.load import load_file
from headrace.daemon.early import SIGNALS, record_early_signals
from headrace.metrics.defs import Metrics
from headrace.runtime.engine import Engine
from headrace.runtime.loopguard import LoopGuard

log = logging.getLogger("headrace.daemon")

EX_OK, EX_FAIL, EX_CONFIG = 0, 1, 78
FORCE_GRACE = 0.5  # seconds a forced exit still gives the cancelled graph (and its final commit) to wind down


def worker_count(setting: Any) -> int:
    if setting == "auto":
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:
            return os.cpu_count() or 1
    return int(setting)


class Daemon:
    def __init__(self, config_path: str, watch: bool = False, early: list[str] | None = None) -> None:
        self.early = early if early is not None else record_early_signals()
        self.config_path = Path(config_path)
        self.watch = watch
        self.metrics = Metrics()
        self.signals: asyncio.Queue[str] = asyncio.Queue()
        self.engine: Engine | None = None
        self.pool: Any = None
        self.graph: Graph | None = None
        self.exit_code = EX_OK
        self.stop_requested = False
        self.reload_lock = asyncio.Lock()

    # -- entry -------------------------------------------------------------------------------
    def run(self) -> int:
        early = self.early
        try:
            self.graph = load_file(self.config_path)
        except ConfigError as exc:
            log.error("invalid config:\n%s", exc)
            return EX_CONFIG
        workers = worker_count(self.graph.daemon.workers)
        if workers > 0 and _needs_pool(self.graph):
            from headrace.runtime.pool import WorkerPool

            # before the loop: the fork server is started from a quiet process
            self.pool = WorkerPool(workers, self.metrics, stage_timeout=self.graph.daemon.stage_timeout,
                                   max_rss=self.graph.daemon.worker_max_rss or 0)  # fmt: skip
            self.pool.start()
        try:
            try:
                import uvloop

                return uvloop.run(self.main(early))
            except ImportError:
                return asyncio.run(self.main(early))
        finally:
            if self.pool is not None:
                self.pool.shutdown()

    async def main(self, early: list[str] | None = None) -> int:
        assert self.graph is not None
        loop = asyncio.get_running_loop()
        for sig, name in SIGNALS:
            loop.add_signal_handler(sig, self.signals.put_nowait, name)
        for name in early or ():  # signals that came while the config loaded and workers started
            self.signals.put_nowait(name)
        from headrace.daemon.notify import Notifier

        self.notifier = Notifier()
        guard = LoopGuard(self.graph.daemon.loop_block_threshold, self._blocked)
        self.guard = guard
        lag = self.metrics["headrace_event_loop_lag_seconds"]
        lag_task = asyncio.create_task(guard.measure_lag(0.05, lag.observe))
        admin = None
        listen = self.graph.daemon.metrics.listen
        if listen:
            from headrace.daemon.admin import AdminServer

            admin = AdminServer(listen, self.metrics, self._ready, self._status, self._reload_request)
            try:
                await admin.start()
            except OSError as exc:
                log.error("cannot listen on %s for metrics: %s", listen, exc)
                lag_task.cancel()
                return EX_FAIL
        if self.pool is not None:
            await self.pool.attach()
        try:
            self.engine = Engine(self.graph, self.metrics, guard, self.request_stop, self.pool)
            await self.engine.start()
        except Exception as exc:
            log.error("cannot start: %s", exc)
            lag_task.cancel()
            if admin:
                await admin.stop()
            return EX_FAIL
        log.info("running %s: %d onramp(s), %d node(s), %d offramp(s)%s", self.config_path.name,
                 len(self.graph.of_kind("onramp")), len(self.graph.of_kind("node")), len(self.graph.of_kind("offramp")),
                 f", {self.pool.size} worker(s)" if self.pool else "")  # fmt: skip
        ready_task = asyncio.create_task(self._announce_ready())
        from headrace.metrics.sampler import run_sampler

        sampler_task = asyncio.create_task(run_sampler(self))
        background = [asyncio.create_task(self._heartbeat())]
        if self.watch:
            background.append(asyncio.create_task(self._watch()))
        engine_done = asyncio.create_task(self.engine.wait())
        deadline: float | None = None
        while not engine_done.done():
            sig_task = asyncio.create_task(self.signals.get())
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0)
            done, _ = await asyncio.wait({engine_done, sig_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if sig_task not in done:
                sig_task.cancel()
            if not done:  # drain deadline passed
                log.error("drain did not finish within shutdown_timeout (%.1fs); forcing exit", self.graph.daemon.shutdown_timeout)
                self.exit_code = EX_FAIL
                self.engine.cancel()
                break
            if sig_task in done:
                name = sig_task.result()
                if name == "hup":
                    await self._reload_request()
                elif name == "stop" or deadline is None:
                    log.info("draining: intake stopped, delivering what is in flight")
                    self.notifier.stopping()
                    self.engine.stop_intake()
                    deadline = time.monotonic() + self.graph.daemon.shutdown_timeout
                else:
                    log.error("second signal: forcing exit without draining")
                    self.exit_code = EX_FAIL
                    self.engine.cancel()
                    break
        if not engine_done.done():  # forced: a final commit to a hung broker must not hold the exit past the deadline
            await asyncio.wait({engine_done}, timeout=FORCE_GRACE)
            engine_done.cancel()
        await asyncio.gather(engine_done, return_exceptions=True)
        ready_task.cancel()
        sampler_task.cancel()
        for t in background:
            t.cancel()
        lag_task.cancel()
        if admin:
            await admin.stop()
        if self.exit_code == EX_OK:
            log.info("stopped: everything in flight was delivered")
        return self.exit_code

    # -- hooks -------------------------------------------------------------------------------
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
        self.notifier.reloading()
        t0 = time.monotonic()
        reloads = self.metrics["headrace_config_reloads_total"]
        try:
            new = load_file(self.config_path)
        except ConfigError as exc:
            log.error("reload rejected, the running config stays:\n%s", exc)
            reloads.labels("failure").inc()
            self.metrics["headrace_config_last_reload_successful"].set(0)
            self.notifier.ready("reload failed; running the previous config")
            return {"ok": False, "errors": [str(i) for i in exc.issues]}
        try:
            if self.pool is None and _needs_pool(new) and worker_count(new.daemon.workers) > 0:
                from headrace.runtime.pool import WorkerPool

                self.pool = WorkerPool(worker_count(new.daemon.workers), self.metrics, stage_timeout=new.daemon.stage_timeout,
                                       max_rss=new.daemon.worker_max_rss or 0)  # fmt: skip
                self.pool.start()
                await self.pool.attach()
                self.engine.pool = self.pool
            diff = await self.engine.reload(new)
        except Exception as exc:
            log.exception("reload failed while applying; the previous graph may be partly replaced")
            reloads.labels("failure").inc()
            self.metrics["headrace_config_last_reload_successful"].set(0)
            self.notifier.ready("reload failed")
            return {"ok": False, "errors": [f"{type(exc).__name__}: {exc}"]}
        self.graph = new
        reloads.labels("success").inc()
        self.metrics["headrace_config_last_reload_successful"].set(1)
        took = time.monotonic() - t0
        log.info("reloaded in %.2fs: added %s, changed %s, removed %s, unchanged %d", took, diff.added or "-", diff.changed or "-",
                 diff.removed or "-", len(diff.unchanged))  # fmt: skip
        self.notifier.ready("reloaded")
        return {"ok": True, "seconds": round(took, 3), "diff": diff.as_dict()}

    async def _watch(self, interval: float = 0.5, debounce: float = 1.0) -> None:
        """--watch: reload when the config file changes (after it stayed unchanged for ``debounce``)."""

        def stamp() -> tuple[int, int] | None:
            try:
                st = self.config_path.stat()
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size)

        last = stamp()
        changed_at: float | None = None
        while True:
            await asyncio.sleep(interval)
            now = stamp()
            if now != last:
                last, changed_at = now, time.monotonic()
            elif changed_at is not None and time.monotonic() - changed_at >= debounce:
                changed_at = None
                log.info("config file changed; reloading")
                await self._reload_request()

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
            self.notifier.status(f"{rate:,.0f} events/s in; {self.pool.size if self.pool else 0} worker(s)")

def _needs_pool(graph: Graph) -> bool:
    """True when some stage would run on workers (imports stage modules, as the engine will)."""
    from headrace.plugins import registry
    from headrace.plugins.base import PluginContext

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
