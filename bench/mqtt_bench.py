"""MQTT benchmarks against a real mosquitto, each beside a bare paho-mqtt loop in the same run
(issue 18 names no target: the closing note discusses a connector below 0.8x its bare loop)."""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.common import line, records, run_daemon_async, tmpdir
from tests.support.daemon import free_port, metric
from tests.support.mosquitto import Mosquitto

N = 100_000


def _client(port: int, client_id: str, clean: bool = True) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _subscribe_session(port: int, client_id: str, topic: str) -> None:
    """Make a persistent session subscribed to ``topic``, then leave: the broker queues for it."""
    done = threading.Event()
    c = _client(port, client_id, clean=False)
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, qos=1)
    done.wait(10)
    c.disconnect()
    c.loop_stop()


def _publish(port: int, topic: str, n: int) -> float:
    recs = records()
    c = _client(port, "bench-publisher")
    t0 = time.perf_counter()
    for start in range(0, n, 20_000):  # paho's message ids wrap at 65535: no more than that outstanding
        infos = [c.publish(topic, recs[i % len(recs)], qos=1) for i in range(start, min(n, start + 20_000))]
        for info in infos:
            info.wait_for_publish(60)
    rate = n / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


def _bare_read(port: int, client_id: str, n: int) -> float:
    """The session's queued messages: on_message -> orjson.loads -> ack (manual, as headrace does); events/s."""
    import orjson
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    got = [0]
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, manual_ack=True)

    def message(cl: Any, _u: Any, m: Any) -> None:
        orjson.loads(m.payload)
        cl.ack(m.mid, m.qos)
        got[0] += 1
        if got[0] >= n:
            done.set()

    c.on_message = message
    t0 = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    done.wait(300)
    rate = got[0] / (time.perf_counter() - t0)
    c.disconnect()
    c.loop_stop()
    return rate


def mqtt_benches() -> list[str]:
    out: list[str] = []
    folder = tmpdir()
    broker = Mosquitto(folder / "mqtt")
    try:
        _subscribe_session(broker.port, "bare-reader", "in-bare")
        _publish(broker.port, "in-bare", N)
        bare = _bare_read(broker.port, "bare-reader", N)
        _subscribe_session(broker.port, "hr-reader", "in")
        _publish(broker.port, "in", N)
        port = free_port()
        seen: dict[str, float] = {}

        def drained() -> bool:
            got = metric(port, 'headrace_component_received_events_total{component_id="out",component_kind="offramp"}', 0)
            if got and "t0" not in seen:
                seen["t0"] = time.perf_counter()
            return got >= N

        cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: mqtt, codec: json, config: {{port: {broker.port}, topics: [in], client_id: hr-reader}}}}}}
offramps: {{out: {{type: blackhole, codec: json, config: {{warmup_secs: 0, stop_after_secs: 600, stop_daemon: false}}}}}}
links: {{src: [out]}}
"""
        t_start = time.perf_counter()
        run_daemon_async(cfg, folder, drained)
        ours = N / (time.perf_counter() - seen.get("t0", t_start))
        out.append(f"  baseline: bare paho-mqtt session reading {N:,} queued QoS 1 messages (~640 B), orjson.loads, manual ack: {bare:,.0f} events/s")
        out.append(line("M1. MQTT QoS 1 session -> blackhole (onramp)", f"{ours:,.0f} events/s = {ours / bare:.2f}x bare", "- (>=0.8x noted)", True))
        bare_w = _publish(broker.port, "bare-out", N // 2)
        counted = [0]
        sub = _client(broker.port, "bench-counter")
        sub.on_message = lambda *_a: counted.__setitem__(0, counted[0] + 1)
        sub.subscribe("out", qos=1)
        marks: list[tuple[float, int]] = []

        def measured() -> bool:
            marks.append((time.perf_counter(), counted[0]))
            started = [m for m in marks if m[1] > 0]
            return len(started) >= 2 and started[-1][0] - started[0][0] >= 3.0

        (folder / "data.ndjson").write_bytes(b"\n".join(records()) + b"\n")
        cfg = f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: blaster, codec: json, config: {{source: {folder / "data.ndjson"}}}}}}}
offramps: {{out: {{type: mqtt, codec: json, config: {{port: {broker.port}, topic: out}}}}}}
links: {{src: [out]}}
"""
        run_daemon_async(cfg, folder, measured)
        sub.disconnect()
        sub.loop_stop()
        started = [m for m in marks if m[1] > 0]
        ours_w = (started[-1][1] - started[0][1]) / (started[-1][0] - started[0][0])
        out.append(f"  baseline: bare paho-mqtt loop publishing QoS 1, up to 1000 in flight: {bare_w:,.0f} events/s")
        out.append(line("M2. blaster -> MQTT QoS 1 (offramp)", f"{ours_w:,.0f} events/s = {ours_w / bare_w:.2f}x bare", "- (>=0.8x noted)", True))
    finally:
        broker.stop()
    return out
