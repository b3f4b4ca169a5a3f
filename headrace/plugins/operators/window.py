"""``op: window``: aggregate events over tumbling or sliding windows, by count or by time.

Count windows (``size``) close after ``size`` events of a group; sliding ones close
every ``slide`` events, over the last ``size``. Time windows (``interval``) follow
processing time on the wall clock: tumbling windows are ``[k*interval, (k+1)*interval)``,
sliding ones start every ``slide`` and last ``interval``; they close on the runner's
tick or when a later batch arrives. Each closed window emits one event per group that
had events in it::

    {"group": <group_by value or null>, "window_start": ns, "window_end": ns, <name>: <aggregate>...}

Times are nanoseconds since the epoch; for count windows they are the ingest times of
the first and last event. At the end of input, open windows are emitted as they are.
An event whose ``group_by`` or ``field`` expression fails, or whose field is not a
number, goes to err.

Memory is bounded. At most ``max_groups`` groups are open at once, and all open windows
together hold about ``max_bytes`` at most (aggregates, percentile values, the events of
sliding count windows; the ``headrace_component_buffered_bytes`` gauge shows it): beyond
either, the least recently used group's windows are emitted early. A ``percentile`` is exact
up to 1024 values per window; beyond, it is within 1 % of the exact value (a log-bucket
sketch of at most about 400 KiB; see ``headrace/plugins/operators/quantiles.py``).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any, Literal

from pydantic import Field, model_validator

from headrace.contract.acks import HeldAcks
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr import compile_expr
from headrace.contract.stage import Emit, Ev, Operator
from headrace.contract.units import Duration, Size
from headrace.metrics.defs import Tally
from headrace.plugins.operators.quantiles import QuantileSketch

RESERVED = ("group", "window_start", "window_end")
MAX_OVERLAP = 1000  # sliding time windows open at once per group (interval / slide)
OPEN_BYTES = 600  # approximate bytes of one open window with its aggregates, before percentile values
ENTRY_BYTES = 200  # approximate bytes of one event a sliding count window keeps (its ingest, ack share and values)


class AggregateConfig(PluginConfig):
    fn: Literal["count", "sum", "min", "max", "mean", "percentile"] = Field(description="the aggregate function")
    field: str | None = Field(None, description="expression over event and meta giving the value (null values are skipped); "
                              "required except for count, which then counts events")  # fmt: skip
    p: float = Field(0.99, gt=0, le=1, description="percentile: the quantile (nearest rank), 0 < p <= 1; exact up to 1024 values "
                     "per window, within 1 % beyond")

    @model_validator(mode="after")
    def _field_needed(self) -> AggregateConfig:
        if self.field is None and self.fn != "count":
            raise ValueError(f"{self.fn} needs a field expression")
        return self


class WindowConfig(PluginConfig):
    kind: Literal["tumbling", "sliding"] = Field("tumbling", description="tumbling: windows follow each other; sliding: they overlap")
    size: int | None = Field(None, ge=1, le=1_000_000, description="count windows: events per window")
    interval: Duration | None = Field(None, gt=0, description="time windows: length of a window")
    slide: Duration | None = Field(None, gt=0, description="sliding windows: distance between window starts, "
                                   "in events for count windows, a duration for time windows")  # fmt: skip
    group_by: str | None = Field(None, description="expression over event and meta; each value gets its own windows")
    aggregates: dict[str, AggregateConfig] = Field(min_length=1, description="output field -> {fn, field, p}")
    max_groups: int = Field(10_000, ge=1, description="groups with an open window at once (LRU; evicted groups emit early)")
    max_bytes: Size = Field(64 * 2**20, ge=1, description="approximate bytes all open windows hold (aggregates, percentile values, "
                            "events of sliding count windows); beyond, the least recently used groups' windows are emitted early")

    @model_validator(mode="after")
    def _shape(self) -> WindowConfig:
        if (self.size is None) == (self.interval is None):
            raise ValueError("set exactly one of size (count windows) or interval (time windows)")
        for name in self.aggregates:
            if name in RESERVED:
                raise ValueError(f"aggregate name '{name}' is reserved ({', '.join(RESERVED)})")
        if self.kind == "tumbling":
            if self.slide is not None:
                raise ValueError("slide is only for sliding windows")
        elif self.slide is None:
            raise ValueError("sliding windows need slide")
        elif self.size is not None and (self.slide != int(self.slide) or self.slide > self.size):
            raise ValueError("slide of a count window is a whole number of events, at most size")
        elif self.interval is not None and (self.slide > self.interval or self.interval / self.slide > MAX_OVERLAP):
            raise ValueError(f"slide must be at most interval, and interval / slide at most {MAX_OVERLAP}")
        return self


class Aggregate:
    """One aggregate over one window; ``None`` values are skipped."""

    __slots__ = ("acc", "fn", "n", "p", "sketch")

    def __init__(self, fn: str, p: float) -> None:
        self.fn = fn
        self.p = p
        self.n = 0
        self.acc: Any = 0
        self.sketch = QuantileSketch() if fn == "percentile" else None

    def add(self, v: Any) -> int:
        """Count ``v``; returns by how many bytes the aggregate grew."""
        if v is None:
            return 0
        self.n += 1
        fn = self.fn
        if fn in ("sum", "mean"):
            self.acc += v
        elif fn == "min":
            self.acc = v if self.n == 1 or v < self.acc else self.acc
        elif fn == "max":
            self.acc = v if self.n == 1 or v > self.acc else self.acc
        elif self.sketch is not None:
            return self.sketch.add(v)
        return 0

    def value(self) -> Any:
        fn, n = self.fn, self.n
        if fn == "count":
            return n
        if fn == "sum":
            return self.acc
        if not n:
            return None
        if fn == "mean":
            return self.acc / n
        if self.sketch is not None:
            return self.sketch.quantile(self.p)
        return self.acc


class Held:
    """What a sliding count window keeps of an event: not the event (its value may be large)."""

    __slots__ = ("ack", "ingest")

    def __init__(self, ev: Ev) -> None:
        self.ingest = ev.ingest
        self.ack = ev.ack


class Open:
    """One open window of one group: its aggregates and the acks of the events in it."""

    __slots__ = ("acks", "aggs", "first", "group", "last", "n", "nbytes", "start")

    def __init__(self, group: Any, specs: list[AggregateConfig], start: int) -> None:
        self.group = group
        self.aggs = [Aggregate(s.fn, s.p) for s in specs]
        self.acks = HeldAcks()
        self.n = 0
        self.start = start
        self.first = 0
        self.last = 0
        self.nbytes = OPEN_BYTES

    def add(self, ev: Ev | Held, values: tuple[Any, ...]) -> int:
        """Add an event; returns by how many bytes the window grew."""
        if not self.n:
            self.first = ev.ingest
        self.last = ev.ingest
        self.n += 1
        grew = 0
        for agg, v in zip(self.aggs, values, strict=True):
            grew += agg.add(v)
        self.acks.hold(ev)
        self.nbytes += grew
        return grew


def freeze(value: Any) -> Hashable:
    """A hashable key for a JSON-like value."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value  # type: ignore[no-any-return]


