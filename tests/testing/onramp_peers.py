"""Real peers for the onramp contract suite: files, standard input, clients, servers and a Kafka
topic, run on the suite's own event loop on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from headrace.testing import OnrampPeer
from headrace.testing.onramp_contract import Expected
from tests.support.kafka_broker import KafkaBroker


def lines(tag: str, n: int) -> list[bytes]:
    return [b'{"peer":"%s","n":%d}' % (tag.encode(), i) for i in range(n)]


def framed(records: list[bytes]) -> bytes:
    return b"".join(r + b"\n" for r in records)


class MadeByItself(OnrampPeer):
    """No peer: the onramp makes its records (a metronome); ``count`` of them per cycle."""

    def __init__(self, count: int) -> None:
        self.count = count

    async def prepare(self, config: Any) -> Expected:
        return self.count

    async def feed(self, config: Any, cycle: int) -> Expected:
        return self.count if cycle else 0


class FileLines(OnrampPeer):
    """A file of lines; a followed file gets more once the onramp is ready, and after a restart
    gives only what was added since (its checkpoint: it resumes after the last delivered line)."""

    def __init__(self, path: Path, copies: int = 1) -> None:
        self.path = path
        self.copies = copies  # a blaster replays the file this many times
        self.written: list[bytes] = []

    async def prepare(self, config: Any) -> Expected:
        self.written = lines("file", 20)
        self.path.write_bytes(framed(self.written))
        return self.written * self.copies

    async def feed(self, config: Any, cycle: int) -> Expected:
        if not getattr(config, "follow", False):
            return []
        more = lines(f"more{cycle}", 7)
        with self.path.open("ab") as f:
            f.write(framed(more))
        self.written += more
        return more


class Replayed(FileLines):
    """A blaster without iters replays forever: at least one pass per cycle."""

    async def prepare(self, config: Any) -> Expected:
        await super().prepare(config)
        return len(self.written)

    async def feed(self, config: Any, cycle: int) -> Expected:
        return len(self.written) if cycle else 0


class Stdin(OnrampPeer):
    """Standard input replaced by a file of lines (the onramp reads its file descriptor)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved: TextIO | None = None

    async def prepare(self, config: Any) -> Expected:
        records = lines("stdin", 30)
        self.path.write_bytes(framed(records))
        self.saved, sys.stdin = sys.stdin, self.path.open()
        return records

    async def close(self) -> None:
        if self.saved is not None:
            sys.stdin.close()
            sys.stdin, self.saved = self.saved, None


class StreamClient(OnrampPeer):
    """Connects to a server onramp (TCP or unix) and sends lines, over two connections."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    async def feed(self, config: Any, cycle: int) -> Expected:
        sent: list[bytes] = []
        for k in range(2):
            if self.path is not None:
                _, writer = await asyncio.open_unix_connection(str(self.path))
            else:
                _, writer = await asyncio.open_connection("127.0.0.1", config.port)
            records = lines(f"conn{cycle}.{k}", 25)
            writer.write(framed(records)[:-1])  # the last record unterminated: flushed when the connection ends
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            sent += records
        return sent


class StreamServer(OnrampPeer):
    """A server that a client onramp (TCP or unix) dials; it sends lines on the connection of each cycle."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.server: asyncio.AbstractServer | None = None
        self.connected: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.connected.put(writer)

    async def prepare(self, config: Any) -> Expected:
        if self.path is not None:
            self.server = await asyncio.start_unix_server(self._accept, path=str(self.path))
        else:
            self.server = await asyncio.start_server(self._accept, "127.0.0.1", config.port, reuse_address=True)
        return []

    async def feed(self, config: Any, cycle: int) -> Expected:
        writer = await asyncio.wait_for(self.connected.get(), 10)  # the connection of this cycle (a restart dials again)
        records = lines(f"dialled{cycle}", 30)
        writer.write(framed(records))
        await writer.drain()
        return records

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


class Datagrams(OnrampPeer):
    """Sends one record per datagram."""

    async def feed(self, config: Any, cycle: int) -> Expected:
        records = lines(f"udp{cycle}", 40)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for r in records:
                s.sendto(r, ("127.0.0.1", config.port))
                await asyncio.sleep(0)  # the onramp's queue takes them as they come
        return records


