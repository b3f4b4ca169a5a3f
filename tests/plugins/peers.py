"""Real peers for the connector tests: asyncio servers run on a loop in a background thread
next to the daemon subprocess, so the test itself can block (wait, read files) meanwhile."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from tests.support.daemon import json_lines  # noqa: F401  (re-exported for the connector tests)

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-peer-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def wait_connectable(port: int | None = None, path: Path | None = None, timeout: float = 15) -> None:
    """Until the daemon's server accepts connections (TCP port or unix socket path)."""

    def ok() -> bool:
        family = socket.AF_UNIX if path is not None else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path) if path is not None else ("127.0.0.1", port))
            except OSError:
                return False
            return True

    wait_until(ok, timeout, f"a listener on {path or port}")


def wait_ready(metrics_port: int, timeout: float = 15) -> None:
    """Until the daemon answers ``/ready`` (its socket onramps accept connections), without
    connecting to them: a probe connection would hold one of their ``max_connections`` until the
    onramp has read its end, which a test counting slots races with."""
    import urllib.error
    import urllib.request

    def ok() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/ready", timeout=2).status == 200  # type: ignore[no-any-return]
        except (urllib.error.URLError, OSError):
            return False

    wait_until(ok, timeout, f"/ready on {metrics_port}")


class LineServer:
    """A newline-framed TCP or unix stream server collecting what it receives; stop/start keep the address."""

    def __init__(self, lt: LoopThread, port: int | None = None, path: Path | None = None) -> None:
        self.lt = lt
        self.port = port
        self.path = path
        self.lines: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        try:
            while line := await reader.readline():
                self.lines.append(line.rstrip(b"\n"))
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _start(self) -> None:
        if self.path is not None:
            self.server = await asyncio.start_unix_server(self._handle, path=str(self.path))
        else:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.close()
        await asyncio.sleep(0.05)
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def start(self) -> LineServer:
        self.lt.run(self._start())
        return self

    def stop(self) -> None:
        self.lt.run(self._stop())

    def records(self) -> list[Any]:
        return [json.loads(x) for x in list(self.lines) if x]


Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


class HttpSink:
    """An aiohttp server recording every request body; ``respond`` decides each answer."""

    def __init__(self, lt: LoopThread, port: int, respond: Handler | None = None) -> None:
        self.lt = lt
        self.port = port
        self.respond = respond
        self.requests: list[tuple[str, dict[str, str], bytes]] = []  # (method, headers, body) of every request
        self.accepted: list[bytes] = []  # bodies answered with 2xx
        self.runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, dict(request.headers), body))
        resp = await self.respond(request, body) if self.respond else web.Response(text="ok")
        if resp.status < 300:
            self.accepted.append(body)
        return resp

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def start(self) -> HttpSink:
        self.lt.run(self._start())
        return self

    def stop(self) -> None:
        if self.runner is not None:
            self.lt.run(self.runner.cleanup())

    def accepted_records(self) -> list[Any]:
        return [json.loads(x) for body in list(self.accepted) for x in body.splitlines() if x.strip()]
