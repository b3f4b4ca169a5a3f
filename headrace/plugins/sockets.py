"""What the socket connectors share: per-connection framing, and the stream onramp
(server or client) and stream offramp (a client that reconnects) of ``tcp`` and ``unix``.

Backpressure: a connection's read loop awaits the sink, so while the graph is full the
socket is not read, the kernel buffers fill and the peer is slowed down by TCP itself.

Fair access: a connection with nothing to read for ``idle_timeout`` is closed, so idle or
half-open connections cannot hold every slot of ``max_connections`` for good. A TCP connection
over the cap is reset, not closed cleanly, so its client can tell it was refused (after a clean
close its first write would still succeed, and be lost); a unix socket has no reset, but there a
write after the close fails at once (EPIPE). Each refusal is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import struct
import termios
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import Field

from headrace.contract.backoff import Backoff
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.sink import Offramp, Rejections
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration, Size
from headrace.metrics.refusals import Refusals

log = logging.getLogger("headrace.plugins.sockets")

Meta = dict[str, Any]
Rejected = list[tuple[bytes, str]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SAMPLE = 1024  # bytes of a rejected record kept for the err port
CLOSE_GRACE = 5.0  # seconds a closed connection may take to hand over what it read
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST and drops what was unread


@runtime_checkable
class FramingSink(Protocol):
    """The runtime's ``OnrampSink`` with per-stream framing (``OnrampRunner``)."""

    async def chunk(self, data: bytes, meta: Meta | None = None) -> None: ...

    async def end_of_stream(self, meta: Meta | None = None) -> None: ...

    async def records(self, payloads: list[bytes], metas: Metas | None = None, ack: Any = None, group: Any = None) -> None: ...

    async def reject(self, rejected: Rejected, meta: Meta | None = None) -> None: ...

    def stream(self) -> FramingSink:
        """A sink with its own framing state, for one of several concurrent streams."""
        ...

    def frame(self, data: bytes) -> Iterator[tuple[list[bytes], Rejected]]:
        """Frame one whole message with fresh framing state, a step at a time (hand each on before taking the next)."""
        ...


def framing_sink(sink: OnrampSink) -> FramingSink:
    if not isinstance(sink, FramingSink):
        raise TypeError(f"{type(sink).__name__} offers no per-stream framing (stream/frame/reject); socket onramps need the runtime's sink")
    return sink


class StreamOnrampConfig(PluginConfig):
    mode: Literal["server", "client"] = Field("server", description="server: listen and accept connections; client: connect to a server")
    max_connections: int = Field(64, ge=1, description="server: connections beyond this many are reset at once (counted in "
                                 "headrace_onramp_refused_total{reason=\"max_connections\"} and logged)")
    read_size: Size = Field(64 * 1024, ge=1, description="bytes per socket read")
    connect_timeout: Duration = Field(5.0, gt=0, description="client: time allowed for one connection attempt")
    reconnect_max: Duration = Field(30.0, gt=0, description="client: longest wait between attempts (exponential backoff from 100ms)")
    idle_timeout: Duration | None = Field(300.0, gt=0, description="a connection with nothing to read for this long is closed, freeing "
                                          "its slot (client mode: and dialled again); null: never. A client that writes after the close "
                                          "gets an error, and TCP may lose what it wrote first: set it above your quietest client's pauses")


