"""``op: python``: a user function or class as a stage (how to write one: [docs/stages.md](../../stages.md)).

``def f(event, meta)`` is a CPU stage (runs on workers); ``async def`` is an I/O stage
(runs on the loop with ``concurrency`` in flight). A class with ``setup()`` /
``teardown()`` and ``process(event, meta)`` (or ``__call__``) is instantiated once per
process. Return the event (-> out), None (dropped, counted), a list (several
events), or raise (-> err with the cause). ``headrace.emit(port, event)`` targets a
named port declared in ``ports:``. In a list pipeline the node is named after the
callable (``fn: "stages:classify"`` -> ``main.classify``) unless ``id:`` names it.

A ``def`` stage whose code never names its ``meta`` parameter (``def f(event, meta):
event["x"] = 1; return event``) costs nothing for metas on workers: no per-record dict is
built for it (it is called with None), and its events leave with the metas they came with.
This is read from the function's code; a function that reaches its frame (``locals()``,
``sys._getframe``, ``eval``), has ``*args``, or is a callable object always gets its meta.
"""

from __future__ import annotations

import asyncio
import dis
import functools
import hashlib
import importlib
import importlib.machinery
import inspect
import logging
import site
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from headrace import _emit
from headrace.contract import tracked
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.stage import STAGE_ERRORS, Emit, Ev, Operator, PerRecord, Placement
from headrace.contract.tracked import READONLY_WROTE, ReadonlyViolation, track
from headrace.contract.units import Duration
from headrace.plugins.operators.readproof import prove


class PythonConfig(PluginConfig):
    fn: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", description="module:callable, imported with the config's folder first on sys.path")
    concurrency: int = Field(16, ge=1, le=100_000, description="async stages: events in flight")
    placement: Literal["workers", "loop"] | None = Field(None, description="override: def -> workers, async def -> loop")
    readonly: bool = Field(False, description="an assertion: the stage never modifies events; a write to one sends that record to err "
                                              "(ReadonlyViolation). Not needed for speed: see track_writes")
    track_writes: bool = Field(True, description="def stages get events that notice writes: one returned unwritten leaves as its original "
                                                 "bytes (no encode). false: plain dicts, every record encoded again (for a stage that "
                                                 "writes around the dict methods; see the stage guide)")
    lazy: bool = Field(True, description="stages that only read (declared readonly, or proven so from their code: see the stage "
                                         "guide) read JSON on workers through a lazy read-only view, and stages proven to only add "
                                         "top-level fields get it with their fields spliced into the record's bytes; false: a dict")
    ports: list[str] = Field(default_factory=list, description="extra ports reachable with headrace.emit(port, event)")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for a class stage's constructor")
    timeout: Duration = Field(30.0, gt=0, description="async stages: time one event may take; then it is cancelled and goes to err "
                                                       "(TimeoutError), so one hung await cannot hold the chain")


log = logging.getLogger("headrace.stages")


