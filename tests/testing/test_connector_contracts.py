"""The onramp and offramp contract suites over every built-in onramp and offramp, with real peers
on 127.0.0.1 (files, clients, servers, a Kafka topic on the real broker)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from headrace import registry
from headrace.testing import OfframpPeer, OnrampPeer, offramp_contract, onramp_contract
from tests.support.daemon import free_port
from tests.support.mosquitto import Mosquitto
from tests.support.nats import NatsServer
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer
from tests.support.s3 import KEY_ID, SECRET, MotoServer, Proxy
from tests.testing import offramp_peers, onramp_peers

Options = Callable[[], dict[str, Any]]
OnrampCase = tuple[Options, OnrampPeer, dict[str, Any]]
OfframpCase = tuple[Options, OfframpPeer, dict[str, Any]]
Setup = Callable[[Path, pytest.FixtureRequest], list[Any]]


def _port() -> dict[str, Any]:
    return {"port": free_port()}


def _kafka_onramp(tmp: Path, request: pytest.FixtureRequest) -> list[OnrampCase]:
    broker = request.getfixturevalue("kafka_broker")
    peer = onramp_peers.KafkaRecords(broker)
    options = {"brokers": broker.bootstrap, "topics": [peer.topic], "group_id": f"contract-{uuid.uuid4().hex[:8]}",
               "commit_interval": "60s", "batch": 16, "session_timeout": "1s", "heartbeat_interval": "200ms"}  # fmt: skip
    # commits only at stop (a long interval): after the restart the group must read on after what stop committed;
    # a short session: the restarted member joins without waiting for the old one's session to end
    return [(lambda: options, peer, {"fail_every": 0, "timeout": 30.0})]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    s = NatsServer(tmp_path / "nats")
    try:
        yield s
    finally:
        s.stop()


def _nats_onramp(tmp: Path, request: pytest.FixtureRequest) -> list[OnrampCase]:
    server = request.getfixturevalue("nats_server")
    peer = onramp_peers.NatsMessages(server)
    options = {"servers": [server.url], "stream": peer.stream, "durable": "contract", "ack_wait": "1s"}
    return [(lambda: options, peer, {"fail_every": 0})]  # a failed message is delivered again after ack_wait


def _nats_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    server = request.getfixturevalue("nats_server")
    subject = f"contract.c{uuid.uuid4().hex[:10]}"
    return [(lambda: {"servers": [server.url], "subject": subject, "timeout": "1s"}, offramp_peers.NatsStream(server, subject), {"timeout": 30.0})]


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mqtt")
    try:
        yield b
    finally:
        b.stop()


def _mqtt_onramp(tmp: Path, request: pytest.FixtureRequest) -> list[OnrampCase]:
    broker = request.getfixturevalue("mqtt_broker")
    peer = onramp_peers.MqttMessages(broker)
    options = {"port": broker.port, "topics": [peer.topic], "client_id": f"contract-{uuid.uuid4().hex[:8]}"}
    return [(lambda: options, peer, {"fail_every": 0})]  # an unacknowledged message comes again only with a new session


def _mqtt_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    broker = request.getfixturevalue("mqtt_broker")
    topic = f"contract/{uuid.uuid4().hex[:10]}"
    return [(lambda: {"port": broker.port, "topic": topic, "timeout": "1s"}, offramp_peers.MqttTopic(broker, topic), {"timeout": 30.0})]


def _amqp_onramp(tmp: Path, request: pytest.FixtureRequest) -> list[OnrampCase]:
    broker = request.getfixturevalue("rabbitmq")  # the run's node (tests/support/fixtures.py): it boots in seconds
    peer = onramp_peers.AmqpMessages(broker)
    options = {"url": broker.url, "queue": peer.queue, "prefetch": 16, "batch": 8}
    return [(lambda: options, peer, {"fail_every": 0})]  # a failed message comes again only once its channel closes (the restart)


def _amqp_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    broker = request.getfixturevalue("rabbitmq")
    queue, proxy = f"contract-{uuid.uuid4().hex[:10]}", free_port()
    options = {"url": f"amqp://guest:guest@127.0.0.1:{proxy}/", "routing_key": queue, "timeout": "2s", "connect_timeout": "2s"}
    return [(lambda: options, offramp_peers.AmqpQueue(broker, queue, proxy), {"timeout": 30.0})]


def _redis_onramp(tmp: Path, request: pytest.FixtureRequest) -> list[OnrampCase]:
    server = request.getfixturevalue("redis_server")
    peer = onramp_peers.RedisEntries(server)
    options = {"url": server.url, "streams": [peer.stream], "group": "contract", "consumer": "c1", "block": "100ms"}
    return [(lambda: options, peer, {"fail_every": 0})]  # a failed entry stays pending and comes again after a restart


def _redis_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    server = request.getfixturevalue("redis_server")
    key = f"contract-{uuid.uuid4().hex[:10]}"
    return [(lambda: {"url": server.url, "key": key}, offramp_peers.RedisStream(server, key), {"timeout": 30.0})]


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    s = PostgresServer()
    try:
        yield s
    finally:
        s.remove()


def _postgres_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    server = request.getfixturevalue("postgres_server")
    copy, insert = (f"contract_{uuid.uuid4().hex[:10]}" for _ in range(2))
    return [(lambda: {"dsn": server.dsn, "table": copy, "connect_timeout": "2s"}, offramp_peers.PostgresTable(server, copy), {"timeout": 30.0}),
            (lambda: {"dsn": server.dsn, "table": insert, "on_conflict": "nothing", "connect_timeout": "2s"},
             offramp_peers.PostgresTable(server, insert), {"timeout": 30.0})]  # fmt: skip


ONRAMPS: dict[str, Setup] = {
    "file": lambda tmp, _: [
        (lambda: {"path": str(tmp / "in.ndjson")}, onramp_peers.FileLines(tmp / "in.ndjson"), {}),
        (lambda: {"path": str(tmp / "tail.ndjson"), "follow": True, "poll_interval": "20ms"}, onramp_peers.FileLines(tmp / "tail.ndjson"), {}),
    ],
    "stdin": lambda tmp, _: [(lambda: {}, onramp_peers.Stdin(tmp / "stdin.ndjson"), {})],
    "metronome": lambda tmp, _: [(lambda: {"interval": "5ms", "iters": 6}, onramp_peers.MadeByItself(6), {}),
                                 (lambda: {"interval": "5ms"}, onramp_peers.MadeByItself(4), {})],
    "blaster": lambda tmp, _: [
        (lambda: {"source": str(tmp / "b.ndjson"), "iters": 3, "batch": 7}, onramp_peers.FileLines(tmp / "b.ndjson", copies=3), {}),
        (lambda: {"source": str(tmp / "r.ndjson"), "batch": 6}, onramp_peers.Replayed(tmp / "r.ndjson"), {}),
    ],
    "kafka": _kafka_onramp,
    "tcp": lambda tmp, _: [(_port, onramp_peers.StreamClient(), {}), (lambda: {"mode": "client", **_port()}, onramp_peers.StreamServer(), {})],
    "unix": lambda tmp, _: [(lambda: {"path": str(tmp / "in.sock")}, onramp_peers.StreamClient(tmp / "in.sock"), {}),
                            (lambda: {"path": str(tmp / "up.sock"), "mode": "client"}, onramp_peers.StreamServer(tmp / "up.sock"), {})],
    "udp": lambda tmp, _: [(_port, onramp_peers.Datagrams(), {})],
    "http": lambda tmp, _: [(lambda: {"path": "/in", **_port()}, onramp_peers.HttpClient(), {})],
    "otlp": lambda tmp, _: [(_port, onramp_peers.OtlpClient(), {})],
    "redis": _redis_onramp,
    "nats": _nats_onramp,
    "mqtt": _mqtt_onramp,
    "amqp": _amqp_onramp,
}


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[MotoServer]:
    s = MotoServer(tmp_path / "moto")
    try:
        yield s
    finally:
        s.stop()


def _s3_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    server = request.getfixturevalue("moto_server")
    proxy = Proxy(server.port)
    peer = offramp_peers.S3Bucket(server, proxy)
    options = {"bucket": peer.bucket, "endpoint_url": proxy.url, "force_path_style": True, "access_key_id": KEY_ID,
               "secret_access_key": SECRET, "key": "c/{uuid}.gz", "timeout": "2s", "batch": {"timeout": "200ms"}}  # fmt: skip
    return [(lambda: options, peer, {"timeout": 30.0})]


def _kafka_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    broker = request.getfixturevalue("kafka_broker")
    peer = offramp_peers.KafkaTopic(broker)
    return [(lambda: {"brokers": broker.bootstrap, "topic": peer.topic, "key": "meta.get('kafka_key')"}, peer, {"timeout": 30.0})]


def _http_offramp(tmp: Path, request: pytest.FixtureRequest) -> list[OfframpCase]:
    port = free_port()
    fast = {"url": f"http://127.0.0.1:{port}/in", "retries": 1, "backoff_initial": "10ms", "timeout": "5s"}
    return [(lambda: fast, offramp_peers.HttpServer(), {}),
            (lambda: {**fast, "batch": False}, offramp_peers.HttpServer(), {"postprocessors": []})]  # fmt: skip


OFFRAMPS: dict[str, Setup] = {
    "stdout": lambda tmp, _: [(lambda: {}, offramp_peers.StdStream("stdout", tmp / "stdout.txt"), {})],
    "stderr": lambda tmp, _: [(lambda: {}, offramp_peers.StdStream("stderr", tmp / "stderr.txt"), {})],
    "file": lambda tmp, _: [
        (lambda: {"path": str(tmp / "plain" / "out.ndjson")}, offramp_peers.Folder(tmp / "plain"), {}),
        (lambda: {"path": str(tmp / "tpl" / "{meta.k}.ndjson")}, offramp_peers.Folder(tmp / "tpl"), {}),  # metas=None: every record to err
    ],
    "blackhole": lambda tmp, _: [(lambda: {"warmup_secs": 0, "stop_after_secs": 60, "stop_daemon": False}, OfframpPeer(), {})],
    "kafka": _kafka_offramp,
    "tcp": lambda tmp, _: [(_port, offramp_peers.LineServer(), {})],
    "unix": lambda tmp, _: [(lambda: {"path": str(tmp / "out.sock")}, offramp_peers.LineServer(tmp / "out.sock"), {})],
    "udp": lambda tmp, _: [(_port, offramp_peers.DatagramServer(), {}),
                           (lambda: {"max_datagram_bytes": 36, **_port()}, offramp_peers.DatagramServer(), {})],  # ids from 10 up: to err
    "http": _http_offramp,
    "redis": _redis_offramp,
    "nats": _nats_offramp,
    "mqtt": _mqtt_offramp,
    "postgres": _postgres_offramp,
    "s3": _s3_offramp,
    "amqp": _amqp_offramp,
}


KNOWN: dict[tuple[str, str, int], str] = {  # (kind, name, case) -> the contract it breaks, for the lead to fix
}


def _params(kind: registry.Kind, table: dict[str, Setup]) -> list[Any]:
    """(name, case) for every built-in, from the registry: one it has no cases for fails, naming it."""
    out = []
    for name in registry.BUILTINS[kind]:
        for k in range(CASES.get((kind, name), 1)):
            reason = KNOWN.get((kind, name, k))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(name, k, id=f"{name}-{k}", marks=marks))
    return out


CASES = {("onramps", "file"): 2, ("onramps", "metronome"): 2, ("onramps", "blaster"): 2, ("onramps", "tcp"): 2, ("onramps", "unix"): 2,
         ("offramps", "file"): 2, ("offramps", "http"): 2, ("offramps", "udp"): 2, ("offramps", "postgres"): 2}  # fmt: skip


@pytest.mark.parametrize(("name", "case"), _params("onramps", ONRAMPS))
def test_onramp_contract(name: str, case: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert name in ONRAMPS, f"add contract cases (options and a peer) for the built-in onramp '{name}' to ONRAMPS"
    cases = ONRAMPS[name](tmp_path, request)
    assert len(cases) == CASES.get(("onramps", name), 1), f"CASES must say how many cases '{name}' has"
    options, peer, kwargs = cases[case]
    onramp_contract(registry.load("onramps", name), options, peer, base_dir=tmp_path, **kwargs)


@pytest.mark.parametrize(("name", "case"), _params("offramps", OFFRAMPS))
def test_offramp_contract(name: str, case: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert name in OFFRAMPS, f"add contract cases (options and a peer) for the built-in offramp '{name}' to OFFRAMPS"
    cases = OFFRAMPS[name](tmp_path, request)
    assert len(cases) == CASES.get(("offramps", name), 1), f"CASES must say how many cases '{name}' has"
    options, peer, kwargs = cases[case]
    offramp_contract(registry.load("offramps", name), options, peer, base_dir=tmp_path, **kwargs)
