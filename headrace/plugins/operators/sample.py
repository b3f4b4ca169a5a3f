"""``op: sample``: keep one event in ``rate``; the others are dropped (counted as filtered).

Without ``key`` a counter decides (the 1st, the ``rate+1``-th, ... event is kept).
With ``key``, a stable hash of the key's value decides, so all events of one key are
kept or all dropped, in every process and across restarts. An event whose key
expression fails goes to err.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.expr import compile_expr
from headrace.contract.stage import Emit, Ev, Operator


class SampleConfig(PluginConfig):
    rate: int = Field(ge=1, description="keep one event in this many")
    key: str | None = Field(None, description="expression over event and meta; when set, the same key is always kept or always dropped")


def stable_hash(value: Any) -> int:
    """The same number for the same JSON-like value in every process (unlike ``hash``)."""
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except TypeError:
        data = repr(value).encode()
    return zlib.crc32(data)


class SampleOperator(Operator):
    name = "sample"
    Config = SampleConfig
    summary = "keep 1 in `rate` events, by a counter or by a hash of a key (the same key always kept or dropped)"
    example = "{op: sample, rate: 10, key: \"event['user']\"}"
    default_placement = "loop"

    def __init__(self, node_id: str, config: SampleConfig, context: PluginContext) -> None:
        super().__init__(node_id, config, context)
        self.rate = config.rate
        self.key = compile_expr(config.key) if config.key else None
        self.counter = 0

    def process(self, evs: list[Ev], emit: Emit) -> list[Ev]:
        rate = self.rate
        key_of = self.key
        if key_of is None:
            start = self.counter
            self.counter = (start + len(evs)) % rate
            return [ev for i, ev in enumerate(evs) if (start + i) % rate == 0]
        out: list[Ev] = []
        for ev in evs:
            try:
                if stable_hash(key_of(ev.value, ev.meta)) % rate == 0:
                    out.append(ev)
            except Exception as exc:
                emit("err", ev.fail(self.id, exc))
        return out