class WindowOperator(Operator):
    name = "window"
    Config = WindowConfig
    summary = "aggregate (count, sum, min, max, mean, percentile) over tumbling or sliding windows of events or time, per group"
    example = (
        "{op: window, interval: 10s, group_by: \"event['host']\", aggregates: {p99: {fn: percentile, field: \"event['ms']\", p: 0.99}}}"
    )
    default_placement = "loop"
    modifies = True

    def __init__(self, node_id: str, config: WindowConfig, context: PluginContext, clock: Callable[[], int] = time.time_ns) -> None:
        super().__init__(node_id, config, context)
        self.cfg = config
        self.clock = clock  # the wall clock, like the ticks the runner gives
        self.names = list(config.aggregates)
        self.specs = list(config.aggregates.values())
        self.group_by = compile_expr(config.group_by) if config.group_by else None
        self.fields = [compile_expr(s.field) if s.field else None for s in self.specs]
        self.numeric = [s.fn != "count" for s in self.specs]
        self.sliding = config.kind == "sliding"
        self.interval_ns = int(config.interval * 1e9) if config.interval is not None else 0
        self.slide_ns = int(config.slide * 1e9) if config.slide is not None and config.interval is not None else 0
        self.slide_n = int(config.slide) if config.slide is not None and config.size is not None else 0
        self.open: OrderedDict[Hashable, dict[int, Open]] = OrderedDict()  # group -> window start -> window
        self.recent: OrderedDict[Hashable, tuple[Any, deque[tuple[Held, tuple[Any, ...]]], int]] = OrderedDict()  # sliding by count
        self.bytes = 0  # approximate bytes of every open window and kept event
        metrics = context.metrics
        self.gauge = Tally(metrics["headrace_component_buffered_bytes"].labels(node_id)) if metrics is not None else None

    def _read(self, ev: Ev) -> tuple[Hashable, Any, tuple[Any, ...]]:
        group = self.group_by(ev.value, ev.meta) if self.group_by is not None else None
        values: list[Any] = []
        for name, fn, numeric in zip(self.names, self.fields, self.numeric, strict=True):
            v = fn(ev.value, ev.meta) if fn is not None else True
            if numeric and v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TypeError(f"aggregate '{name}': {v!r} is not a number")
            values.append(v)
        return freeze(group), group, tuple(values)

    def _result(self, w: Open, start: int, end: int) -> Ev:
        value: dict[str, Any] = {"group": w.group, "window_start": start, "window_end": end}
        for name, agg in zip(self.names, w.aggs, strict=True):
            value[name] = agg.value()
        return Ev(value, {"window_events": w.n}, 0, None, w.first, w.acks.merge())

    def _close(self, w: Open) -> Ev:
        self.bytes -= w.nbytes
        if self.interval_ns:
            return self._result(w, w.start, w.start + self.interval_ns)
        return self._result(w, w.first, w.last)

    def _group(self, key: Hashable, out: list[Ev]) -> dict[int, Open]:
        windows = self.open.get(key)
        if windows is None:
            windows = self.open[key] = {}
            if len(self.open) > self.cfg.max_groups:
                self._evict(out)
        else:
            self.open.move_to_end(key)
        return windows

    def _evict(self, out: list[Ev]) -> None:
        """Emit the windows of the least recently used group early."""
        if self.open:
            _, evicted = self.open.popitem(last=False)
            out.extend(self._close(evicted[s]) for s in sorted(evicted))
        elif self.recent:
            self._retire(*self.recent.popitem(last=False)[1], out)

    def _shed(self, out: list[Ev]) -> None:
        """Over ``max_bytes``: emit the least recently used groups' windows early until under it."""
        while self.bytes > self.cfg.max_bytes and (self.open or self.recent):
            self._evict(out)

    def _expire(self, now_ns: int, out: list[Ev]) -> None:
        """Close the time windows that ended by ``now_ns``."""
        for key in list(self.open):
            windows = self.open[key]
            for start in sorted(s for s in windows if s + self.interval_ns <= now_ns):
                out.append(self._close(windows.pop(start)))
            if not windows:
                del self.open[key]

    def _starts(self, now_ns: int) -> list[int]:
        """Starts of the time windows that contain ``now_ns``."""
        if not self.sliding:
            return [now_ns - now_ns % self.interval_ns]
        last = now_ns - now_ns % self.slide_ns
        return list(range(last, now_ns - self.interval_ns, -self.slide_ns))

    def _add_sliding_count(self, ev: Ev, key: Hashable, group: Any, values: tuple[Any, ...], out: list[Ev]) -> None:
        entry = self.recent.get(key)
        if entry is None:
            entry = (group, deque(), 0)
            if len(self.recent) >= self.cfg.max_groups:
                self._evict(out)
        else:
            self.recent.move_to_end(key)
        group, items, since = entry
        ev_ack = ev.ack
        if ev_ack is not None:
            ev_ack.take_share()  # the share this event keeps while it is among the last `size`
        items.append((Held(ev), values))
        self.bytes += ENTRY_BYTES
        if len(items) > (self.cfg.size or 0):
            old, _ = items.popleft()
            self.bytes -= ENTRY_BYTES
            if old.ack is not None:
                old.ack.done()
        since += 1
        if len(items) == self.cfg.size and since >= self.slide_n:
            out.append(self._sliding_result(group, items))
            since = 0
        self.recent[key] = (group, items, since)

    def _sliding_result(self, group: Any, items: deque[tuple[Held, tuple[Any, ...]]]) -> Ev:
        w = Open(group, self.specs, 0)  # made and emitted at once: not counted in self.bytes
        for held, values in items:
            w.add(held, values)
        return self._result(w, w.first, w.last)

    def _retire(self, group: Any, items: deque[tuple[Held, tuple[Any, ...]]], since: int, out: list[Ev]) -> None:
        """A sliding count group ends: a last window if events are not in an emitted one yet; their shares end."""
        if since or len(items) < (self.cfg.size or 0):
            out.append(self._sliding_result(group, items))
        for held, _ in items:
            if held.ack is not None:
                held.ack.done()
        self.bytes -= ENTRY_BYTES * len(items)
        items.clear()

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        out: list[Ev] = []
        if not evs:
            return out
        starts: list[int] = []
        if self.interval_ns:
            now = self.clock()
            self._expire(now, out)
            starts = self._starts(now)
        size = self.cfg.size or 0
        for ev in evs:
            try:
                key, group, values = self._read(ev)
            except Exception as exc:
                emit("err", ev.fail(self.id, exc))
                continue
            if self.slide_n:
                self._add_sliding_count(ev, key, group, values, out)
            else:
                windows = self._group(key, out)
                for start in starts or (0,):
                    w = windows.get(start)
                    if w is None:
                        w = windows[start] = Open(group, self.specs, start)
                        self.bytes += OPEN_BYTES
                    self.bytes += w.add(ev, values)
                    if size and w.n >= size:
                        out.append(self._close(windows.pop(start)))
                if not windows and key in self.open:
                    del self.open[key]
            if self.bytes > self.cfg.max_bytes:
                self._shed(out)
        self._report()
        return out

    def _report(self) -> None:
        if self.gauge is not None:
            self.gauge.set(self.bytes)

    def tick(self, now_ns: int, emit: Emit) -> list[Ev]:
        out: list[Ev] = []
        if self.interval_ns:
            self._expire(now_ns, out)
            self._report()
        return out

    def flush(self, emit: Emit) -> list[Ev]:
        out: list[Ev] = []
        for windows in self.open.values():
            out.extend(self._close(windows[s]) for s in sorted(windows))
        self.open.clear()
        for group, items, since in self.recent.values():
            self._retire(group, items, since, out)
        self.recent.clear()
        self.bytes = 0
        self._report()
        return out
