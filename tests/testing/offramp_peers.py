"""Real peers for the offramp contract suite: standard streams, folders, servers and a Kafka topic,
run on the suite's own event loop on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from aiohttp import web

from headrace.testing import OfframpPeer
from tests.support.kafka_broker import KafkaBroker


class StdStream(OfframpPeer):
    """Standard output (or error) replaced by a file; taken down as a pipe whose reader went away."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.saved: TextIO | None = None

    def _swap(self, stream: TextIO) -> None:
        old = getattr(sys, self.name)
        if self.saved is None:
            self.saved = old
        else:
            old.close()
        setattr(sys, self.name, stream)

    async def prepare(self, config: Any) -> None:
        self._swap(self.path.open("a"))

    async def received(self) -> list[bytes] | None:
        return self.path.read_bytes().splitlines()

    async def fail(self) -> bool:
        read, write = socket.socketpair()
        read.close()  # the reader went away (| head)
        self._swap(write.makefile("w"))
        write.close()  # the file object keeps its own reference
        return True

    async def recover(self) -> None:
        self._swap(self.path.open("a"))

    async def close(self) -> None:
        if self.saved is not None:
            getattr(sys, self.name).close()
            setattr(sys, self.name, self.saved)
            self.saved = None


class Folder(OfframpPeer):
    """The files an offramp writes, under one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def received(self) -> list[bytes] | None:
        return [line for f in sorted(self.folder.rglob("*")) if f.is_file() for line in f.read_bytes().splitlines()]


class LineServer(OfframpPeer):
    """A TCP or unix server collecting lines; taken down with its connections, back on the same address."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.port = 0
        self.lines: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while line := await reader.readline():
                if line.endswith(b"\n"):
                    self.lines.append(line[:-1])
        except OSError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _listen(self) -> None:
        if self.path is not None:
            self.server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        else:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def prepare(self, config: Any) -> None:
        self.port = getattr(config, "port", 0)
        await self._listen()

    async def received(self) -> list[bytes] | None:
        return list(self.lines)

    async def fail(self) -> bool:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        return True

    async def recover(self) -> None:
        await self._listen()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.transport.abort()


class _Collect(asyncio.DatagramProtocol):
    def __init__(self, got: list[bytes]) -> None:
        self.got = got

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)


class DatagramServer(OfframpPeer):
    """Receives datagrams. It is not taken down: UDP confirms nothing, and the ICMP "port unreachable" that
    fails a later send may arrive after a write returned (when the kernel defers it), which the offramp's
    own definition of confirmed allows."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.port = 0
        self.transport: asyncio.DatagramTransport | None = None

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: _Collect(self.got), local_addr=("127.0.0.1", self.port))

    async def prepare(self, config: Any) -> None:
        self.port = config.port
        await self._bind()

    async def received(self) -> list[bytes] | None:
        return list(self.got)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class HttpServer(OfframpPeer):
    """Records the bodies it answers with 200; taken down, it answers 503 (and keeps nothing)."""

    def __init__(self) -> None:
        self.accepted: list[bytes] = []
        self.up = True
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not self.up:
            return web.Response(status=503, text="down")
        self.accepted.append(body)
        return web.Response(text="ok")

    async def prepare(self, config: Any) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", int(config.url.rsplit(":", 1)[1].split("/")[0])).start()

    async def received(self) -> list[bytes] | None:
        return [line for body in self.accepted for line in body.splitlines() if line]

    async def fail(self) -> bool:
        self.up = False
        return True

    async def recover(self) -> None:
        self.up = True

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class KafkaTopic(OfframpPeer):
    """A topic of its own, read from its start by a consumer of the peer's."""

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker
        self.topic = f"contract-{uuid.uuid4().hex[:10]}"
        self.got: list[bytes] = []
        self.consumer: Any = None

    async def prepare(self, config: Any) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        await self.broker.acreate_topic(self.topic, 2)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=None, enable_auto_commit=False,
                                         auto_offset_reset="earliest")  # fmt: skip
        await self.consumer.start()
        parts = [TopicPartition(self.topic, p) for p in (0, 1)]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)

    async def received(self) -> list[bytes] | None:
        batches = await self.consumer.getmany(timeout_ms=100)
        self.got += [m.value for msgs in batches.values() for m in msgs]
        return list(self.got)

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
        with contextlib.suppress(Exception):
            await self.broker.adelete_topic(self.topic)


class RedisStream(OfframpPeer):
    """A stream of its own, read whole (XRANGE); taken down by stopping the server."""

    def __init__(self, server: Any, key: str) -> None:
        self.server = server
        self.key = key

    async def received(self) -> list[bytes] | None:
        return [fields[b"data"] for _, fields in self.server.client().xrange(self.key)]

    async def fail(self) -> bool:
        self.server.stop()
        return True

    async def recover(self) -> None:
        self.server.start()


