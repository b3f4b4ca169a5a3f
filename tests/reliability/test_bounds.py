"""Bounded memory, fair access and exposure (issue 12, items 15-20): hostile input that made the
daemon's memory grow without bound, or let one client lock others out, measured on the real
daemon as its peak RSS or as what the clients saw."""

from __future__ import annotations

import gzip
import json
import math
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.reliability.checker import EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import (
    OFFRAMP_IN,
    Lines,
    RssSampler,
    count_lines,
    dead_letters,
    status,
    wait_until,
    write_config,
)
from tests.support.daemon import Daemon, free_port, headrace, json_lines, scrape

HOSTILE_EXPRESSIONS = {  # id % 20 -> (what the record carries, the bound it hits)
    3: ({"n": "%300000000d"}, "format width or precision 300000000"),  # `event['n'] % 10` formats a string
    5: ({"width": 300_000_000}, "format width or precision 300000000"),  # an f-string width from the data
    9: ({"count": 10**18}, "range of 1000000000000000000 items"),  # range(10**18) looped for good
}


def test_row18b_event_data_cannot_blow_up_an_expression(tmp_path: Path, figures: Figures) -> None:
    n = 200
    events = []
    for i in range(n):
        e = {"id": i, "n": i, "name": "x", "width": 4, "count": 3}
        e.update(HOSTILE_EXPRESSIONS.get(i % 20, ({}, ""))[0])
        events.append(e)
    (tmp_path / "in.ndjson").write_text("")
    port = free_port()
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson, follow: true}}}
pipelines:
  main:
    - {op: filter, where: "event['n'] % 10 != 7"}
    - {op: set, set: {label: "f\\"{event['name']:>{event['width']}}\\"", ones: "sum(1 for i in range(event['count']))"}}
offramps:
  out: {type: file, config: {path: out.ndjson}}
  dlq: {type: file, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], src/err: [dlq], main: [out], main/err: [dlq]}
""", port=port, workers=0)  # fmt: skip
    hostile = {i for i in range(n) if i % 20 in HOSTILE_EXPRESSIONS}
    filtered = {i for i in range(n) if i % 10 == 7}
    d = Daemon(cfg)
    rss = RssSampler(d.pid)
    try:
        wait_until(lambda: status(port).get("ready"), 30, "ready", daemon=d)
        rss.start()
        t0 = time.monotonic()
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write("".join(json.dumps(e) + "\n" for e in events))
        wait_until(lambda: count_lines(tmp_path / "out.ndjson") + count_lines(tmp_path / "dlq.ndjson") >= n - len(filtered), 60,
                   "every record out or dead-lettered", daemon=d)  # fmt: skip
        took = time.monotonic() - t0
        rss.stop()
    finally:
        rss.stop()
        rc = d.stop()
    assert rc == 0, d.stderr()
    peak = rss.growth()
    dead = dead_letters(tmp_path / "dlq.ndjson")
    reasons = {e["event"]["id"]: e["meta"]["error"] for e in dead}
    wrong = {i: r for i, r in reasons.items() if r["type"] != "OverflowError" or HOSTILE_EXPRESSIONS[i % 20][1] not in r["message"]}
    assert not wrong, wrong
    out = Lines(tmp_path / "out.ndjson")
    report = conserve([i for i in range(n) if i not in filtered], out.ids, list(reasons), guarantee=EXACTLY_ONCE, expect_dead=hostile)
    assert report.ok, report.summary()
    assert all(e["label"] == "   x" and e["ones"] == 3 for e in out.events)
    assert peak < 30, f"RSS grew by {peak:.0f} MB on {len(hostile)} hostile records"
    figures(row=18, case="hostile event data in expressions", records=n, hostile=len(hostile), dead_lettered=len(dead), seconds_to_drain=round(took, 2), rss_growth_peak_mb=round(peak),
            lost=len(report.lost))  # fmt: skip


def _gzip_lines(total: int = 7680, line: int = 1023) -> tuple[bytes, int]:
    """A gzip member of ``total`` lines of ``line`` bytes (7.5 MiB), about 1000:1; and the line count."""
    return gzip.compress((b"x" * line + b"\n") * total, compresslevel=9), total


BOMBS = """
onramps:
  udp: {{type: udp, codec: binary, preprocessors: [{{name: gzip, max_message_bytes: 8MiB}}, lines], config: {{port: {uport}}}}}
  http: {{type: http, codec: binary, preprocessors: [{{name: gzip, max_message_bytes: 8MiB}}, lines],
         config: {{port: {hport}, path: /in, max_pending_events: 200000}}}}
