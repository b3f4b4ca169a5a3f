"""The amqp onramp (a queue consumer with manual acks, acked once done) and offramp (publisher
confirms, persistent) against a real RabbitMQ, the node of the run (issue 18)."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
import uuid
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, free_port, ids_written, json_lines, lines_written, metric
from tests.support.rabbitmq import RabbitMQ, preload

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(rabbitmq: RabbitMQ) -> RabbitMQ:
    return rabbitmq  # the run's node (tests/support/fixtures.py): it boots in 5-8 s; each test names its own queues


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _declare(url: str, *queues: str, exchange: str = "", bind: str = "#") -> None:
    """Durable queues, bound to ``exchange`` (a durable topic exchange, declared here) with ``bind`` when one is named."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        ex = await ch.declare_exchange(exchange, "topic", durable=True) if exchange else None
        for q in queues:
            declared = await ch.declare_queue(q, durable=True)
            if ex is not None:
                await declared.bind(ex, bind)
    finally:
        await conn.close()


async def _ready_count(url: str, queue: str) -> int:
    """Messages of ``queue`` ready to be delivered (the broker's count; not those delivered and unacknowledged)."""
    import aio_pika

    conn = await aio_pika.connect(url, timeout=5)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, durable=True, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


def ready_count(url: str, queue: str) -> int:
    try:
        return asyncio.run(_ready_count(url, queue))
    except Exception:  # the broker is away: nothing countable yet
        return -1


async def _drain(url: str, queue: str) -> list[bytes]:
    """Everything ``queue`` holds, consumed and acknowledged (the broker's own view of what was sent)."""
    import aio_pika

    conn = await aio_pika.connect(url)
    got: list[bytes] = []
    try:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=2000)
        q = await ch.declare_queue(queue, durable=True, passive=True)
        expected = int(q.declaration_result.message_count or 0)
        if not expected:
            return got
        async with q.iterator() as it:
            async for m in it:
                got.append(m.body)
                await m.ack()
                if len(got) >= expected:
                    break
    finally:
        await conn.close()
    return got


def _ids(path: Path) -> list[int]:
    return ids_written(path)  # complete lines only: the daemon may be writing the last one


@pytest.mark.slow
def test_a_sigkill_in_the_middle_loses_no_message_and_a_malformed_one_goes_to_err(tmp_path: Path, broker: RabbitMQ) -> None:
    n, prefetch = 50_000, 4096
    queue = _name("events")
    preload(broker.port, queue, [json.dumps({"id": i}).encode() for i in range(n)] + [b"{not json"])
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: amqp, codec: json, config: {{url: "{broker.url}", queue: {queue}, prefetch: {prefetch}}}}}}}
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
        # a line count first (cheap): parsing the 50,000 lines every 50 ms took a core from the daemon
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n and set(_ids(tmp_path / "out.ndjson")) == set(range(n))
                   and len(json_lines(tmp_path / "err.ndjson")) == 1, timeout=120)  # fmt: skip
    finally:
        assert d.stop() == 0, d.stderr()
    assert ready_count(broker.url, queue) == 0, "every message acknowledged: none left in the queue after the drain"
    ids = _ids(tmp_path / "out.ndjson")
    assert sorted(set(ids)) == list(range(n)), "every message delivered"
    assert len(ids) - n <= prefetch, "duplicates: at most what was unacknowledged at the kill (prefetch)"
    (err,) = json_lines(tmp_path / "err.ndjson")
    assert "invalid JSON" in err["meta"]["error"]["message"], err
    assert err["meta"]["amqp_routing_key"] == queue and err["meta"]["amqp_exchange"] == ""


