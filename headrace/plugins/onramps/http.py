"""``type: http``: an HTTP server; each POST body is one record, or several framed by the preprocessors.

The response is sent when the request's events are done (delivered by every offramp,
routed to err, or filtered): 200 with counts, or 500 if a delivery failed. While too
many events are still in flight the server answers 503 with ``Retry-After`` instead of
queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from pydantic import Field

from headrace.config.units import Duration, Size
from headrace.plugins.base import Onramp, OnrampSink, PluginConfig, PluginContext
from headrace.plugins.sockets import FramingSink, Meta, framing_sink

log = logging.getLogger("headrace.plugins.http")

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})  # kept out of events and dead letters
MAX_META_HEADERS = 32
MAX_HEADER_VALUE = 1024


class HttpOnrampConfig(PluginConfig):
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(ge=1, le=65535, description="port to listen on")
    path: str = Field("/", pattern=r"^/", description="URL path that accepts POST")
    max_body_bytes: Size = Field(16 * 2**20, ge=1, description="larger bodies get 413 without being read whole")
    max_pending_events: int = Field(65536, ge=1, description="events accepted but not yet done; beyond this, 503 with Retry-After")
    retry_after: int = Field(1, ge=0, description="seconds in the Retry-After header of a 503")
    batch_size: int = Field(512, ge=1, description="events per batch handed to the graph")
    ack_timeout: Duration = Field(
        60.0, gt=0, description="a request whose events are not done by then gets 504 (they may still be delivered)"
    )


class _Request:
    """The ack token of one request: resolved when all its batches are done."""

    __slots__ = ("done", "events", "failed", "parts")

    def __init__(self, events: int, parts: int) -> None:
        self.events = events
        self.parts = parts
        self.failed = False
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()


class HttpOnramp(Onramp):
    name = "http"
    Config = HttpOnrampConfig
    summary = "HTTP server: POST bodies become records; the response waits for delivery (200/500), 413 over the limit, 503 when full"
    default_preprocessors = ("lines",)
    example = "{type: http, codec: json, config: {port: 8080, path: /ingest}}"

    def __init__(self, config: HttpOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.pending = 0  # events handed to the graph and not yet done
        self.runner: web.AppRunner | None = None
        self.sink: FramingSink | None = None
        self.sink_set = asyncio.Event()

    async def start(self) -> None:
        """Listen now: a port in use fails the start (naming this onramp), not a later moment."""
        app = web.Application(client_max_size=self.cfg.max_body_bytes)
        app.router.add_post(self.cfg.path, self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.cfg.host, self.cfg.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._shutdown()
            raise
        log.info("%s: listening on http://%s:%d%s", self.context.component_id, self.cfg.host, self.cfg.port, self.cfg.path)

    async def run(self, sink: OnrampSink) -> None:
        self.sink = framing_sink(sink)
        if self.runner is None:  # run without start (the engine always starts first)
            await self.start()
        self.sink_set.set()
        self.ready = True
        try:
            await asyncio.Event().wait()  # until cancelled (stop)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.cleanup()  # stops accepting; in-flight requests get up to shutdown_timeout for their acks

    async def stop(self) -> None:
        await self._shutdown()

    @staticmethod
    def _error(status: int, message: str, **headers: str) -> web.Response:
        return web.json_response({"error": message}, status=status, headers=headers or None)

    async def _body(self, request: web.Request) -> bytes | None:
        """The body, or None as soon as it is known to exceed ``max_body_bytes``."""
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        buf = bytearray()
        while chunk := await request.content.read(64 * 1024):
            buf += chunk
            if len(buf) > limit:
                return None
        return bytes(buf)

    def _meta(self, request: web.Request) -> Meta:
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            name = k.lower()
            if name in SECRET_HEADERS or name in headers:
                continue
            if len(headers) >= MAX_META_HEADERS:
                break
            headers[name] = v[:MAX_HEADER_VALUE]
        return {"http_path": request.path, "http_method": request.method, "http_headers": headers}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await self.sink_set.wait()  # a request between start and run waits for the graph
        assert self.sink is not None
        if self.pending >= self.cfg.max_pending_events:
            busy = self._error(503, "too many events in flight; retry later", **{"Retry-After": str(self.cfg.retry_after)})
            busy.force_close()  # the body is not read
            return busy
        body = await self._body(request)
        if body is None:
            resp = self._error(413, f"body over max_body_bytes ({self.cfg.max_body_bytes})")
            resp.force_close()  # the rest of the body is not read
            return resp
        meta = self._meta(request)
        records, rejected = self.sink.frame(body) if body else ([], [])
        if rejected:
            await self.sink.reject(rejected, meta)
        n = len(records)
        if not n:
            return web.json_response({"events": 0, "rejected": len(rejected)})
        bs = self.cfg.batch_size
        token = _Request(n, (n + bs - 1) // bs)
        self.pending += n
        for start in range(0, n, bs):
            part = records[start : start + bs]
            await self.sink.records(part, [dict(meta) for _ in part], ack=token)
        try:
            ok = await asyncio.wait_for(asyncio.shield(token.done), self.cfg.ack_timeout)
        except TimeoutError:
            return self._error(504, f"events not done within {self.cfg.ack_timeout:g}s; they may still be delivered")
        if not ok:
            return self._error(500, "delivery failed", **{"Retry-After": str(self.cfg.retry_after)})
        return web.json_response({"events": n, "rejected": len(rejected)})

    def _part_done(self, token: _Request) -> None:
        token.parts -= 1
        if token.parts == 0:
            self.pending -= token.events
            if not token.done.done():
                token.done.set_result(not token.failed)

    def ack(self, token: Any) -> None:
        self._part_done(token)

    def fail(self, token: Any) -> None:
        token.failed = True
        self._part_done(token)
