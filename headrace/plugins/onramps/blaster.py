"""``type: blaster``: Tremor's bench source. Loads an NDJSON file (plain, gzip or xz) into
memory and replays it round-robin as fast as the graph accepts, or ``iters`` times."""

from __future__ import annotations

import asyncio
import math
from array import array

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.source import Onramp, OnrampSink
from headrace.plugins.onramps.file import open_any


class BlasterConfig(PluginConfig):
    source: str = Field(description="NDJSON file (plain, gzip or xz), relative to the config file's folder")
    iters: int | None = Field(None, ge=1, description="replay the file this many times (default: until stopped)")
    batch: int = Field(256, ge=1, le=65536, description="records per batch")


class BlasterOnramp(Onramp):
    name = "blaster"
    Config = BlasterConfig
    summary = "replay an NDJSON file from memory as fast as possible (benchmarks)"
    example = "{type: blaster, codec: json, config: {source: data.json.xz}}"

    def __init__(self, config: BlasterConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.finite = config.iters is not None
        self.records: list[bytes] = []

    async def start(self) -> None:
        with open_any(str(self.context.resolve(self.cfg.source))) as f:
            self.records = [line.rstrip(b"\r") for line in f.read().split(b"\n") if line.strip()]
        if not self.records:
            raise ValueError(f"blaster source {self.cfg.source} holds no records")
        self.ready = True

    async def run(self, sink: OnrampSink) -> None:
        """The records in a cycle (record ``k`` of the stream is ``records[k % n]``), ``batch`` at a
        time, ``iters * n`` of them or until stopped. Batches are cut once over a whole period
        of the cycle (where batch and file boundaries meet again) when that period is short."""
        recs, bs = self.records, self.cfg.batch
        n = len(recs)
        period = n * bs // math.gcd(n, bs)  # records after which the batch boundaries repeat
        batches = [b for b in _cut(recs * (period // n), bs)] if period // bs <= MAX_PRECUT else None
        wires = [(array("I", map(len, b)).tobytes(), (b"".join(b),)) for b in batches] if batches is not None else None
        total = None if self.cfg.iters is None else self.cfg.iters * n
        sent = 0
        k = 0  # the next batch of the period (pre-cut), or the next record of the cycle (cut on the fly)
        while total is None or sent < total:
            if batches is not None and wires is not None:
                b, wire = batches[k], wires[k]
                k = (k + 1) % len(batches)
            else:
                b, wire = [recs[(k + i) % n] for i in range(bs)], None
                k = (k + bs) % n
            if total is not None and sent + len(b) > total:
                b, wire = b[: total - sent], None
            await sink.records(b, wire=wire)
            sent += len(b)
            await asyncio.sleep(0)


MAX_PRECUT = 4096  # batches cut ahead over one period of the cycle (beyond, each batch is cut when sent)


def _cut(records: list[bytes], size: int) -> list[list[bytes]]:
    return [records[i : i + size] for i in range(0, len(records), size)]
