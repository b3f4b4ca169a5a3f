"""``type: blackhole``: Tremor's bench sink.

Counts the bytes of the encoded events that arrive after ``warmup_secs`` for
``stop_after_secs`` (timed from the first event), prints ``Throughput: X MiB/s`` as
bytes / stop_after_secs / 1048576, events/s, and latency percentiles from ingest
time; writes the same as JSON to ``report`` if given; then stops the daemon.

**Confirmed** means: it arrived. A benchmark sink keeps nothing, so every write succeeds.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.sink import Offramp
from headrace.contract.units import Duration

log = logging.getLogger("headrace.blackhole")


class BlackholeConfig(PluginConfig):
    warmup_secs: Duration = Field(2.0, description="ignore events for this long after the first")
    stop_after_secs: Duration = Field(10.0, gt=0, description="measure for this long, then report and stop the daemon")
    report: str | None = Field(None, description="also write the result as JSON to this file")
    stop_daemon: bool = Field(True, description="stop the daemon after reporting")


class BlackholeOfframp(Offramp):
    name = "blackhole"
    Config = BlackholeConfig
    summary = "count bytes and latency, print 'Throughput: X MiB/s', then stop (benchmarks)"
    example = "{type: blackhole, codec: json, config: {warmup_secs: 2, stop_after_secs: 10}}"
    takes_nbytes = True

    def __init__(self, config: BlackholeConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.first: float | None = None
        self.bytes = 0
        self.events = 0
        self.latencies: list[int] = []
        self.done = False

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None,
                    nbytes: int | None = None) -> None:  # fmt: skip
        if self.done:
            return
        now = time.monotonic()
        if self.first is None:
            self.first = now
        elapsed = now - self.first
        if elapsed < self.cfg.warmup_secs:
            return
        if elapsed >= self.cfg.warmup_secs + self.cfg.stop_after_secs:
            self.finish()
            return
        self.bytes += nbytes if nbytes is not None else sum(map(len, chunks))
        self.events += events
        wall = time.time_ns()
        step = max(len(ingest_ns) // 8, 1)
        self.latencies.extend(wall - t for t in ingest_ns[::step])

    def result(self) -> dict[str, Any]:
        secs = self.cfg.stop_after_secs
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(int(p * len(lat)), len(lat) - 1)] / 1e6 if lat else 0.0

        return {
            "throughput_mib_s": self.bytes / secs / 1048576,
            "events_per_s": self.events / secs,
            "bytes": self.bytes,
            "events": self.events,
            "seconds": secs,
            "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "p99.9": pct(0.999), "max": pct(1.0)},
        }

    def finish(self) -> None:
        """Report and stop the daemon; a closed stdout (``| head -1``) does not keep it running."""
        self.done = True
        r = self.result()
        lat = r["latency_ms"]
        try:
            if self.cfg.report:
                self.context.resolve(self.cfg.report).write_bytes(orjson.dumps(r, option=orjson.OPT_INDENT_2))
            print(
                f"Throughput: {r['throughput_mib_s']:.1f} MiB/s\n"
                f"Events: {r['events_per_s']:.0f} events/s\n"
                f"Latency ms: p50 {lat['p50']:.2f} p90 {lat['p90']:.2f} p99 {lat['p99']:.2f} p99.9 {lat['p99.9']:.2f} max {lat['max']:.2f}",
                file=sys.stdout,
                flush=True,
            )
        except OSError as exc:
            log.error("blackhole %s: cannot write its report: %s", self.context.component_id, exc)
        finally:
            stop = self.context.request_stop
            if self.cfg.stop_daemon and stop is not None:
                stop()

    async def stop(self) -> None:
        if not self.done and self.first is not None:
            self.finish()
