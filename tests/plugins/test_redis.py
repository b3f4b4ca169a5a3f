"""The redis onramp (streams, consumer group, XACK when done, pending entries reclaimed) and
offramp (XADD, LPUSH, PUBLISH) against a real redis-server (issue 18)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port, ids_written, json_lines, lines_written, metric
from tests.support.redis import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis")
    try:
        yield s
    finally:
        s.stop()


def _fill(server: RedisServer, stream: str, n: int, extra: list[dict[bytes, bytes]] | None = None) -> None:
    r = server.client()
    for start in range(0, n, 5000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(n, start + 5000)):
            pipe.xadd(stream, {b"data": json.dumps({"id": i}).encode()})
        pipe.execute()
    for fields in extra or []:
        r.xadd(stream, fields)


def _ids(path: Path) -> list[int]:
    return ids_written(path)  # complete lines only: the daemon may be writing the last one


def _config(tmp_path: Path, server: RedisServer, port: int, extra: str = "", sink: str = "{type: file, codec: json, config: {path: out.ndjson}}") -> Path:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps:
  src: {{type: redis, codec: json, config: {{url: "{server.url}", streams: [events], group: g, consumer: one{extra}}}}}
offramps:
  out: {sink}
  bad: {{type: file, codec: json, with_meta: true, config: {{path: err.ndjson}}}}
links: {{src: [out], src/err: [bad]}}
""")
    return cfg


def _pending(server: RedisServer) -> int:
    return int(server.client().xpending("events", "g")["pending"])


@pytest.mark.slow
def test_a_sigkill_in_the_middle_loses_no_entry_and_a_malformed_one_goes_to_err(tmp_path: Path, server: RedisServer) -> None:
    n = 50_000
    _fill(server, "events", n, extra=[{b"other": b"no data field"}, {b"data": b"{not json"}])
    port = free_port()
    # a slow sink, so that the kill finds entries in flight
    cfg = _config(tmp_path, server, port, sink="{type: file, codec: json, config: {path: out.ndjson}}")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n // 4, timeout=60, interval=0.02)
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        d.stop()
    before = len(_ids(tmp_path / "out.ndjson"))
    assert before < n
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n and set(_ids(tmp_path / "out.ndjson")) == set(range(n)), timeout=120)  # a line count first: cheap
        d.wait_for(lambda: _pending(server) == 0, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    ids = _ids(tmp_path / "out.ndjson")
    assert sorted(set(ids)) == list(range(n)), "every entry delivered"
    assert len(ids) - n <= 8192, "duplicates: at most what was in flight at the kill (max_pending)"
    errs = json_lines(tmp_path / "err.ndjson")
    reasons = sorted(e["meta"]["error"]["message"] for e in errs)
    assert len(errs) == 2, errs
    assert any("entry has no field 'data'" in r for r in reasons) and any("invalid JSON" in r for r in reasons)
    assert all(e["meta"]["redis_stream"] == "events" for e in errs)


def test_entries_pending_with_a_dead_consumer_are_claimed_and_delivered(tmp_path: Path, server: RedisServer) -> None:
    _fill(server, "events", 300)
    r = server.client()
    r.xgroup_create("events", "g", id="0")
    got = r.xreadgroup("g", "dead", {"events": ">"}, count=100)  # read by a consumer that then dies: never acknowledged
    assert len(got[0][1]) == 100
    port = free_port()
    cfg = _config(tmp_path, server, port, extra=", claim_idle: 300ms, claim_interval: 200ms")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: sorted(_ids(tmp_path / "out.ndjson")) == list(range(300)), timeout=30)
        d.wait_for(lambda: _pending(server) == 0, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    assert "claimed 100 entr(ies) of events" in d.stderr()


def _file_source(tmp_path: Path, n: int, offramp: str, port: int) -> Path:
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}}}
offramps: {{out: {offramp}}}
links: {{src: [out]}}
""")
    return cfg


@pytest.mark.slow
def test_a_stream_sink_writes_what_was_sent_and_loses_nothing_while_redis_is_down_for_10s(tmp_path: Path, server: RedisServer) -> None:
    port = free_port()
    n = 20_000
    cfg = _file_source(tmp_path, 2000, f'{{type: redis, codec: json, retry: {{max_backoff: 1s}}, config: {{url: "{server.url}", key: out}}}}', port)
    d = Daemon(cfg)
    r = server.client()
    try:
        d.wait_for(lambda: r.xlen("out") == 2000, timeout=30)
        server.stop()
        with open(tmp_path / "in.ndjson", "a") as f:  # more arrives while Redis is down
            f.write("".join(json.dumps({"id": i}) + "\n" for i in range(2000, n)))
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="retrying"}') == 1, timeout=30)
        stop_seen = threading.Event()
        threading.Timer(10.0, stop_seen.set).start()
        d.wait_for(stop_seen.is_set, timeout=20)  # Redis stays down 10 s
        server.start()
        r = server.client()
        d.wait_for(lambda: r.xlen("out") >= n, timeout=60)
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="ok"}') == 1, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    entries = r.xrange("out")
    ids = [json.loads(fields[b"data"])["id"] for _, fields in entries]
    assert sorted(set(ids)) == list(range(n)), "the server's own view holds every record"


@pytest.mark.parametrize("mode", ["lpush", "rpush", "publish"])
def test_list_and_channel_modes(tmp_path: Path, server: RedisServer, mode: str) -> None:
    port = free_port()
    r = server.client()
    sub: Any = None
    received: list[bytes] = []
    if mode == "publish":
        sub = r.pubsub()
        sub.subscribe("out")
        sub.get_message(timeout=5)  # the subscription's confirmation

        def listen() -> None:
            while len(received) < 100:
                m = sub.get_message(timeout=5)
                if m is not None and m["type"] == "message":
                    received.append(m["data"])

        t = threading.Thread(target=listen, daemon=True)
        t.start()
    cfg = _file_source(tmp_path, 100, f'{{type: redis, codec: json, config: {{url: "{server.url}", key: out, mode: {mode}}}}}', port)
    d = Daemon(cfg)
    try:
        if mode == "publish":
            d.wait_for(lambda: len(received) == 100, timeout=30)
            values = received
        else:
            d.wait_for(lambda: r.llen("out") == 100, timeout=30)
            values = r.lrange("out", 0, -1)
    finally:
        assert d.stop() == 0, d.stderr()
    ids = [json.loads(v)["id"] for v in values]
    assert ids == (list(range(99, -1, -1)) if mode == "lpush" else list(range(100)))
