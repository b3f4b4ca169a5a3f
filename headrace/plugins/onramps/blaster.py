"""``type: blaster``: Tremor's bench source. Loads an NDJSON file (plain, gzip or xz) into
memory and replays it round-robin as fast as the graph accepts, or ``iters`` times."""

from __future__ import annotations

import asyncio
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
        recs, bs = self.records, self.cfg.batch
        # pre-cut batches that tile the record list, so a replay is a list lookup per batch
        doubled = recs * (1 + bs // len(recs) + 1)
        batches = [doubled[i : i + bs] for i in range(0, len(recs), bs)] if bs < len(recs) else [doubled[:bs]]
        wires = [(array("I", map(len, b)).tobytes(), (b"".join(b),)) for b in batches]  # what a worker job carries, made once
        per_pass = sum(len(b) for b in batches)
        total = None if self.cfg.iters is None else self.cfg.iters * len(recs)
        sent = 0
        while total is None or sent < total:
            for b, wire in zip(batches, wires, strict=True):
                if total is not None and sent + len(b) > total:
                    b = b[: total - sent]
                    await sink.records(b)
                else:
                    await sink.records(b, wire=wire)
                sent += len(b)
                if total is not None and sent >= total:
                    return
            if per_pass == 0:
                return
            await asyncio.sleep(0)
