"""``type: metronome``: one event every ``interval`` (Tremor's metronome)."""

from __future__ import annotations

import asyncio
import time

import orjson
from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration


class MetronomeConfig(PluginConfig):
    interval: Duration = Field(1.0, gt=0, description="time between events")
    iters: int | None = Field(None, ge=1, description="stop after this many events (default: never)")


class MetronomeOnramp(Onramp):
    name = "metronome"
    Config = MetronomeConfig
    summary = 'emit {"onramp": id, "id": n, "ingest_ns": t} every interval'
    example = "{type: metronome, config: {interval: 1s}}"

    def __init__(self, config: MetronomeConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.finite = config.iters is not None

    async def run(self, sink: OnrampSink) -> None:
        self.ready = True
        n = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        while self.cfg.iters is None or n < self.cfg.iters:
            payload = orjson.dumps({"onramp": self.context.component_id, "id": n, "ingest_ns": time.time_ns()})
            await sink.records([payload])
            n += 1
            await asyncio.sleep(max(start + n * self.cfg.interval - loop.time(), 0))
