"""/health, /ready, /status and ``headrace top`` against the real daemon."""

from __future__ import annotations

import os
import time
from pathlib import Path

from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped, unused-ignore]

from tests.metrics.conftest import Counted, Ticking, http, wait_until
from tests.support.daemon import Daemon, free_port, headrace
from tests.support.kafka_broker import KafkaBroker

# A third-party onramp, registered the way any plugin is: an entry point in an installed
# distribution's metadata. It connects (becomes ready) only once its gate file exists,
# like a client waiting for a server.
GATED = '''
import asyncio

from headrace.contract.config import PluginConfig
from headrace.contract.source import Onramp, OnrampSink


class GatedConfig(PluginConfig):
    gate: str


class GatedOnramp(Onramp):
    name = "gated"
    Config = GatedConfig
    summary = "test onramp: ready once its gate file exists"

    async def start(self) -> None:
        gate = self.context.resolve(self.config.gate)
        while not gate.exists():
            await asyncio.sleep(0.05)
        self.ready = True

    async def run(self, sink: OnrampSink) -> None:
        await sink.records([b'{"connected": true}'])
        await asyncio.Event().wait()
'''


def install_gated_plugin(site: Path) -> dict[str, str]:
    """Put the plugin and its distribution metadata in ``site``; returns the env that finds them."""
    site.mkdir()
    (site / "gated_onramp.py").write_text(GATED)
    meta = site / "gated_onramp-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: gated-onramp\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[headrace.onramps]\ngated = gated_onramp:GatedOnramp\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def test_ready_only_once_every_onramp_is_connected(tmp_path: Path) -> None:
    env = install_gated_plugin(tmp_path / "site")
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps:
  tick: {{type: metronome, config: {{interval: 50ms}}}}
  slow: {{type: gated, config: {{gate: gate}}}}
pipelines: {{main: [{{op: filter, where: "True"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{tick: [main], slow: [main], main: [out]}}
""")
    d = Daemon(cfg, env=env)
    try:
        assert wait_until(d, lambda: http(port, "/health")) == (200, {"status": "ok"})
        # the metronome runs and delivers, but one onramp is not connected: not ready
        wait_until(d, lambda: (tmp_path / "out.ndjson").exists() and (tmp_path / "out.ndjson").stat().st_size > 0)
        for _ in range(5):
            assert http(port, "/ready") == (503, {"ready": False})
            assert http(port, "/status")[1]["ready"] is False
            time.sleep(0.1)
        (tmp_path / "gate").touch()
        assert wait_until(d, lambda: http(port, "/ready")[0] == 200)
        assert http(port, "/ready") == (200, {"ready": True})
        assert http(port, "/status")[1]["ready"] is True
        assert http(port, "/health") == (200, {"status": "ok"})
    finally:
        rc = d.stop()
    assert rc == 0, d.stderr()


def test_ready_waits_for_the_kafka_broker(tmp_path: Path) -> None:
    """The Kafka onramp is ready once its consumer has started against a broker that answers."""
    broker_port, port = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps:
  in: {{type: kafka, codec: json, config: {{brokers: "127.0.0.1:{broker_port}", topics: [events], group_id: ready,
                                          session_timeout: 2s, heartbeat_interval: 200ms, commit_interval: 200ms}}}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{in: [out]}}
""")
    d = Daemon(cfg)
    broker = KafkaBroker(port=broker_port, log_path=tmp_path / "tansu.log")
    try:
        assert wait_until(d, lambda: http(port, "/health")) == (200, {"status": "ok"})
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # no broker yet: alive, not ready
            assert http(port, "/ready") == (503, {"ready": False})
            time.sleep(0.1)
        broker.start()
        try:
            broker.create_topic("events", partitions=1)
        except TopicAlreadyExistsError:  # the daemon's consumer got there first (the broker creates topics on demand)
            pass
        assert wait_until(d, lambda: http(port, "/ready")[0] == 200, timeout=40)
        assert http(port, "/status")[1]["ready"] is True
    finally:
        rc = d.stop()
        broker.stop()
    assert rc == 0, d.stderr()


def test_status_has_rates_and_the_graph(ticking: Ticking) -> None:
    def steady() -> dict[str, object] | None:
        st = http(ticking.port, "/status")[1]
        if st["rates_window_s"] < 0.5:  # just started: no full sample interval yet
            return None
        rates = st["components"]["tick"]["rates"]
        return st if rates["events_in"] > 20 and st["components"]["out"]["rates"]["events_out"] > 20 else None

    st = wait_until(ticking.daemon, steady)
    comps = st["components"]
    # a metronome every 10 ms: about 100 events/s everywhere on the path
    for cid, field in (("tick", "events_in"), ("tick", "events_out"), ("main.check", "events_in"), ("out", "events_out")):
        assert 30 < comps[cid]["rates"][field] < 200, (cid, comps[cid]["rates"])
    assert comps["out"]["rates"]["bytes_out"] > 0
    assert comps["tick"]["rates"]["errors"] == 0
    assert 0.5 <= st["rates_window_s"] <= 3
    assert comps["out"]["queue"]["fill"] < 0.5
    assert comps["tick"]["queue"] is None
    assert {e["from"]: e["to"] for e in st["edges"]}["tick/out"] == ["main.check"]
    assert {c["kind"] for c in comps.values()} == {"onramp", "node", "offramp"}
    assert st["ready"] is True and st["workers"] == 2 and len(st["worker_pids"]) == 2
    assert isinstance(st["loop_lag_p99_ms"], float)


def test_top_once_prints_every_component(counted: Counted, ticking: Ticking) -> None:
    res = headrace("top", "--once", f"http://127.0.0.1:{ticking.port}", timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    out = res.stdout.decode()
    for word in ("tick", "main.check", "out", "onramp", "offramp", "in/s", "out/s", "queue", "state", "workers", "loop lag"):
        assert word in out, out
    # a bare host:port works too
    res = headrace("top", "--once", f"127.0.0.1:{counted.port}", timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    for cid in ("src", "main.check", "main.filter", "out", "dlq"):
        assert cid in res.stdout.decode()


def test_top_says_so_when_no_daemon_answers() -> None:
    port = free_port()
    res = headrace("top", "--once", f"http://127.0.0.1:{port}", timeout=30)
    assert res.returncode == 1
    assert f"cannot reach a headrace daemon at http://127.0.0.1:{port}" in res.stderr.decode()
    assert "Traceback" not in res.stderr.decode()
