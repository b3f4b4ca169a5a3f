"""``daemon.memory`` (issue 19, item 3, in part): resident memory per process as metrics, and every
source paused above ``max`` until the sum is under ``high`` again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from headrace.config.model import MemoryConfig
from headrace.daemon.memory import MemoryWatch
from headrace.metrics.defs import Metrics
from tests.daemon.test_notify import Listener
from tests.reliability.harness import http_status
from tests.support.daemon import Daemon, free_port, headrace, metric, scrape


def test_sources_pause_above_max_and_read_again_under_high() -> None:
    metrics = Metrics()
    sizes = {1: 0, 2: 0}
    events: list[str] = []
    shrinks: list[float] = []
    watch = MemoryWatch(MemoryConfig(high="50%", max="80%"), metrics, lambda: [("parent", 1), ("worker 0", 2)],
                        lambda why: events.append(f"pause: {why}"), lambda: events.append("resume"), limit=1000,
                        rss=lambda pid: sizes[pid], shrink=shrinks.append)  # fmt: skip
    sizes.update({1: 200, 2: 200})
    watch.sample()
    assert events == [] and shrinks == []
    sizes[2] = 350  # 550 of 1000: over high: bounds shrink (every sample, so edges a reload adds shrink too)
    watch.sample()
    watch.sample()
    assert events == [] and shrinks == [0.25, 0.25]
    sizes[2] = 600  # 800 of 1000: max
    watch.sample()
    assert len(events) == 1 and events[0].startswith("pause:") and watch.paused
    sizes[2] = 300  # 600: under max, not under high
    watch.sample()
    assert len(events) == 1
    sizes[2] = 260  # 460: under high (the sources read again), not under 90 % of it (450): still shrunk
    watch.sample()
    assert events[-1] == "resume" and not watch.paused and shrinks[-1] == 0.25
    sizes[2] = 100  # 300: bounds restored
    watch.sample()
    assert shrinks[-1] == 1.0
    watch.sample()
    assert shrinks.count(1.0) == 1
    gauge = metrics["headrace_memory_rss_bytes"]
    assert gauge.labels("worker 0")._value.get() == 100 and metrics["headrace_memory_limit_bytes"]._value.get() == 1000


def _config(tmp_path: Path, write: Any, port: int, memory: str = "") -> Path:
    return write("c.yaml", f"""
version: 1
daemon: {{workers: 1, metrics: {{listen: "127.0.0.1:{port}"}}{memory}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}}}
pipelines: {{main: [{{op: python, fn: "memstage:keep"}}]}}
offramps: {{out: {{type: blackhole}}}}
links: {{src: [main], main: [out]}}
""")


SENT = 'headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}'


def test_memory_gauges_per_process_and_a_pause_over_max(tmp_path: Path, write: Any) -> None:
    write("memstage.py", "def keep(event, meta):\n    return event\n")
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(100)))
    port = free_port()
    d = Daemon(_config(tmp_path, write, port))
    try:
        d.wait_for(lambda: metric(port, SENT) >= 100 and metric(port, 'headrace_memory_rss_bytes{process="worker 0"}') > 0, timeout=30)
        m = scrape(port)
        assert m['headrace_memory_rss_bytes{process="parent"}'] > 10 << 20 and m["headrace_memory_limit_bytes"] > 0
        assert m["headrace_memory_paused"] == 0
    finally:
        d.stop()
    port = free_port()
    listener = Listener(tmp_path / "notify.sock")
    d = Daemon(_config(tmp_path, write, port, ", memory: {high: 1MiB, max: 2MiB}"),  # always over: paused at once
               env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})  # fmt: skip
    try:
        d.wait_for(lambda: metric(port, "headrace_memory_paused") == 1, timeout=30)
        listener.until(lambda: any("STATUS=paused: resident memory" in m for _, m in listener.messages))
        assert "queue bounds and reads ahead shrink to 25%" in d.stderr()
        assert http_status(port, "/ready") == 503
        before = metric(port, SENT)
        with (tmp_path / "in.ndjson").open("a") as f:
            f.write("".join(json.dumps({"id": i}) + "\n" for i in range(100, 200)))
        deadline = time.monotonic() + 1.0  # several polls of the file: nothing more is read while paused
        while time.monotonic() < deadline:
            assert metric(port, SENT) == before
            time.sleep(0.1)
        assert "pausing every source: resident memory" in d.stderr()
    finally:
        d.stop()


def test_a_bad_memory_bound_is_a_config_error(tmp_path: Path, write: Any) -> None:
    cfg = write("c.yaml", """