class StreamOnramp(Onramp):
    """A byte stream per connection, framed by the onramp's preprocessors (each connection its own)."""

    default_preprocessors = ("lines",)

    def __init__(self, config: StreamOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.stream_cfg = config
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[asyncio.Task[Any]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.sink: FramingSink | None = None
        self.sink_set = asyncio.Event()
        self.refused = Refusals(context.component_id, context.metrics, log)

    # -- transport ----------------------------------------------------------------------------
    def where(self) -> str:
        raise NotImplementedError

    async def listen(self, handler: Handler) -> asyncio.AbstractServer:
        raise NotImplementedError

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    def peer_meta(self, writer: asyncio.StreamWriter) -> Meta:
        raise NotImplementedError

    # -- intake -------------------------------------------------------------------------------
    async def start(self) -> None:
        """A server listens now: an address in use fails the start (naming this onramp). A client
        connects in ``run``, retrying: its server may come up later."""
        if self.stream_cfg.mode == "server" and self.server is None:
            self.server = await self.listen(self._accept)
            log.info("%s: listening on %s", self.context.component_id, self.where())

    async def run(self, sink: OnrampSink) -> None:
        fsink = framing_sink(sink)
        if self.stream_cfg.mode == "server":
            await self._serve(fsink)
        else:
            await self._dial(fsink)

    async def _pump(self, reader: asyncio.StreamReader, stream: FramingSink, meta: Meta) -> int:
        """Read until the peer closes; the partial last record is flushed then. Returns bytes read."""
        n = 0
        size, idle = self.stream_cfg.read_size, self.stream_cfg.idle_timeout
        try:
            while True:
                async with asyncio.timeout(idle):  # only the wait for data: not the wait for room in the graph
                    data = await reader.read(size)
                if not data:
                    break
                n += len(data)
                await stream.chunk(data, meta)
        except TimeoutError:
            self.refused("idle_timeout", f"closing connection {meta}: nothing to read for {idle:g}s (idle_timeout)")
        except OSError as exc:
            log.info("%s: connection %s ended: %s", self.context.component_id, meta, exc)
        await stream.end_of_stream(meta)
        return n

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        """Close so that the peer sees a refusal: RST on TCP (a unix socket fails the peer's next write by itself)."""
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.conns) >= self.stream_cfg.max_connections:
            self.refused("max_connections", f"reset a connection from {self.peer_meta(writer)}: {len(self.conns)} already open")
            self._reset(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self.conns.add(task)
        self.writers.add(writer)
        try:
            await self.sink_set.wait()  # a connection between start and run waits for the graph
            assert self.sink is not None
            await self._pump(reader, self.sink.stream(), self.peer_meta(writer))
        except asyncio.CancelledError:
            # the stop closes every connection: end here, since Python 3.11's stream server logs a
            # cancelled handler as an error with a traceback (its callback calls task.exception())
            return
        finally:
            self.conns.discard(task)
            self.writers.discard(writer)
            writer.close()

    async def _serve(self, sink: FramingSink) -> None:
        if self.server is None:
            await self.start()
        self.sink = sink
        self.sink_set.set()
        self.ready = True
        try:
            await asyncio.Event().wait()  # until the task is cancelled (stop)
        finally:
            await self._close_connections()

    async def _close_connections(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None  # a restart listens again
        for w in list(self.writers):
            w.close()  # the reader sees EOF: each handler flushes its framing and returns
        if self.conns:
            _, pending = await asyncio.wait(list(self.conns), timeout=CLOSE_GRACE)
            for t in pending:
                t.cancel()

    async def _dial(self, sink: FramingSink) -> None:
        cid = self.context.component_id
        backoff = Backoff(0.1, self.stream_cfg.reconnect_max)
        self.ready = True  # the daemon does not wait for a remote peer to be up
        while True:
            try:
                reader, writer = await asyncio.wait_for(self.connect(), self.stream_cfg.connect_timeout)
            except OSError as exc:
                delay = backoff.next()
                log.warning("%s: cannot connect to %s (%s); retrying in %.1fs", cid, self.where(), exc, delay)
                await asyncio.sleep(delay)
                continue
            log.info("%s: connected to %s", cid, self.where())
            self.writers.add(writer)
            try:
                got = await self._pump(reader, sink.stream(), self.peer_meta(writer))
            finally:
                self.writers.discard(writer)
                writer.close()
            if got:
                backoff.reset()
            delay = backoff.next()
            log.info("%s: %s closed the connection; reconnecting in %.1fs", cid, self.where(), delay)
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        await self._close_connections()


class StreamOfframpConfig(PluginConfig):
    connect_timeout: Duration = Field(5.0, gt=0, description="time allowed for one connection attempt")
    ack_timeout: Duration = Field(30.0, gt=0, description="longest time the peer may go without confirming a byte of a write "
                                  "(see the page's top) before the connection counts as dead and the write is retried on a new one")  # fmt: skip


def unconfirmed_bytes(sock: Any) -> int:
    """Bytes of the socket's send queue the peer has not confirmed (``SIOCOUTQ``): for TCP,
    not acknowledged by the peer's TCP; for a unix socket, not read by the peer process."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0])


def broken(writer: asyncio.StreamWriter) -> OSError | None:
    """The error of a connection the peer reset (or closed on unread data), else None.

    Read from the socket itself (``SO_ERROR``), not only from the transport: the kernel
    records the reset before it throws the send queue away, so a send queue seen empty and
    then no error here means the peer really confirmed every byte.
    """
    sock = writer.get_extra_info("socket")
    if writer.transport.is_closing() or sock is None or sock.fileno() < 0:
        return ConnectionResetError("the connection was closed")
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return OSError(code, os.strerror(code)) if code else None


class StreamOfframp(Offramp):
    """Writes chunks to one connection, opened on the first write and reopened after a failure.

    A write returns once the peer confirmed every byte (``unconfirmed_bytes`` is 0 and the
    connection was not reset). A failed connect, write or confirmation raises: the runtime
    retries the batch with its backoff on a new connection (at least once), and nothing is
    acked meanwhile. While a write waits for its confirmation, the batches queued behind it
    are joined into the next write (``coalesce_events``), so a peer's round trip is paid per
    write, not per batch.
    """

    default_postprocessors = ("lines",)
    coalesce_events = 4096

    def __init__(self, config: StreamOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.stream_cfg = config
        self.writer: asyncio.StreamWriter | None = None
        self.watch: asyncio.Task[None] | None = None  # reads (and discards) what the peer sends; ends when it closes

    def where(self) -> str:
        raise NotImplementedError

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    @staticmethod
    async def _watch(reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(64 * 1024):
                pass
        except OSError:
            pass

    def _alive(self) -> bool:
        return self.writer is not None and not self.writer.is_closing() and self.watch is not None and not self.watch.done()

    def _drop(self) -> None:
        if self.writer is not None:
            # abort (RST), not close: a peer that wakes up later must not get the bytes the retry sends again
            self.writer.transport.abort()
            self.writer = None
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None

    async def _connected(self) -> asyncio.StreamWriter:
        if self._alive():
            assert self.writer is not None
            return self.writer
        self._drop()  # the peer closed (or never was): a fresh connection
        try:
            reader, writer = await asyncio.wait_for(self.connect(), self.stream_cfg.connect_timeout)
        except OSError as exc:
            raise ConnectionError(f"{self.name} offramp {self.context.component_id}: cannot connect to {self.where()}: {exc}") from exc
        log.info("%s: connected to %s", self.context.component_id, self.where())
        self.writer = writer
        self.watch = asyncio.create_task(self._watch(reader))
        return writer

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        writer = await self._connected()
        try:
            writer.writelines(chunks)
            await writer.drain()  # waits while the peer does not read: backpressure
            await self._confirmed(writer)
        except OSError as exc:
            self._drop()
            raise ConnectionError(f"{self.name} offramp {self.context.component_id}: write to {self.where()} failed: {exc}") from exc
        return None

    async def _confirmed(self, writer: asyncio.StreamWriter) -> None:
        """Until the peer confirmed every byte written so far; raises if the connection broke
        first, or if the peer confirmed nothing for ``ack_timeout``."""
        loop = asyncio.get_running_loop()
        sock = writer.get_extra_info("socket")
        delay, last = 0.0, -1
        deadline = loop.time() + self.stream_cfg.ack_timeout
        while True:
            pending = writer.transport.get_write_buffer_size() + (unconfirmed_bytes(sock) if sock.fileno() >= 0 else 1)
            error = broken(writer)  # after reading the queue: a reset that emptied it shows here
            if error is not None:
                raise error
            if not pending:
                return
            if pending != last:  # progress: the peer is alive, only slow
                last, deadline = pending, loop.time() + self.stream_cfg.ack_timeout
            elif loop.time() > deadline:
                raise TimeoutError(f"the peer confirmed none of {pending} bytes for {self.stream_cfg.ack_timeout:g}s")
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.0005), 0.05)

    async def stop(self) -> None:
        writer = self.writer
        if writer is not None:
            try:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), CLOSE_GRACE)
            except (OSError, TimeoutError):
                pass
        self._drop()