class NatsStream(OfframpPeer):
    """A JetStream stream of its own, read whole; taken down by stopping the server."""

    def __init__(self, server: Any, subject: str) -> None:
        self.server = server
        self.subject = subject
        self.stream = subject.replace(".", "_").upper()

    async def prepare(self, config: Any) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig

        nc = await nats.connect(self.server.url)
        await nc.jetstream().add_stream(StreamConfig(name=self.stream, subjects=[self.subject], storage=StorageType.FILE))
        await nc.close()

    async def received(self) -> list[bytes] | None:
        import nats

        nc = await nats.connect(self.server.url, max_reconnect_attempts=1, connect_timeout=2)
        try:
            js = nc.jetstream()
            info = await js.stream_info(self.stream)
            if not info.state.messages:
                return []
            return [(await js.get_msg(self.stream, seq)).data for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        finally:
            await nc.close()

    async def fail(self) -> bool:
        self.server.stop()
        return True

    async def recover(self) -> None:
        self.server.start()


class MqttTopic(OfframpPeer):
    """A QoS 1 subscriber with a session of its own on a topic of its own; taken down by stopping the broker."""

    def __init__(self, broker: Any, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.got: list[bytes] = []
        self.client: Any = None

    async def prepare(self, config: Any) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-{uuid.uuid4().hex[:8]}", clean_session=False)
        c.on_message = lambda _c, _u, m: self.got.append(m.payload)
        c.on_connect = lambda cl, *a: cl.subscribe(self.topic, qos=1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.reconnect_delay_set(1, 1)
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        self.client = c
        await asyncio.get_running_loop().run_in_executor(None, subscribed.wait, 10)

    async def received(self) -> list[bytes] | None:
        return list(self.got)

    async def fail(self) -> bool:
        self.broker.stop()
        return True

    async def recover(self) -> None:
        self.broker.start()

    async def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


class PostgresTable(OfframpPeer):
    """A table of its own (the sample records' fields as columns), read whole; taken down by stopping the server."""

    def __init__(self, server: Any, table: str) -> None:
        self.server = server
        self.table = table

    async def prepare(self, config: Any) -> None:
        await self.server.afetch(f"CREATE TABLE {self.table} (id int, text text, v float8)")

    async def received(self) -> list[bytes] | None:
        import orjson

        return [orjson.dumps(dict(r)) for r in await self.server.afetch(f"SELECT id, text, v FROM {self.table}")]

    async def fail(self) -> bool:
        self.server.stop()
        return True

    async def recover(self) -> None:
        self.server.start()


class S3Bucket(OfframpPeer):
    """A bucket of its own on a moto server, reached through a TCP proxy; taken down by the proxy
    refusing connections (moto keeps its buckets in memory: a restart would lose them)."""

    def __init__(self, server: Any, proxy: Any) -> None:
        self.server = server
        self.proxy = proxy
        self.bucket = f"contract-{uuid.uuid4().hex[:10]}"

    async def prepare(self, config: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.server.bucket, self.bucket)

    async def received(self) -> list[bytes] | None:
        return await asyncio.get_running_loop().run_in_executor(None, self.server.lines, self.bucket)

    async def fail(self) -> bool:
        self.proxy.down()
        return True

    async def recover(self) -> None:
        self.proxy.up()

    async def close(self) -> None:
        self.proxy.close()


class AmqpQueue(OfframpPeer):
    """A durable queue of its own, consumed (and acknowledged) as messages come; the offramp reaches the broker
    through a TCP proxy of the peer's, taken down (listener closed, connections cut) and brought back."""

    def __init__(self, broker: Any, queue: str, proxy_port: int) -> None:
        self.broker = broker
        self.queue = queue
        self.proxy_port = proxy_port
        self.got: list[bytes] = []
        self.conn: Any = None
        self.proxy: asyncio.AbstractServer | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker.port)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.links -= {writer, up_writer}

    async def _listen(self) -> None:
        self.proxy = await asyncio.start_server(self._link, "127.0.0.1", self.proxy_port, reuse_address=True)

    async def prepare(self, config: Any) -> None:
        import aio_pika

        self.conn = await aio_pika.connect(self.broker.url)
        channel = await self.conn.channel()
        queue = await channel.declare_queue(self.queue, durable=True)

        async def take(message: Any) -> None:
            self.got.append(message.body)
            await message.ack()

        await queue.consume(take)
        await self._listen()

    async def received(self) -> list[bytes] | None:
        return list(self.got)

    async def fail(self) -> bool:
        assert self.proxy is not None
        self.proxy.close()
        for w in list(self.links):
            w.transport.abort()
        await self.proxy.wait_closed()
        return True

    async def recover(self) -> None:
        await self._listen()

    async def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        for w in list(self.links):
            w.transport.abort()
        if self.conn is not None:
            await self.conn.close()