pipelines:
  counted: [{{op: window, interval: 2s, aggregates: {{n: {{fn: count}}}}}}]  # acks the records when the window closes
offramps:
  out: {{type: file, codec: binary, config: {{path: /dev/null}}}}
  counts: {{type: file, config: {{path: counts.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{udp: [out], udp/err: [dlq], http: [counted], http/err: [dlq], counted: [counts]}}
"""


def _sent_to_out(port: int) -> float:
    return scrape(port).get(OFFRAMP_IN.format("out"), 0.0)


def test_row16d_many_compressed_messages_at_once_cost_one_message_of_memory(tmp_path: Path, figures: Figures) -> None:
    """1.6 MB of gzip datagrams made 3.3 GB of RSS, 40 concurrent 58 KB bodies 2.5 GB: each whole message was
    decompressed and held at once, one per datagram of a batch and one per request."""
    uport, hport, port = free_port(), free_port(), free_port()
    cfg = write_config(tmp_path, BOMBS.format(uport=uport, hport=hport), port=port, workers=0)
    bomb, lines = _gzip_lines()
    d = Daemon(cfg)
    rss = RssSampler(d.pid)
    try:
        wait_until(lambda: status(port).get("ready"), 30, "ready", daemon=d)
        rss.start()
        # UDP: bursts of 20 datagrams, each 7.5 MiB once decompressed (as many as the socket buffer holds arrive)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                before = _sent_to_out(port)
                for _ in range(20):
                    s.sendto(bomb, ("127.0.0.1", uport))
                wait_until(lambda b=before: _sent_to_out(port) > b, 60, "a burst delivered", daemon=d)  # type: ignore[misc]
                settle = time.monotonic() + 30
                last = -1.0
                while (now := _sent_to_out(port)) != last and time.monotonic() < settle:  # until the burst stops growing
                    last = now
                    time.sleep(0.3)
        udp_records = _sent_to_out(port)
        udp_peak = rss.growth()
        # HTTP: 16 concurrent requests, each 7.5 MiB once decompressed, answered when a 2 s window has counted them
        answers: list[Any] = []

        def post() -> None:
            req = urllib.request.Request(f"http://127.0.0.1:{hport}/in", data=bomb, method="POST")
            answers.append(json.loads(urllib.request.urlopen(req, timeout=120).read()))

        threads = [threading.Thread(target=post) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        rss.stop()
    finally:
        rss.stop()
        rc = d.stop()
    assert rc == 0, d.stderr()
    peak = rss.growth()
    assert answers == [{"events": lines, "rejected": 0}] * 16, answers
    assert sum(e["n"] for e in json_lines(tmp_path / "counts.ndjson")) == 16 * lines
    assert udp_records >= lines and udp_records % lines == 0, udp_records
    assert not (tmp_path / "dlq.ndjson").exists() or not dead_letters(tmp_path / "dlq.ndjson")
    assert peak < 80, f"RSS grew by {peak:.0f} MB (UDP alone: {udp_peak:.0f} MB) for 7.5 MiB messages"
    figures(row=16, case="many compressed messages at once", message_mib=7.5, compressed_kb=len(bomb) // 1024, udp_datagrams_delivered=int(udp_records // lines),
            http_concurrent=16, rss_growth_udp_mb=round(udp_peak), rss_growth_peak_mb=round(peak), lost=0)  # fmt: skip


def test_row16e_slow_http_bodies_hold_at_most_max_inflight_bytes(tmp_path: Path, figures: Figures) -> None:
    """100 slow 15 MB POSTs made 3.1 GB of RSS: every body was read into memory, whatever the number of them."""
    hport, port = free_port(), free_port()
    cfg = write_config(tmp_path, f"""
onramps: {{http: {{type: http, codec: json, config: {{port: {hport}, path: /in, max_inflight_bytes: 16MiB, body_timeout: 60s}}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{http: [out]}}
""", port=port, workers=0)  # fmt: skip
    body = 4 << 20
    d = Daemon(cfg)
    rss = RssSampler(d.pid)
    conns: list[socket.socket] = []
    refused = 0
    try:
        wait_until(lambda: status(port).get("ready"), 30, "ready", daemon=d)
        rss.start()
        for _ in range(40):  # each sends all of a 4 MB body but its last byte, and waits
            s = socket.create_connection(("127.0.0.1", hport), timeout=10)
            conns.append(s)
            try:
                s.sendall(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body + b" " * (body - 1))
            except OSError:
                pass  # answered 503 and closed while sending
        held = wait_until(lambda: scrape(port).get('headrace_component_buffered_bytes{component_id="http"}'), 30, "bodies held")
        for s in conns:
            s.settimeout(0.2)
            try:
                refused += s.recv(4096).startswith(b"HTTP/1.1 503 ")
            except OSError:
                pass
        peak_held = rss.growth()
        for s in conns:
            s.close()  # the clients give up: what they held is released
        wait_until(lambda: scrape(port).get('headrace_component_buffered_bytes{component_id="http"}') == 0, 30, "bodies released")
        req = urllib.request.Request(f"http://127.0.0.1:{hport}/in", data=b'{"id": 1}\n', method="POST")
        assert json.loads(urllib.request.urlopen(req, timeout=30).read()) == {"events": 1, "rejected": 0}
        rss.stop()
        counted = scrape(port).get('headrace_onramp_refused_total{component_id="http",reason="max_inflight_bytes"}', 0)
    finally:
        rss.stop()
        for s in conns:
            s.close()
        rc = d.stop()
    assert rc == 0, d.stderr()
    assert held <= 16 << 20, held
    assert refused >= 30 and counted >= refused, (refused, counted)
    assert peak_held < 60, f"RSS grew by {peak_held:.0f} MB holding slow bodies"
    figures(row=16, case="slow HTTP bodies", slow_posts=40, body_mb=4, max_inflight_mib=16, held_mb=round(held / 2**20, 1), refused_503=refused,
            rss_growth_peak_mb=round(peak_held))  # fmt: skip


def test_row18c_udp_queue_is_bounded_in_bytes(tmp_path: Path, figures: Figures) -> None:
    """``queue_datagrams`` x 64 KiB (256 MiB) could wait in the UDP onramp, outside every byte bound."""
    uport, port = free_port(), free_port()
    (tmp_path / "stall.py").write_text("import asyncio\n\nasync def stall(event, meta):\n    await asyncio.sleep(30)\n    return event\n")
    cfg = write_config(tmp_path, f"""
onramps: {{udp: {{type: udp, codec: binary, config: {{port: {uport}, queue_bytes: 4MiB}}}}}}
pipelines: {{stalled: [{{op: python, fn: "stall:stall", concurrency: 1}}]}}
offramps: {{out: {{type: file, codec: binary, config: {{path: /dev/null}}}}}}
links: {{udp: [stalled], stalled: [out]}}
""", port=port, workers=0, daemon_extra=", queue_events: 4, queue_bytes: 64KiB, shutdown_timeout: 1s")  # fmt: skip
    d = Daemon(cfg)
    rss = RssSampler(d.pid)
    sent = 5000
    try:
        wait_until(lambda: status(port).get("ready"), 30, "ready", daemon=d)
        rss.start()
        datagram = b"x" * 60_000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(sent):  # 300 MB while the graph is stalled
                s.sendto(datagram, ("127.0.0.1", uport))
                if i % 10 == 9:
                    time.sleep(0.002)  # let the loop read: what the kernel buffer drops is not the point here
        wait_until(lambda: scrape(port).get('headrace_component_discarded_events_total{component_id="udp",reason="queue_full"}', 0) > 0,
                   10, "drops counted", daemon=d)  # fmt: skip
        m = scrape(port)
        held = m['headrace_component_buffered_bytes{component_id="udp"}']
        dropped = m['headrace_component_discarded_events_total{component_id="udp",reason="queue_full"}']
        rss.stop()
    finally:
        rss.stop()
        d.stop(5)
    peak = rss.growth()
    assert held <= 4 << 20, held
    assert peak < 40, f"RSS grew by {peak:.0f} MB while 300 MB of datagrams arrived at a stalled graph"
    figures(row=18, case="UDP queue in bytes", datagrams_sent=sent, datagram_kb=60, queue_bytes_mib=4, held_mb=round(held / 2**20, 1), dropped=int(dropped),
            rss_growth_peak_mb=round(peak))  # fmt: skip


def test_row18d_window_percentiles_do_not_keep_every_value(tmp_path: Path, figures: Figures) -> None:
    """A percentile kept every value of its window (+8 MB/s at 200k events/s)."""
    port = free_port()
    values = [round(random.Random(7).lognormvariate(3, 1.5) * (i % 97 + 1), 3) for i in range(1000)]
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"ms": v}) + "\n" for v in values))
    cfg = write_config(tmp_path, """
onramps: {src: {type: blaster, config: {source: in.ndjson, iters: 800, batch: 1000}}}
pipelines:
  stats: [{op: window, interval: 1h, aggregates: {p50: {fn: percentile, field: "event['ms']", p: 0.5},
                                                   p99: {fn: percentile, field: "event['ms']", p: 0.99},
                                                   p999: {fn: percentile, field: "event['ms']", p: 0.999}}}]
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [stats], stats: [out]}
""", port=port, workers=0)  # fmt: skip
    d = Daemon(cfg)
    rss = RssSampler(d.pid)
    try:
        wait_until(lambda: status(port).get("ready") or d.proc.poll() is not None, 30, "ready")
        rss.start()
        rc = d.wait(120)  # the blaster ends after 800 000 events; the window is flushed at the end
    finally:
        rss.stop()
        d.stop()
    assert rc == 0, d.stderr()
    (result,) = json_lines(tmp_path / "out.ndjson")
    everything = sorted(values * 800)
    for name, p in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        exact = everything[math.ceil(p * len(everything)) - 1]
        assert abs(result[name] - exact) <= 0.01 * exact, (name, result[name], exact)
    peak = rss.growth()
    assert peak < 30, f"RSS grew by {peak:.0f} MB over a window of 800 000 values"
    figures(row=18, case="window percentiles", events=800_000, percentiles=3, rss_growth_peak_mb=round(peak), accuracy="within 1 %")


def _admin(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers, data=b"{}" if method == "POST" else None)
    try:
        return int(urllib.request.urlopen(req, timeout=10).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_row20c_web_pages_cannot_use_the_admin_endpoint_or_post_events(tmp_path: Path, figures: Figures) -> None:
    """A cross-origin form POST reloaded the config (CSRF), any Host was served (DNS rebinding read /status),
    and any web page could post events to the HTTP onramp (text/plain needs no preflight)."""
    hport, port = free_port(), free_port()
    cfg = write_config(tmp_path, f"""
onramps: {{web: {{type: http, config: {{port: {hport}, path: /in}}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{web: [out]}}
""", port=port, workers=0)  # fmt: skip
    d = Daemon(cfg)
    page = {"Origin": "http://attacker.example", "Content-Type": "text/plain"}
    try:
        wait_until(lambda: status(port).get("ready"), 30, "ready", daemon=d)
        rebinding = [_admin(port, "GET", p, {"Host": f"attacker.example:{port}"}) for p in ("/status", "/metrics", "/ready", "/health")]
        cross_origin = [_admin(port, "GET", p, {"Origin": "http://attacker.example"}) for p in ("/status", "/metrics")]
        csrf = [_admin(port, "POST", "/reload", {"Content-Type": t}) for t in ("application/x-www-form-urlencoded", "text/plain",
                                                                                  "multipart/form-data; boundary=b")]  # fmt: skip
        csrf.append(_admin(port, "POST", "/reload", {**page, "Content-Type": "application/json"}))
        reloads = scrape(port).get('headrace_config_reloads_total{result="success"}', 0.0)
        tooling = [_admin(port, "POST", "/reload", {"Content-Type": "application/json"}), _admin(port, "GET", "/status", {})]
        top = headrace("top", "--once", f"http://localhost:{port}", timeout=30)
        req = urllib.request.Request(f"http://127.0.0.1:{hport}/in", data=b'{"id": 1}\n', method="POST", headers=page)
        try:
            injected = urllib.request.urlopen(req, timeout=10).status
        except urllib.error.HTTPError as exc:
            injected = exc.code
        req = urllib.request.Request(f"http://127.0.0.1:{hport}/in", data=b'{"id": 2}\n', method="POST")  # curl, a client library
        assert urllib.request.urlopen(req, timeout=10).status == 200
    finally:
        rc = d.stop()
    assert rc == 0, d.stderr()
    assert rebinding == [403] * 4 and cross_origin == [403] * 2, (rebinding, cross_origin)
    assert csrf == [415, 415, 415, 403] and reloads == 0, (csrf, reloads)
    assert tooling == [200, 200] and top.returncode == 0 and b"web" in top.stdout, (tooling, top.stderr[-500:])
    assert injected == 403 and Lines(tmp_path / "out.ndjson").ids == [2]
    assert "admin endpoint: refused" in d.stderr()
    figures(row=20, case="web pages", rebinding="403", cross_origin="403", csrf_reload="415 (no reload)", browser_post_to_http_onramp="403",
            tooling="reload with JSON 200, top OK")  # fmt: skip