version: 1
daemon: {memory: {max: 120%}}
onramps: {src: {type: stdin}}
offramps: {out: {type: stdout}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78 and "a share between 0% and 100%" in res.stderr.decode(), res.stderr.decode()


def test_the_limit_is_the_cgroups_v2_or_v1_else_the_machines(tmp_path: Path) -> None:
    import os

    from headrace.daemon.memory import limit_bytes

    machine = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    procs, root = tmp_path / "cgroup", tmp_path / "fs"
    procs.write_text("0::/system.slice/headrace.service\n")
    (root / "system.slice" / "headrace.service").mkdir(parents=True)
    (root / "system.slice" / "headrace.service" / "memory.max").write_text("314572800\n")
    assert limit_bytes(procs, root) == 300 << 20
    (root / "system.slice" / "headrace.service" / "memory.max").write_text("max\n")
    assert limit_bytes(procs, root) == machine
    procs.write_text("4:memory:/process_api/abc\n1:cpu:/\n0::/\n")  # a hybrid system: v1 memory controller
    (root / "memory" / "process_api" / "abc").mkdir(parents=True)
    (root / "memory" / "process_api" / "abc" / "memory.limit_in_bytes").write_text("209715200\n")
    assert limit_bytes(procs, root) == 200 << 20
    (root / "memory" / "process_api" / "abc" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert limit_bytes(procs, root) == machine
    assert limit_bytes(tmp_path / "absent", root) == machine


GROW = '''
def grow(event, meta):
    event["pad"] = "x" * (50 * len(event["body"]))  # each event 50x larger
    return event
'''


class _Flow:
    """Numbered ~650-byte records into a tcp onramp; a tcp sink that reads nothing until ``go``."""

    def __init__(self, n: int) -> None:
        import socket
        import threading

        self.n = n
        self.sent = 0
        self.got: set[int] = set()
        self.go = threading.Event()
        self.sink = socket.socket()
        self.sink.bind(("127.0.0.1", 0))
        self.sink.listen()
        self.port = self.sink.getsockname()[1]
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        conn, _ = self.sink.accept()
        self.go.wait()
        buf = b""
        with conn:
            while data := conn.recv(1 << 20):
                *lines, buf = (buf + data).split(b"\n")
                self.got.update(json.loads(line)["seq"] for line in lines)

    def write(self, port: int, alive: Any) -> None:
        import socket

        deadline = time.monotonic() + 60
        while True:
            try:
                w = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and alive(), "the onramp never listened"
                time.sleep(0.05)
        w.settimeout(None)  # whole lines only: a paused onramp stops reading and this blocks (the daemon slows the sender down)
        body = "y" * 600
        with w:
            while self.sent < self.n:
                try:
                    w.sendall((json.dumps({"seq": self.sent, "body": body}) + "\n").encode())
                except OSError:
                    return  # the daemon died
                self.sent += 1


def _grow_config(write: Any, port: int, src: int, out: int, memory: str) -> Path:
    write("growstages.py", GROW)
    return write("grow.yaml", f"""
version: 1
daemon: {{workers: 0, queue_events: 100000, queue_bytes: 1GiB, metrics: {{listen: "127.0.0.1:{port}"}}{memory}}}
onramps: {{src: {{type: tcp, codec: json, config: {{port: {src}}}}}}}
pipelines: {{main: [{{op: python, fn: "growstages:grow"}}]}}
offramps: {{out: {{type: tcp, codec: json, config: {{port: {out}}}}}}}
links: {{src: [main], main: [out]}}
""")


@pytest.mark.slow
def test_a_stage_making_events_50x_larger_under_a_300mib_cgroup_is_killed_without_the_budget_and_survives_with_it(
        tmp_path: Path, write: Any) -> None:  # fmt: skip
    """Queue bounds far too generous for the box (1 GiB) and a sink that reads nothing for a while:
    without daemon.memory the kernel kills the daemon; with it the sources pause (the sender is
    slowed down by TCP), the daemon lives, and every record sent arrives once the sink reads."""
    import threading

    from tests.support.cgroup import joiner, memory_cgroup, oom_kills

    n = 20000  # 20,000 x 31 KB grown: about twice the limit
    with memory_cgroup(300 << 20) as cg:
        flow, src = _Flow(n), free_port()
        d = Daemon(_grow_config(write, free_port(), src, flow.port, ""), preexec=joiner(cg))
        try:
            threading.Thread(target=flow.write, args=(src, lambda: d.proc.poll() is None), daemon=True).start()
            rc = d.wait(timeout=60)  # the writer sends until the daemon dies (or all are in socket buffers)
        finally:
            d.stop()
        assert rc == -9 and oom_kills(cg) > 0, f"without the budget the kernel kills it: rc {rc}, sent {flow.sent}\n{d.stderr()[-2000:]}"
    with memory_cgroup(300 << 20) as cg:
        flow, src = _Flow(n), free_port()
        d = Daemon(_grow_config(write, free_port(), src, flow.port, ", memory: {high: 50%, max: 65%}"), preexec=joiner(cg))
        try:
            writer = threading.Thread(target=flow.write, args=(src, lambda: d.proc.poll() is None), daemon=True)
            writer.start()
            d.wait_for(lambda: "pausing every source: resident memory" in d.stderr(), timeout=60)
            flow.go.set()
            writer.join(timeout=120)
            assert flow.sent == n, f"sent only {flow.sent}"
            d.wait_for(lambda: len(flow.got) == n, timeout=60)
        finally:
            rc = d.stop()
        assert rc == 0 and flow.got == set(range(n)), f"rc {rc}, {n - len(flow.got)} missing\n{d.stderr()[-2000:]}"
        assert "the sources read again" in d.stderr()
        usage = cg / ("memory.max_usage_in_bytes" if (cg / "memory.max_usage_in_bytes").exists() else "memory.peak")
        if usage.exists():
            assert int(usage.read_text()) < 300 << 20
