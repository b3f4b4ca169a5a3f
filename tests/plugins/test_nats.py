"""The nats onramp (JetStream durable pull consumer, acked once done) and offramp (JetStream
publish with acknowledgement) against a real nats-server with JetStream (issue 18)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port, ids_written, json_lines, lines_written, metric
from tests.support.nats import NatsServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path / "nats")
    try:
        yield s
    finally:
        s.stop()


async def _publish(url: str, stream: str, subject: str, payloads: list[bytes]) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        await js.stream_info(stream)
    except Exception:
        await js.add_stream(StreamConfig(name=stream, subjects=[subject], storage=StorageType.FILE))
    for start in range(0, len(payloads), 1000):
        await asyncio.gather(*(js.publish(subject, p) for p in payloads[start : start + 1000]))
    await nc.close()


async def _stream_payloads(url: str, stream: str) -> list[bytes]:
    """Every message of ``stream`` as stored (the server's own view), in order."""
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out: list[bytes] = []
    if not info.state.messages:
        return out
    seqs = range(info.state.first_seq, info.state.last_seq + 1)
    for start in range(0, len(seqs), 1000):  # a thousand requests in flight at a time: one at a time, 20,000 took 8 s
        got = await asyncio.gather(*(js.get_msg(stream, seq) for seq in seqs[start : start + 1000]))
        out.extend(m.data for m in got)  # gather keeps the order of the sequence numbers
    await nc.close()
    return out


async def _count(url: str, stream: str) -> int:
    import nats

    nc = await nats.connect(url)
    info = await nc.jetstream().stream_info(stream)
    await nc.close()
    return int(info.state.messages)


async def _num_ack_pending(url: str, stream: str, durable: str) -> int:
    import nats

    nc = await nats.connect(url)
    info = await nc.jetstream().consumer_info(stream, durable)
    await nc.close()
    return int(info.num_ack_pending) + int(info.num_pending)


def _ids(path: Path) -> list[int]:
    return ids_written(path)  # complete lines only: the daemon may be writing the last one


@pytest.mark.slow
def test_a_sigkill_in_the_middle_loses_no_message_and_a_malformed_one_goes_to_err(tmp_path: Path, server: NatsServer) -> None:
    n = 50_000
    asyncio.run(_publish(server.url, "EVENTS", "events.in", [json.dumps({"id": i}).encode() for i in range(n)] + [b"{not json"]))
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: nats, codec: json, config: {{servers: ["{server.url}"], stream: EVENTS, durable: hr, ack_wait: 2s}}}}}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  bad: {{type: file, codec: json, with_meta: true, config: {{path: err.ndjson}}}}
links: {{src: [out], src/err: [bad]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n // 4, timeout=60, interval=0.02)
        d.signal(signal.SIGKILL)
        assert d.wait(10) == -signal.SIGKILL
    finally:
        d.stop()
    assert len(_ids(tmp_path / "out.ndjson")) < n
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n and set(_ids(tmp_path / "out.ndjson")) == set(range(n)), timeout=120)  # a line count first: cheap
        d.wait_for(lambda: asyncio.run(_num_ack_pending(server.url, "EVENTS", "hr")) == 0, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    ids = _ids(tmp_path / "out.ndjson")
    assert sorted(set(ids)) == list(range(n)), "every message delivered"
    assert len(ids) - n <= 8192, "duplicates: at most what was unacknowledged at the kill (max_ack_pending)"
    (err,) = json_lines(tmp_path / "err.ndjson")
    assert "invalid JSON" in err["meta"]["error"]["message"] and err["meta"]["nats_stream_seq"] == n + 1


@pytest.mark.slow
def test_a_jetstream_sink_stores_what_was_sent_and_loses_nothing_while_the_server_is_down_for_10s(tmp_path: Path, server: NatsServer) -> None:
    import nats

    async def make_stream() -> None:
        from nats.js.api import StorageType, StreamConfig

        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(StreamConfig(name="OUT", subjects=["out"], storage=StorageType.FILE))
        await nc.close()

    asyncio.run(make_stream())
    n = 20_000
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(2000)))
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}}}
offramps: {{out: {{type: nats, codec: json, retry: {{max_backoff: 1s}}, config: {{servers: ["{server.url}"], subject: out, timeout: 2s}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: asyncio.run(_count(server.url, "OUT")) == 2000, timeout=30)
        server.stop()
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write("".join(json.dumps({"id": i}) + "\n" for i in range(2000, n)))
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="retrying"}') == 1, timeout=30)
        down = threading.Event()
        threading.Timer(10.0, down.set).start()
        d.wait_for(down.is_set, timeout=20)  # the server stays down 10 s
        server.start()
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="ok"}') == 1
                   and asyncio.run(_count(server.url, "OUT")) >= n, timeout=90)  # fmt: skip
    finally:
        assert d.stop() == 0, d.stderr()
    ids = _stream_ids(server.url)
    assert sorted(set(ids)) == list(range(n)), "the server's own view holds every record"


def _stream_ids(url: str) -> list[Any]:
    return [json.loads(p)["id"] for p in asyncio.run(_stream_payloads(url, "OUT"))]


def test_the_source_goes_on_after_the_server_was_away(tmp_path: Path, server: NatsServer) -> None:
    """The server stops under a reading onramp and comes back: what was published before and after
    is delivered, and the onramp never fails."""
    asyncio.run(_publish(server.url, "EVENTS", "events.in", [json.dumps({"id": i}).encode() for i in range(1000)]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: nats, codec: json, config: {{servers: ["{server.url}"], stream: EVENTS, durable: hr, ack_wait: 2s}}}}}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: set(_ids(tmp_path / "out.ndjson")) == set(range(1000)), timeout=30)
        server.stop()
        d.wait_for(lambda: "disconnected" in d.stderr(), timeout=30)
        server.start()
        asyncio.run(_publish(server.url, "EVENTS", "events.in", [json.dumps({"id": i}).encode() for i in range(1000, 2000)]))
        d.wait_for(lambda: set(_ids(tmp_path / "out.ndjson")) == set(range(2000)), timeout=60)
    finally:
        assert d.stop() == 0, d.stderr()
    assert "Traceback" not in d.stderr() and "restarting it in" not in d.stderr()