def test_a_queue_that_does_not_exist_is_named_and_nothing_is_read(tmp_path: Path, broker: RabbitMQ) -> None:
    """Without declare: true the queue must exist: the source fails with the reason (and is restarted), reading nothing."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}, start_timeout: 60s}}
onramps: {{src: {{type: amqp, codec: json, config: {{url: "{broker.url}", queue: nowhere-{uuid.uuid4().hex[:6]}}}}}}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: "does not exist" in d.stderr() and "set declare: true" in d.stderr(), timeout=30)
    finally:
        d.stop()
    assert "guest:guest" not in d.stderr(), "the URL's credentials are never logged"
    assert not (tmp_path / "out.ndjson").exists() or not _ids(tmp_path / "out.ndjson")


@pytest.mark.slow
def test_the_broker_away_for_10s_loses_nothing_in_either_direction(tmp_path: Path, broker: RabbitMQ) -> None:
    """A file -> amqp offramp flow and an amqp onramp -> file flow in one daemon; the broker stops for 10 s
    under both: the offramp's state shows retrying then ok and the queue holds every record (consumed with
    aio-pika); the onramp reconnects and delivers what was published before and after."""
    n = 20_000
    out_q, in_q = _name("out"), _name("in")
    asyncio.run(_declare(broker.url, out_q))
    preload(broker.port, in_q, [json.dumps({"id": i}).encode() for i in range(1000)])
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(2000)))
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps:
  file: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}
  queue: {{type: amqp, codec: json, config: {{url: "{broker.url}", queue: {in_q}}}}}
offramps:
  out: {{type: amqp, codec: json, retry: {{max_backoff: 1s}}, config: {{url: "{broker.url}", routing_key: {out_q}, timeout: 2s, connect_timeout: 2s}}}}
  got: {{type: file, codec: json, config: {{path: got.ndjson}}}}
links: {{file: [out], queue: [got]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: ready_count(broker.url, out_q) >= 2000 and set(_ids(tmp_path / "got.ndjson")) == set(range(1000)), timeout=30)
        broker.stop()
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write("".join(json.dumps({"id": i}) + "\n" for i in range(2000, n)))
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="retrying"}') == 1, timeout=30)
        down = threading.Event()
        threading.Timer(10.0, down.set).start()
        d.wait_for(down.is_set, timeout=20)  # the broker stays down 10 s
        broker.start()
        preload(broker.port, in_q, [json.dumps({"id": i}).encode() for i in range(1000, 2000)])
        d.wait_for(lambda: metric(port, 'headrace_offramp_state{offramp="out",state="ok"}') == 1 and ready_count(broker.url, out_q) >= n
                   and set(_ids(tmp_path / "got.ndjson")) == set(range(2000)), timeout=90)  # fmt: skip
    finally:
        assert d.stop() == 0, d.stderr()
    ids = [json.loads(p)["id"] for p in asyncio.run(_drain(broker.url, out_q))]
    assert sorted(set(ids)) == list(range(n)), "the queue holds every record sent"
    assert "reconnecting in" in d.stderr() and "consuming" in d.stderr(), "the onramp said it lost the broker and came back"
    assert "Traceback" not in d.stderr() and "restarting it in" not in d.stderr()


def test_routing_keys_from_meta_and_unroutable_records_on_err(tmp_path: Path, broker: RabbitMQ) -> None:
    """Each record's routing key from its meta: the bound queues hold theirs exactly (in order, once); a record
    no queue takes goes to err with the reason and the key, and is not retried."""
    a, b = _name("a"), _name("b")
    asyncio.run(_declare(broker.url, a, b))  # the default exchange routes by queue name
    records = [{"id": i, "to": [a, b, "nowhere"][i % 3]} for i in range(300)]
    (tmp_path / "in.ndjson").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
pipelines: {{main: [{{op: set, set: {{meta.rk: "event['to']"}}}}]}}
offramps:
  out: {{type: amqp, codec: json, config: {{url: "{broker.url}", routing_key: unused, routing_key_from_meta: rk}}}}
  bad: {{type: file, codec: json, with_meta: true, config: {{path: err.ndjson}}}}
links: {{src: [main], main: [out], out/err: [bad]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    got_a = [json.loads(p)["id"] for p in asyncio.run(_drain(broker.url, a))]
    got_b = [json.loads(p)["id"] for p in asyncio.run(_drain(broker.url, b))]
    assert got_a == list(range(0, 300, 3)) and got_b == list(range(1, 300, 3)), "each bound queue holds its records, in order, once"
    errs = json_lines(tmp_path / "err.ndjson")
    assert sorted(e["event"]["id"] for e in errs) == list(range(2, 300, 3)), "every unroutable record on err, once"
    assert all("unroutable" in e["meta"]["error"]["message"] and "'nowhere'" in e["meta"]["error"]["message"] for e in errs), errs[0]


def test_the_example_config_routes_jobs_by_priority(tmp_path: Path, broker: RabbitMQ) -> None:
    """examples/amqp.yaml against the real broker: urgent and normal jobs reach the queues bound for them,
    pings are dropped, a job that is not JSON lands in the dead letters with its reason."""
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(ROOT / "examples" / "amqp.yaml", folder / "amqp.yaml")
    jobs, exchange, urgent, normal = _name("jobs"), _name("routed"), _name("urgent"), _name("normal")
    asyncio.run(_declare(broker.url, urgent, exchange=exchange, bind="jobs.urgent"))
    asyncio.run(_declare(broker.url, normal, exchange=exchange, bind="jobs.normal"))
    payloads = [json.dumps({"id": i, "kind": "ping" if i % 10 == 0 else "build", "priority": i % 7}).encode() for i in range(200)]
    preload(broker.port, jobs, [*payloads, b"not json"])
    env = {"AMQP_URL": broker.url, "AMQP_QUEUE": jobs, "AMQP_EXCHANGE": exchange, "HEADRACE_METRICS_PORT": str(free_port())}
    d = Daemon(folder / "amqp.yaml", env=env)
    dead = folder / "amqp" / "out" / "deadletter.ndjson"
    want = [p for p in map(json.loads, payloads) if p["kind"] != "ping"]
    try:
        d.wait_for(lambda: ready_count(broker.url, urgent) + ready_count(broker.url, normal) == len(want) and len(json_lines(dead)) == 1,
                   timeout=60)  # fmt: skip
    finally:
        assert d.stop() == 0, d.stderr()
    got_urgent = [json.loads(p)["id"] for p in asyncio.run(_drain(broker.url, urgent))]
    got_normal = [json.loads(p)["id"] for p in asyncio.run(_drain(broker.url, normal))]
    assert got_urgent == [p["id"] for p in want if p["priority"] >= 5]
    assert got_normal == [p["id"] for p in want if p["priority"] < 5]
    (letter,) = json_lines(dead)
    assert "invalid JSON" in letter["meta"]["error"]["message"] and letter["meta"]["amqp_routing_key"] == jobs


def test_an_exchange_that_does_not_exist_fails_the_write_with_the_reason_and_a_bad_url_is_refused_by_check(tmp_path: Path,
                                                                                                          broker: RabbitMQ) -> None:  # fmt: skip
    """Without exchange_type the exchange must exist: a write fails (retried by the runtime, nothing acknowledged)
    naming it; with exchange_type it is declared and the write goes through. A URL that is not amqp(s):// is a
    config error before anything starts."""
    from headrace.contract.context import PluginContext
    from headrace.plugins.offramps.amqp import AmqpOfframp, AmqpOfframpConfig

    async def attempt(**extra: str) -> None:
        cfg = AmqpOfframpConfig.model_validate({"url": broker.url, "exchange": "missing-ex", "routing_key": "k", "mandatory": False, **extra})
        off = AmqpOfframp(cfg, PluginContext("out", tmp_path))
        await off.start()
        try:
            await off.write([b"{}"], 1, [0], None)
        finally:
            await off.stop()

    with pytest.raises(ConnectionError, match=r"the exchange 'missing-ex' does not exist .*set exchange_type"):
        asyncio.run(attempt())
    asyncio.run(attempt(exchange_type="fanout"))  # declared now: confirmed (mandatory: false, nothing bound)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("""
