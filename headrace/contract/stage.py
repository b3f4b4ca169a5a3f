"""The stage contract: one small interface for everything a pipeline can contain.

A stage receives a list of ``Ev`` and returns the events for its ``out`` port; events
for any other port (``err``, ``overflow``, a route name) go through ``emit``. Stages
are plain, synchronous and batch-wise so a chain of them runs in one worker without
an asyncio hop per event. Async stages implement ``process_async`` instead and run
on the event loop with ``concurrency`` events in flight.

Methods:
- ``setup()``: once per process that runs the stage (each worker); may block.
- ``process(evs, emit)``: must not block on I/O; CPU only. Exceptions per event are
  the stage's job to route to ``err`` (see ``Ev.fail``); an exception escaping
  ``process`` fails the whole batch to ``err``.
- ``teardown()``: once per process at stop or reload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from headrace.contract.acks import AckRef
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.errors import safe_str, type_name

Placement = Literal["workers", "loop", "any"]

# What a stage may raise that fails only the record it was given: every BaseException but a
# cancellation of the task that awaits it (a SystemExit from a stage must not end a worker).
STAGE_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt, GeneratorExit)


@dataclass(frozen=True)
class PerRecord:
    """What ``Operator.per_record`` offers: the function, whether it never modifies its event
    (``readonly``: the original bytes leave), whether it may read lazy views of records, and
    whether it reads or writes its meta at all (``meta=False``: it is called with None for it,
    and no per-record meta dict is built for it; its events leave with the metas they came with),
    and whether it takes tracked values (``tracks``: a record it returned unwritten leaves as its
    original bytes, see ``headrace.contract.tracked``; with ``readonly`` a write fails the record)."""

    fn: Callable[[Any, dict[str, Any]], Any]
    readonly: bool = False
    views: bool = False
    meta: bool = True
    tracks: bool = False
    meta_views: bool = False  # may store values read from a view into meta (converted before a next stage reads them)
    patch: bool = False  # an appender (sets top-level fields with constant keys): alone in its chain, it gets a view in a Patch


class Ev:
    """One event inside the runtime: value, metadata, input index, original bytes (if unmodified).

    ``raw`` is the record as it came, while it still says what ``value`` holds: assigning
    ``ev.value`` a new object clears it (the record is then encoded again where it leaves).
    A stage that changes a value in place (``ev.value["x"] = 1``) must set ``ev.raw = None``
    itself; the operator contract suite (``headrace.testing.contract``) catches one that does
    not. ``ack`` is the delivery ref of the event (None when its source does not ack). It lets
    a stage that holds events past their batch (batch, window) keep their deliveries owed:
    see ``headrace.contract.acks.HeldAcks``.
    """

    __slots__ = ("_value", "ack", "ingest", "meta", "raw", "src")
    memory_errors: ClassVar[int] = 0  # MemoryErrors failed records in this process (a worker recycles then)

    def __init__(self, value: Any, meta: dict[str, Any], src: int, raw: bytes | None, ingest: int, ack: AckRef | None = None) -> None:
        self._value = value
        self.meta = meta
        self.src = src
        self.raw = raw
        self.ingest = ingest
        self.ack = ack

    @property
    def value(self) -> Any:
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        if value is not self._value:
            self.raw = None  # the original bytes no longer say what the event holds
        self._value = value

    def fail(self, stage_id: str, exc: BaseException) -> Ev:
        """Attach error metadata (stage, exception type and message) for the err port."""
        if isinstance(exc, MemoryError):
            Ev.memory_errors += 1
        self.meta = dict(self.meta)
        self.meta["error"] = {"stage": stage_id, "type": type_name(exc), "message": safe_str(exc)}
        return self


Emit = Callable[[str, Ev], None]


class Operator:
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    summary: ClassVar[str] = ""
    example: ClassVar[str] = ""
    default_placement: ClassVar[Placement] = "any"
    needs_values: bool = True  # False: the stage reads only meta, so events need not be decoded (a python stage: per instance)
    uses_out: ClassVar[bool] = True  # False: events leave only by named ports (``route``): a link from ``out`` carries nothing

    def __init__(self, node_id: str, config: Any, context: PluginContext) -> None:
        self.id = node_id
        self.config = config
        self.context = context
        self.is_async = False
        self.concurrency = 1
        self.guard: Any = None  # LoopGuard when the stage runs on the loop
        # events the last process() call dropped, for stages that know (a fan-out or an emit then
        # does not hide a drop); None: the runner counts received minus sent
        self.dropped: int | None = None

    @classmethod
    def source_modules(cls, config: Any) -> tuple[str, ...]:
        """Modules whose source defines this stage's behaviour (a python stage's): a reload
        replaces the stage when one of them changed, and ``--watch`` watches their files."""
        return ()

    @classmethod
    def ports_for(cls, config: Any) -> tuple[str, ...]:
        """Ports besides ``out`` and ``err`` that this configuration has."""
        return ()

    @property
    def placement(self) -> Placement:
        return self.default_placement

    def check(self) -> None:
        """Validate what the model cannot (import a module, compile expressions) without I/O."""

    def setup(self) -> None:
        pass

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        raise NotImplementedError

    def per_record(self) -> PerRecord | None:
        """A function the runtime may call once per record instead of ``process`` (the fused fast
        path of a worker: decode, call every stage's function, encode, one record at a time). It
        follows the python stage's rules: ``fn(value, meta)`` returns the event (-> out), None
        (dropped), a list (several events), or raises (-> err); ``headrace.emit`` reaches other
        ports. None (the default): the stage runs through ``process`` only. Call after ``setup``."""
        return None

    def route_metas(self, metas: Sequence[dict[str, Any]]) -> dict[str, list[int]] | None:
        """Optional fast path for stages that read only meta and never change events:
        return, per port, the indices of the events that go there (or None to use ``process``)."""
        return None

    async def process_async(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        return self.process(evs, emit)

    def teardown(self) -> None:
        pass

    def tick(self, now_ns: int, emit: Emit) -> list[Ev]:
        """Time passing (windows, batch timeouts); called on the loop about every 100 ms."""
        return []

    def flush(self, emit: Emit) -> list[Ev]:
        """End of input: emit what is held back."""
        return []