class _Unread:
    """What a stage proven never to look at its event (``Proof.untouched``) is given in place of a
    record its chain on the loop did not decode (no stage of the chain needs values)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<event not decoded: the stage never looks at it>"


UNREAD = _Unread()

_SOURCES: dict[str, bytes] = {}  # module name -> digest of the source it was imported from
_IMPORTING = threading.RLock()


def _digest(mod: Any) -> bytes:
    path = getattr(mod, "__file__", None)
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            return hashlib.sha1(f.read()).digest()
    except OSError:
        return b""


def import_callable(spec: str, base_dir: Path) -> Any:
    """Import ``module:attr`` with ``base_dir`` first on sys.path; a module whose source
    changed since it was imported is re-imported (reload picks up edited stages)."""
    with _IMPORTING:  # sys.path, sys.modules and _SOURCES change together (threads of a test harness)
        return _import_callable(spec, base_dir)


def _import_callable(spec: str, base_dir: Path) -> Any:
    module, _, attr = spec.partition(":")
    base = str(base_dir)
    top = module.partition(".")[0]
    if (base_dir / f"{top}.py").exists() or (base_dir / top / "__init__.py").exists():  # a stage module beside the config
        _refuse_shadowing(top)
        _forget_elsewhere(top, base_dir)
    if not sys.path or sys.path[0] != base:
        if base in sys.path:
            sys.path.remove(base)
        sys.path.insert(0, base)  # first, even when an earlier config put it further down
    mod = importlib.import_module(module)
    digest = _digest(mod)
    if module in _SOURCES and _SOURCES[module] != digest:
        mod = importlib.reload(mod)
    _SOURCES[module] = digest
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise ImportError(f"module '{module}' has no attribute '{attr}'") from None


def _refuse_shadowing(top: str) -> None:
    """A stage module beside the config named like a module of Python or of an installed package
    (``http.py``, ``json.py``) works in ``check`` but not in ``run``, where the daemon has already
    imported the real one: refuse it in both, with a clear message. (A module not beside the
    config is an installed one, imported as such.)"""
    where = None
    if top in sys.stdlib_module_names:
        where = "a module of Python's standard library"
    else:
        installed = _installed_spec(top)
        if installed is not None:
            where = f"an installed module ({installed})"
    if where is not None:
        raise ImportError(f"the stage module '{top}' beside the config has the name of {where}; rename it (e.g. '{top}_stages')")


def _forget_elsewhere(top: str, base_dir: Path) -> None:
    """A stage module beside the config, already imported from another folder (another config's ``stages.py`` in
    ``headrace test`` or a reload of a moved config) is dropped, so this config gets its own.
    A module of the same name that is not a stage module (imported by headrace or a test
    harness) is refused: importing would silently hand over the wrong code."""
    mod = sys.modules.get(top)
    if mod is None or _lives_in(mod, base_dir):
        return
    if top not in _SOURCES and not any(name.startswith(top + ".") for name in _SOURCES):
        where = getattr(mod, "__file__", None) or "a namespace"
        raise ImportError(f"the stage module '{top}' beside the config has the name of a module already imported from {where}; "
                          f"rename it (e.g. '{top}_stages')")
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
        _SOURCES.pop(name, None)


def _lives_in(mod: Any, base_dir: Path) -> bool:
    files = [getattr(mod, "__file__", None), *list(getattr(mod, "__path__", None) or [])]
    base = base_dir.resolve()
    return any(Path(f).resolve().parent in (base, base / mod.__name__) for f in files if f)


def _installed_spec(top: str) -> str | None:
    """Where ``top`` is installed (site-packages, or the folder headrace itself comes from), or None."""
    roots = [*site.getsitepackages(), site.getusersitepackages(), str(Path(__file__).resolve().parents[3])]
    found = importlib.machinery.PathFinder.find_spec(top, roots)
    return found.origin if found is not None and found.origin else None


def _check_signature(fn: Any, what: str) -> None:
    """A stage is called as ``fn(event, meta)``: refuse one that cannot take those two arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function without a signature: trust it
        return
    try:
        sig.bind(None, None)
    except TypeError:
        raise TypeError(f"{what} must take (event, meta); its signature is {sig}") from None


