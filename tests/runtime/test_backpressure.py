"""A full queue pauses the onramp feeding it: memory stays bounded behind a slow consumer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon, free_port, scrape

SLOW = '''
import asyncio

async def slow(event, meta):
    await asyncio.sleep(0.005)
    return event
'''


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_slow_stage_pauses_fast_onramp(tmp_path: Path, write: Any) -> None:
    write("stages.py", SLOW)
    write("data.ndjson", "".join(json.dumps({"id": i, "pad": "x" * 400}) + "\n" for i in range(1000)))
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}, queue_events: 2000, queue_bytes: 4MiB, batch_size: 100}}
onramps: {{src: {{type: blaster, codec: json, config: {{source: data.ndjson, batch: 100}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:slow", concurrency: 8}}]}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{src: [main], main: [out]}}
""")
    d = Daemon(cfg)
    ok = False
    try:
        d.wait_for(lambda: (tmp_path / "out.ndjson").exists() and (tmp_path / "out.ndjson").stat().st_size > 0)
        samples = []
        for _ in range(6):
            time.sleep(0.5)
            m = scrape(port)
            sent = m['headrace_component_sent_events_total{component_id="src",component_kind="onramp",port="out"}']
            received = m['headrace_component_received_events_total{component_id="main.slow",component_kind="node"}']
            samples.append((sent, received, rss_kib(d.pid)))
        # the blaster could emit millions per second; it is held to what the stage took plus one queue
        for sent, received, _ in samples:
            assert sent - received <= 2000 + 100, samples
        assert samples[-1][0] < 20_000, samples
        assert max(r for _, _, r in samples) - samples[0][2] < 20_000, samples  # RSS grows < 20 MiB
        queue = scrape(port)['headrace_queue_events{edge="main.slow"}']
        assert 1900 <= queue <= 2100
        ok = True
    finally:
        rc = d.stop()
    assert ok and rc == 0, d.stderr()
