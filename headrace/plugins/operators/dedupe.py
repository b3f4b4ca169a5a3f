"""``op: dedupe``: drop events whose ``key`` was already seen within ``window``.

The first event of a key passes and starts the key's window; later events with that
key are dropped (counted as filtered) until the window has passed since that first
event. Memory is bounded: at most ``max_keys`` keys, taking about ``max_bytes`` at most
together (a key of a large value counts its size), are remembered, and the oldest are
forgotten first (so a flood of new keys, or of large ones, can let an old duplicate through,
never grow without bound); the ``headrace_component_buffered_bytes`` gauge shows the bytes.
An event whose key expression fails goes to err.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr import compile_expr
from headrace.contract.expr_bounds import approx_bytes
from headrace.contract.stage import Emit, Ev, Operator
from headrace.contract.units import Duration, Size
from headrace.metrics.defs import Tally
from headrace.plugins.operators.window import freeze

KEY_BYTES = 150  # approximate bytes of one remembered key's entry, besides the key itself
KEY_DEPTH = 64  # levels of a structured key whose items count by their size (deeper ones by their number)


class DedupeConfig(PluginConfig):
    key: str = Field(description="expression over event and meta naming what makes two events duplicates")
    window: Duration = Field(60.0, gt=0, description="how long a key is remembered after its first event")
    max_keys: int = Field(100_000, ge=1, le=100_000_000, description="keys remembered at most (the oldest are forgotten first)")
    max_bytes: Size = Field(64 * 2**20, ge=1, description="approximate bytes the remembered keys take at most (the oldest are "
                            "forgotten first; a key larger than this is never remembered)")


class DedupeOperator(Operator):
    name = "dedupe"
    Config = DedupeConfig
    summary = "drop events whose key was seen within a time window (bounded memory: max_keys and max_bytes, oldest forgotten first)"
    example = "{op: dedupe, key: \"event['id']\", window: 5m}"
    default_placement = "loop"

    def __init__(self, node_id: str, config: DedupeConfig, context: PluginContext, clock: Callable[[], int] = time.monotonic_ns) -> None:
        super().__init__(node_id, config, context)
        self.cfg = config
        self.clock = clock
        self.key = compile_expr(config.key)
        self.window_ns = int(config.window * 1e9)
        self.seen: OrderedDict[Hashable, tuple[int, int]] = OrderedDict()  # key -> (time of its first event, its bytes), oldest first
        self.bytes = 0
        metrics = context.metrics
        self.gauge = Tally(metrics["headrace_component_buffered_bytes"].labels(node_id)) if metrics is not None else None

    def _forget_oldest(self) -> None:
        _, (_, nbytes) = self.seen.popitem(last=False)
        self.bytes -= nbytes

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        now = self.clock()
        seen = self.seen
        horizon = now - self.window_ns
        while seen and next(iter(seen.values()))[0] <= horizon:
            self._forget_oldest()
        out: list[Ev] = []
        key_of = self.key
        max_keys, max_bytes = self.cfg.max_keys, self.cfg.max_bytes
        for ev in evs:
            try:
                key = freeze(key_of(ev.value, ev.meta))
                if key in seen:
                    continue
                nbytes = KEY_BYTES + approx_bytes(key, KEY_DEPTH)
            except Exception as exc:
                emit("err", ev.fail(self.id, exc))
                continue
            if nbytes > max_bytes:  # cannot be remembered: it passes, and the keys remembered stay
                out.append(ev)
                continue
            seen[key] = (now, nbytes)
            self.bytes += nbytes
            while len(seen) > max_keys or self.bytes > max_bytes:
                self._forget_oldest()
            out.append(ev)
        if self.gauge is not None:
            self.gauge.set(self.bytes)
        return out