class PythonOperator(Operator):
    name = "python"
    Config = PythonConfig
    summary = "run a Python function or class on each event"
    example = '{op: python, fn: "classify:classify"}'

    def __init__(self, node_id: str, config: PythonConfig, context: PluginContext) -> None:
        super().__init__(node_id, config, context)
        self.cfg = config
        self.target: Any = None
        self.fn: Callable[[Any, dict[str, Any]], Any] | None = None
        self.instance: Any = None
        self.adapt = tracked.Adaptive()  # tracking skipped while nearly every record is written
        self.proven_reads_only = False  # its code only reads the event (readproof), known once set up
        self.untouched = False  # its code never looks at the event: on the loop its records need no decode
        self.undecoded = False  # set by its loop chain per batch: the records are not decoded (the stage gets UNREAD)
        self._resolve()

    def _resolve(self) -> None:
        self.target = import_callable(self.cfg.fn, self.context.base_dir)
        if inspect.isclass(self.target):
            name = "process" if hasattr(self.target, "process") else "__call__"
            call = getattr(self.target, name)
            self.is_async = inspect.iscoroutinefunction(call)
            _check_signature(functools.partial(call, None), f"{self.cfg.fn}.{name}")  # bound to an instance: self is given
        elif callable(self.target):
            self.is_async = inspect.iscoroutinefunction(self.target)
            _check_signature(self.target, self.cfg.fn)
        else:
            raise TypeError(f"{self.cfg.fn} is not callable")
        self.concurrency = self.cfg.concurrency

    @classmethod
    def source_modules(cls, config: PythonConfig) -> tuple[str, ...]:
        return (config.fn.partition(":")[0],)

    @classmethod
    def ports_for(cls, config: PythonConfig) -> tuple[str, ...]:
        return tuple(config.ports)

    @property
    def placement(self) -> Placement:
        if self.cfg.placement:
            return self.cfg.placement
        return "loop" if self.is_async else "workers"

    def setup(self) -> None:
        if inspect.isclass(self.target):
            self.instance = self.target(**self.cfg.args)
            if hasattr(self.instance, "setup"):
                self.instance.setup()
            self.fn = getattr(self.instance, "process", None) or self.instance
        else:
            self.fn = self.target
        # track_writes: false asks for plain dicts, always encoded again (a stage writing around the dict methods)
        try:
            proof = prove(self.fn) if self.cfg.track_writes else None
        except Exception:  # a proof is an optimisation: code it cannot read is simply not proven
            log.exception("python stage %s: its code could not be read for a proof; it gets decoded values", self.id)
            proof = None
        self.proven_reads_only = proof is not None and proof.reads_only
        self.untouched = proof is not None and proof.untouched and self.cfg.lazy
        self.needs_values = not self.untouched  # a loop chain of such stages (and meta-only ones) decodes nothing

    def per_record(self) -> PerRecord | None:
        if self.is_async or self.fn is None:
            return None
        proof = prove(self.fn) if self.tracks and not self.cfg.readonly else None  # track_writes: false asks for plain dicts
        reads_only = self.cfg.readonly or (proof is not None and proof.reads_only)
        meta_views = proof is None or proof.meta_views
        # strict appenders only: the relaxed proof (reads handed to pure code, read as plain copies through
        # a PlainPatch) measured slower than tracked dicts (125 vs 160-186 MiB/s for two computed
        # fields), so it is not asked here; the strict ones gain (bench 1b +20-35 %)
        patch = proof is not None and proof.appends and self.cfg.lazy
        return PerRecord(self.fn, self.cfg.readonly, (reads_only or patch) and self.cfg.lazy, names_meta(self.fn), self.tracks, meta_views, patch)

    @property
    def tracks(self) -> bool:
        """Whether this (synchronous) stage is given tracked values (see ``headrace.contract.tracked``)."""
        return self.cfg.track_writes and not self.is_async

    def teardown(self) -> None:
        if self.instance is not None and hasattr(self.instance, "teardown"):
            self.instance.teardown()
        self.instance = None

    def _collect(self, ev: Ev, result: Any, out: list[Ev], unchanged: bool) -> None:
        """Route ``result``; ``unchanged``: the event, when returned, still holds what its bytes say."""
        if result is None:
            self.dropped = (self.dropped or 0) + 1
            return
        if isinstance(result, list):
            for item in result:
                out.append(Ev(item, dict(ev.meta), ev.src, None, ev.ingest))
            return
        if result is not ev.value or not unchanged:
            ev.raw = None
        ev.value = result
        out.append(ev)

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        fn = self.fn
        assert fn is not None, "setup() was not called"
        if self.is_async:  # placement: workers on an async def: run it to completion here
            return asyncio.run(self.process_async(evs, emit))
        out: list[Ev] = []
        append = out.append
        readonly = self.cfg.readonly
        # records not decoded, for a stage that never looks at its event: it gets UNREAD, and the record
        # leaves as its bytes when that comes back (nothing to track)
        unread = self.undecoded
        tracks = not unread and self.tracks and (readonly or self.adapt.track_next())
        kept = 0
        self.dropped = 0
        stage_id = self.id
        token = _emit.bind(emit, stage_id)
        sync = _emit.sync
        try:
            for ev in evs:
                sync.ev = ev
                value = UNREAD if unread else ev.value
                if tracks:
                    if ev.raw is not None:  # a record as decoded (a dict or list): given tracked, its bytes kept
                        ev._value = value = track(value)
                    tracked.clean()
                try:
                    result = fn(value, ev.meta)
                except STAGE_ERRORS as exc:
                    emit("err", ev.fail(stage_id, exc))
                    continue
                wrote = tracks and tracked.written()
                if wrote and readonly:
                    emit("err", ev.fail(stage_id, ReadonlyViolation(READONLY_WROTE)))
                    continue
                if result is value and (readonly or tracks or unread) and not wrote:
                    append(ev)
                    kept += 1
                else:
                    self._collect(ev, result, out, False)
        finally:
            sync.ev = None
            _emit.unbind(token)
        if tracks and not readonly:
            self.adapt.saw(len(evs), kept)
        return out

    async def process_async(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        """Up to ``concurrency`` events in flight; each event runs in a task of its own (its own
        context, as ``asyncio.gather`` would give it), started when one before it finishes (from
        that one's done callback: no runner task that wakes for every event). One watchdog per
        batch cancels an event past its timeout (within a quarter of the timeout, at most 250 ms
        late): no semaphore, no second task (``wait_for``) and no timer per event, which cost more
        than a short await (28 -> about 11 -> 9 us of CPU per event for a stage awaiting 2 ms)."""
        fn = self.fn
        assert fn is not None, "setup() was not called"
        timeout = self.cfg.timeout
        n = len(evs)
        results: list[Any] = [None] * n
        failed: list[BaseException | None] = [None] * n
        stage_id = self.id
        guard = self.guard
        loop = asyncio.get_running_loop()
        running: dict[int, tuple[float, asyncio.Task[None]]] = {}  # event -> (its deadline, its task)
        expired: set[int] = set()
        finished = loop.create_future()  # set when every event is done (or one failed beyond its own record)
        state = [0, 0]  # events started, events done
        unread = self.undecoded

        async def one(i: int) -> None:
            ev = evs[i]
            token = _emit.bind(emit, stage_id)
            _emit.current_event.set(ev)
            try:
                coro = fn(UNREAD if unread else ev.value, ev.meta)
                results[i] = await (guard.timed(stage_id, coro) if guard is not None else coro)
            except asyncio.CancelledError:
                if i not in expired:  # a cancellation of the batch is not the record's fault: it propagates
                    raise
                failed[i] = TimeoutError(f"the stage did not finish this event within its timeout ({timeout:g}s)")
            except STAGE_ERRORS as exc:
                failed[i] = exc
            finally:
                _emit.unbind(token)

        def start() -> None:
            i = state[0]
            state[0] = i + 1
            task = loop.create_task(one(i))
            running[i] = (loop.time() + timeout, task)
            task.add_done_callback(lambda t, i=i: done(i, t))  # type: ignore[misc]

        def done(i: int, task: asyncio.Task[None]) -> None:
            del running[i]
            state[1] += 1
            if finished.done():
                return
            if task.cancelled():  # not by the watchdog (that one ends as a failed record): the batch's cancellation
                finished.cancel()
                return
            exc = task.exception()
            if exc is not None:  # beyond the record (STAGE_ERRORS are its own)
                finished.set_exception(exc)
                return
            if state[0] < n:
                start()
            elif state[1] == n:
                finished.set_result(None)

        step = min(timeout / 4, 0.25)
        watchdog: asyncio.TimerHandle | None = None

        def watch() -> None:
            nonlocal watchdog
            now = loop.time()
            for i, (deadline, task) in list(running.items()):
                if deadline <= now and not task.done():
                    expired.add(i)
                    task.cancel()
            watchdog = loop.call_later(step, watch)

        if n:
            watchdog = loop.call_later(step, watch)
            try:
                for _ in range(min(self.concurrency, n)):
                    start()
                await finished
            finally:
                watchdog.cancel()
                if running:  # cancelled (a stop), or one failed beyond its record: the rest end with it
                    tasks = [t for _, t in running.values()]
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        out: list[Ev] = []
        self.dropped = 0
        for i, ev in enumerate(evs):
            exc = failed[i]
            if exc is not None:
                emit("err", ev.fail(stage_id, exc))
            elif unread and results[i] is UNREAD:
                out.append(ev)
            else:  # several records at once: not tracked; the hint, or the proof of the code, says it only reads
                self._collect(ev, results[i], out, self.cfg.readonly or self.proven_reads_only)
        return out


# what lets a function reach its own local variables without naming them
_FRAME_ACCESS = frozenset({"locals", "vars", "eval", "exec", "_getframe", "currentframe", "stack", "f_locals", "getframeinfo"})


def names_meta(fn: Any) -> bool:
    """Whether ``fn(event, meta)`` may read or write ``meta``: False only when the code of a plain
    function (or bound method) never names that parameter, no closure captures it and nothing in
    it reaches the frame (``locals()``, ``sys._getframe``, ``eval``). Anything else (a builtin, a
    callable object's ``__call__`` through C, ``*args``) is taken to use it."""
    index = 1
    if inspect.ismethod(fn):
        fn, index = fn.__func__, 2
    code = getattr(fn, "__code__", None) if inspect.isfunction(fn) else None
    if code is None or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS) or code.co_argcount <= index:
        return True
    name = code.co_varnames[index]
    if name in code.co_cellvars or not _FRAME_ACCESS.isdisjoint(code.co_names):
        return True
    return any(ins.argval == name for ins in dis.get_instructions(code) if "FAST" in ins.opname)