class HttpClient(OnrampPeer):
    """POSTs bodies of lines one after the other; each answer must say what became of its events:
    200 once they were acked, 500 once they were failed (the suite fails every second hand-over)."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def feed(self, config: Any, cycle: int) -> Expected:
        sent: list[bytes] = []
        async with aiohttp.ClientSession() as session:
            for k in range(4):
                records = lines(f"post{cycle}.{k}", 10)
                url = f"http://127.0.0.1:{config.port}{config.path}"
                async with session.post(url, data=framed(records)) as resp:
                    self.statuses.append(resp.status)
                sent += records
        assert set(self.statuses) == {200, 500}, f"each request is answered once its events are done (200) or failed (500): {self.statuses}"
        return sent


class OtlpClient(OnrampPeer):
    """POSTs OTLP protobuf log requests one after the other, like an exporter; each answer must say
    what became of its events: 200 once they were acked, 503 (which exporters retry) once failed."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def feed(self, config: Any, cycle: int) -> Expected:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        from headrace.plugins.onramps.otlp import PROTOBUF, events

        sent: list[bytes] = []
        async with aiohttp.ClientSession() as session:
            for k in range(4):
                req = ExportLogsServiceRequest()
                scope_logs = req.resource_logs.add().scope_logs.add()
                for record in lines(f"post{cycle}.{k}", 10):
                    scope_logs.log_records.add().body.string_value = record.decode()
                body = req.SerializeToString()
                async with session.post(f"http://127.0.0.1:{config.port}/v1/logs", data=body, headers={"Content-Type": PROTOBUF}) as resp:
                    self.statuses.append(resp.status)
                sent += events("logs", body, PROTOBUF)
        assert set(self.statuses) == {200, 503}, f"each request is answered once its events are done (200) or failed (503): {self.statuses}"
        return sent


class KafkaRecords(OnrampPeer):
    """Records in a topic of its own, before the onramp starts and once it is ready again; after the
    last cycle, the consumer group committed everything (nothing was failed)."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker
        self.topic = f"contract-{uuid.uuid4().hex[:10]}"
        self.produced = 0

    async def _produce(self, tag: str, n: int) -> list[bytes]:
        records = lines(tag, n)
        await self.broker.aproduce(self.topic, [(None, r) for r in records])
        self.produced += n
        return records

    async def prepare(self, config: Any) -> Expected:
        await self.broker.acreate_topic(self.topic, 2)
        return await self._produce("before", 30)

    async def feed(self, config: Any, cycle: int) -> Expected:
        return await self._produce(f"ready{cycle}", 10)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.broker.adelete_topic(self.topic)


class RedisEntries(OnrampPeer):
    """Entries of a stream of its own (field ``data``), before the onramp starts and once it is ready again."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.stream = f"contract-{uuid.uuid4().hex[:10]}"

    def _add(self, tag: str, n: int) -> list[bytes]:
        records = lines(tag, n)
        pipe = self.server.client().pipeline(transaction=False)
        for r in records:
            pipe.xadd(self.stream, {b"data": r})
        pipe.execute()
        return records

    async def prepare(self, config: Any) -> Expected:
        return self._add("before", 30)

    async def feed(self, config: Any, cycle: int) -> Expected:
        return self._add(f"ready{cycle}", 10)


class NatsMessages(OnrampPeer):
    """Messages in a JetStream stream of its own, before the onramp starts and once it is ready again."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.stream = f"C{uuid.uuid4().hex[:10]}"
        self.subject = f"contract.{self.stream}"

    async def _publish(self, tag: str, n: int) -> list[bytes]:
        import nats
        from nats.js.api import StorageType, StreamConfig

        records = lines(tag, n)
        nc = await nats.connect(self.server.url)
        js = nc.jetstream()
        try:
            await js.stream_info(self.stream)
        except Exception:
            await js.add_stream(StreamConfig(name=self.stream, subjects=[self.subject], storage=StorageType.FILE))
        await asyncio.gather(*(js.publish(self.subject, r) for r in records))
        await nc.close()
        return records

    async def prepare(self, config: Any) -> Expected:
        return await self._publish("before", 30)

    async def feed(self, config: Any, cycle: int) -> Expected:
        return await self._publish(f"ready{cycle}", 10)


class MqttMessages(OnrampPeer):
    """QoS 1 messages on a topic of its own, published once the onramp is ready (its session subscribed)."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.topic = f"contract/{uuid.uuid4().hex[:10]}"

    def _publish(self, tag: str, n: int) -> list[bytes]:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        records = lines(tag, n)
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-{uuid.uuid4().hex[:8]}")
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        for info in [c.publish(self.topic, r, qos=1) for r in records]:
            info.wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        return records

    async def feed(self, config: Any, cycle: int) -> Expected:  # ready means subscribed: the session holds what is published now
        return await asyncio.get_running_loop().run_in_executor(None, self._publish, f"ready{cycle}", 10)


class AmqpMessages(OnrampPeer):
    """Persistent messages in a durable queue of its own, before the onramp starts and once it is ready again."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.queue = f"contract-{uuid.uuid4().hex[:10]}"

    async def _publish(self, tag: str, n: int) -> list[bytes]:
        from tests.support.rabbitmq import preload

        records = lines(tag, n)
        await asyncio.get_running_loop().run_in_executor(None, preload, self.broker.port, self.queue, records)
        return records

    async def prepare(self, config: Any) -> Expected:
        return await self._publish("before", 30)

    async def feed(self, config: Any, cycle: int) -> Expected:
        return await self._publish(f"ready{cycle}", 10)