version: 1
onramps: {src: {type: amqp, config: {url: "http://127.0.0.1:5672/", queue: q}}}
offramps: {out: {type: stdout}}
links: {src: [out]}
""")
    from tests.support.daemon import headrace

    res = headrace("check", str(cfg))
    assert res.returncode == 78 and b"url" in res.stdout + res.stderr, res


class _Collect:
    """An onramp's sink keeping each hand-over's records and ack token."""

    def __init__(self) -> None:
        self.got: list[tuple[list[bytes], object]] = []

    async def records(self, payloads: list[bytes], metas: object = None, ack: object = None, **_: object) -> None:
        self.got.append((payloads, ack))


def test_acks_out_of_order_never_cover_a_message_not_done_and_a_failed_one_comes_again(tmp_path: Path, broker: RabbitMQ) -> None:
    """Hand-overs completed last first, the third failed: the broker keeps exactly the failed one's messages
    (an ack covering them, or one the broker refuses, would leave another count)."""
    from headrace.contract.context import PluginContext
    from headrace.plugins.onramps.amqp import AmqpOnramp, AmqpOnrampConfig

    queue = _name("acks")
    preload(broker.port, queue, [b'{"n": %d}' % i for i in range(40)])

    async def scenario() -> list[bytes]:
        cfg = AmqpOnrampConfig.model_validate({"url": broker.url, "queue": queue, "batch": 5, "prefetch": 100})
        onramp, sink = AmqpOnramp(cfg, PluginContext("src", tmp_path)), _Collect()
        await onramp.start()
        run = asyncio.ensure_future(onramp.run(sink))  # type: ignore[arg-type]
        deadline = asyncio.get_running_loop().time() + 20
        while sum(len(p) for p, _ in sink.got) < 40:
            assert asyncio.get_running_loop().time() < deadline, sink.got
            await asyncio.sleep(0.01)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        assert len(sink.got) >= 8, "hand-overs of at most 5"
        failed = sink.got[2]
        for _payloads, token in reversed(sink.got):
            (onramp.fail if token is failed[1] else onramp.ack)(token)
        await onramp.stop()
        return failed[0]

    failed = asyncio.run(scenario())
    assert sorted(asyncio.run(_drain(broker.url, queue))) == sorted(failed), "only the failed hand-over's messages are left, each once"
