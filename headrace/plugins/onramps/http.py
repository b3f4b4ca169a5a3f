"""``type: http``: an HTTP server; each POST body is one record, or several framed by the preprocessors.

The response is sent when the request's events are done (delivered by every offramp,
routed to err, or filtered): 200 with counts, or 500 if a delivery failed. While too
many events are still in flight the server answers 503 with ``Retry-After`` instead of
queueing without bound.

Memory, connections and time are bounded, whatever the clients do:

- at most ``max_connections`` connections are open; more are answered 503 and closed;
- request bodies held in memory (read, not yet handed to the graph) take at most
  ``max_inflight_bytes`` together (one body is always admitted); a request that would
  exceed it gets 503 with ``Retry-After`` (the ``headrace_component_buffered_bytes`` gauge
  shows them); a body over ``max_body_bytes`` gets 413 without being read whole;
- one body is framed (and decompressed) at a time, a step at a time, each step handed to
  the graph before the next is made: many compressed bodies cost one step of memory, not
  ``max_message_bytes`` each;
- a client must send a request's headers within ``header_timeout`` (of connecting, or of
  its previous response) and its body within ``body_timeout``, else the connection is
  closed (a slow body gets 408 first).

Each refusal is counted in ``headrace_onramp_refused_total`` by reason and logged (at most
one line per 10 s).

Stopping (shutdown, or a reload that removes or changes the onramp): no new connection is
accepted, idle keep-alive connections are closed at once, and a request in flight is
answered when its events are done (up to 5 s), then its connection is closed.

Browsers: a web page's script can POST to any address the browser reaches, including
this onramp on 127.0.0.1, and browsers send ``Origin`` with every cross-origin POST (tools
such as curl and client libraries do not). A request with an ``Origin`` header is refused
with 403 unless the origin is in ``allowed_origins``.

TLS (``tls: {cert, key, ca, client_auth}``) makes it an HTTPS server (with ``client_auth``,
mutual TLS; the verified client's common name is in the meta as ``tls_client_cn``).
``auth: {type: bearer, token}`` or ``auth: {type: basic, user, password}`` (secrets from
``${VAR}``) answers 401 with ``WWW-Authenticate`` to a request without the credentials (compared
in constant time), before its body is read: nothing of it enters the graph. Without TLS the
credentials cross the network in clear text: bind to loopback, or set ``tls``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import ssl
from typing import Any, ClassVar, Literal

from aiohttp import ClientPayloadError, web
from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.paths import SettingError
from headrace.contract.source import Onramp, OnrampSink
from headrace.contract.units import Duration, Size
from headrace.metrics.defs import Tally
from headrace.metrics.refusals import Refusals
from headrace.plugins.onramps.http_server import CappedServer, busy_answer, listen
from headrace.plugins.sockets import FramingSink, Meta, framing_sink
from headrace.plugins.tls import TlsConfig, check_tls, client_cn, server_context

log = logging.getLogger("headrace.plugins.http")

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})  # kept out of events and dead letters
MAX_META_HEADERS = 32
MAX_HEADER_VALUE = 1024
READ_SIZE = 64 * 1024
LINGER = 2.0  # seconds the rest of a refused body is read and dropped, so that its client reads the answer (not a reset)


class HttpAuthConfig(PluginConfig):
    type: Literal["bearer", "basic"] = Field(description="bearer: `Authorization: Bearer <token>`; basic: user and password")
    token: str | None = Field(None, min_length=16, description="bearer: the token (16+ characters; use ${VAR} to keep it out of the file)")
    user: str | None = Field(None, min_length=1, description="basic: the user name")
    password: str | None = Field(None, min_length=8, description="basic: the password (8+ characters; use ${VAR})")


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
    max_connections: int = Field(256, ge=1, description="connections open at once; more are answered 503 with Retry-After and closed")
    max_inflight_bytes: Size = Field(64 * 2**20, ge=1, description="bytes of request bodies held at once (read, not yet handed to the "
                                     "graph); a request that would exceed it gets 503 with Retry-After (one body is always admitted)")
    header_timeout: Duration = Field(10.0, gt=0, description="time a client has to send a request's headers, from connecting or from "
                                     "its previous response (also how long an idle keep-alive connection stays open)")
    body_timeout: Duration = Field(30.0, gt=0, description="time a client has to send a request's body; a slower one gets 408 and "
                                   "the connection is closed")
    allowed_origins: list[str] = Field(default_factory=list, description="origins (scheme://host[:port]) whose browser pages may post; "
                                       "a request with another Origin header gets 403. Empty: no browser page may ('*': any may)")
    tls: TlsConfig | None = Field(None, description="serve HTTPS (see reference/tls.md): cert and key; client_auth for mutual TLS")
    auth: HttpAuthConfig | None = Field(None, description="credentials every request must carry (401 otherwise, before its body is read)")


class _Request:
    """The ack token of one request: resolved when all its batches are done (``sealed``: no more will come)."""

    __slots__ = ("done", "events", "failed", "parts", "sealed")

    def __init__(self) -> None:
        self.events = 0
        self.parts = 0
        self.failed = False
        self.sealed = False
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()


class _Refused(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


class HttpOnramp(Onramp):
    name = "http"
    Config = HttpOnrampConfig
    summary = ("HTTP server: POST bodies become records; the response waits for delivery (200/500); bounded connections, bytes "
               "and time (503, 413, 408); cross-origin browser posts refused (403)")  # fmt: skip
    default_preprocessors: ClassVar[tuple[str, ...]] = ("lines",)
    example = "{type: http, codec: json, config: {port: 8080, path: /ingest}}"

    def __init__(self, config: HttpOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.pending = 0  # events handed to the graph and not yet done
        self.inflight = 0  # bytes of bodies read and not yet handed to the graph
        self.framing = asyncio.Lock()  # one body framed at a time
        self.server: CappedServer | None = None
        self.listener: asyncio.AbstractServer | None = None
        self.sink: FramingSink | None = None
        self.sink_set = asyncio.Event()
        self.refused = Refusals(context.component_id, context.metrics, log)
        metrics = context.metrics
        self.gauge = Tally(metrics["headrace_component_buffered_bytes"].labels(context.component_id)) if metrics else None
        self.any_origin = "*" in config.allowed_origins
        self.origins = {o.rstrip("/").lower() for o in config.allowed_origins}
        self.expected: bytes | None = None  # the Authorization header value that is let in
        auth = config.auth
        if auth is not None and auth.type == "bearer" and auth.token:
            self.expected = f"Bearer {auth.token}".encode()
        elif auth is not None and auth.type == "basic" and auth.user and auth.password:
            self.expected = b"Basic " + base64.b64encode(f"{auth.user}:{auth.password}".encode())

    def check(self) -> None:
        check_tls(self.cfg.tls, listening=True)
        auth = self.cfg.auth
        if auth is not None and auth.type == "bearer" and (auth.token is None or auth.user or auth.password):
            raise SettingError("auth", "type bearer takes `token` (and no user or password)")
        if auth is not None and auth.type == "basic" and (auth.user is None or auth.password is None or auth.token):
            raise SettingError("auth", "type basic takes `user` and `password` (and no token)")
        if auth is not None and ":" in (auth.user or ""):
            raise SettingError("auth", "a basic user name cannot hold ':'")

    async def start(self) -> None:
        """Listen now: a port in use fails the start (naming this onramp), not a later moment. Ready once
        ``run`` takes requests, not before."""
        cfg = self.cfg
        self.server = CappedServer(self.handle, max_connections=cfg.max_connections, refused=self._over_connections,
                                   keepalive_timeout=cfg.header_timeout, lingering_time=LINGER, access_log=None)  # fmt: skip
        try:
            context = server_context(cfg.tls, self.context.base_dir) if cfg.tls is not None else None
            self.listener = await listen(self.server, cfg.host, cfg.port, context)
        except BaseException:
            await self._shutdown()
            raise
        log.info("%s: listening on %s://%s:%d%s", self.context.component_id, "https" if cfg.tls else "http", cfg.host, cfg.port, cfg.path)

    async def run(self, sink: OnrampSink) -> None:
        self.sink = framing_sink(sink)
        if self.listener is None:  # run without start (the engine always starts first)
            await self.start()
        self.sink_set.set()
        self.ready = True
        try:
            await asyncio.Event().wait()  # until cancelled (stop)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()  # stop accepting
        server, self.server = self.server, None
        if server is not None:
            for conn in list(server.connections):  # idle keep-alive connections close now, the others after their request
                conn.close()
            await server.shutdown(5.0)  # in-flight requests get up to 5 s for their acks

    async def stop(self) -> None:
        await self._shutdown()

    def _over_connections(self) -> bytes:
        assert self.server is not None
        self.refused("max_connections", f"answered 503 to a connection: {self.server.open_connections()} open")
        return busy_answer(f"too many connections (max_connections {self.cfg.max_connections}); retry later", self.cfg.retry_after)

    def _refuse(self, status: int, reason: str, message: str, close: bool = True) -> _Refused:
        self.refused(reason, f"answered {status}: {message}")
        headers = {"Retry-After": str(self.cfg.retry_after)} if status == 503 else None
        resp = web.json_response({"error": message}, status=status, headers=headers)
        if close:
            resp.force_close()  # the rest of the body is not read
        return _Refused(resp)

    def _hold(self, n: int) -> None:
        self.inflight += n
        if self.gauge is not None:
            self.gauge.set(self.inflight)

    def _reserve(self, n: int, held: int) -> None:
        """Hold ``n`` more bytes for a body that holds ``held`` so far, or refuse the request."""
        if self.inflight + n > self.cfg.max_inflight_bytes and self.inflight > held:
            raise self._refuse(503, "max_inflight_bytes", f"too many bytes of requests in flight (max_inflight_bytes "
                                                          f"{self.cfg.max_inflight_bytes}); retry later")  # fmt: skip
        self._hold(n)

    async def _body(self, request: web.BaseRequest) -> bytes:
        """The whole body, its bytes held in ``inflight`` (the caller releases ``len(body)``); raises ``_Refused``."""
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise self._refuse(413, "max_body_bytes", f"body over max_body_bytes ({limit})")
        held = request.content_length or 0
        self._reserve(held, 0)
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.cfg.body_timeout):
                while chunk := await request.content.read(READ_SIZE):
                    size += len(chunk)
                    if size > limit:
                        raise self._refuse(413, "max_body_bytes", f"body over max_body_bytes ({limit})")
                    if size > held:
                        self._reserve(size - held, held)
                        held = size
                    chunks.append(chunk)
        except TimeoutError:
            self._hold(-held)
            raise self._refuse(408, "body_timeout", f"body not received within body_timeout ({self.cfg.body_timeout:g}s)") from None
        except BaseException:
            self._hold(-held)
            raise
        self._hold(size - held)  # a body shorter than announced
        return b"".join(chunks)

    def _meta(self, request: web.BaseRequest) -> Meta:
        headers: dict[str, str] = {}
        for k, v in request.headers.items():
            name = k.lower()
            if name in SECRET_HEADERS or name in headers:
                continue
            if len(headers) >= MAX_META_HEADERS:
                break
            headers[name] = v[:MAX_HEADER_VALUE]
        meta: Meta = {"http_path": request.path, "http_method": request.method, "http_headers": headers}
        if self.cfg.tls is not None and self.cfg.tls.client_auth and request.transport is not None:
            obj = request.transport.get_extra_info("ssl_object")
            cn = client_cn(obj.getpeercert()) if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else None
            if cn is not None:
                meta["tls_client_cn"] = cn
        return meta

    def _check(self, request: web.BaseRequest) -> None:
        """Refuses what lacks the credentials, is not a POST to the path, comes from a page of a foreign
        origin, or comes while too much is in flight."""
        if self.expected is not None and not _authorized(request.headers.get("Authorization"), self.expected):
            self.refused("auth", f"answered 401 to {request.remote}: no valid credentials")
            scheme = "Bearer" if self.cfg.auth is not None and self.cfg.auth.type == "bearer" else "Basic"
            resp = web.json_response({"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": f'{scheme} realm="headrace"'})
            resp.force_close()  # the body is not read
            raise _Refused(resp)
        if not self._serves(request.path):
            raise _Refused(web.json_response({"error": "not found"}, status=404))
        if request.method != "POST":
            raise _Refused(web.json_response({"error": "method not allowed"}, status=405, headers={"Allow": "POST"}))
        origin = request.headers.get("Origin")
        if origin is not None and not self.any_origin and origin.rstrip("/").lower() not in self.origins:
            raise self._refuse(403, "origin", f"Origin {origin!r} is not in allowed_origins")
        if self.pending >= self.cfg.max_pending_events:
            raise self._refuse(503, "max_pending_events", "too many events in flight; retry later")

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        await self.sink_set.wait()  # a request between start and run waits for the graph
        assert self.sink is not None
        try:
            self._check(request)
            body = await self._body(request)
        except (ConnectionError, ClientPayloadError) as exc:  # the client went away mid-body: nobody to answer, nothing to log
            log.debug("%s: request from %s ended early: %s", self.context.component_id, request.remote, exc)
            return web.Response(status=400)
        except _Refused as refusal:
            if refusal.response.status != 408:
                return refusal.response
            await refusal.response.prepare(request)  # a client too slow to send its body gets no time to linger
            await refusal.response.write_eof()
            request.protocol.force_close()
            return refusal.response
        try:
            token, rejected = await self._hand_over(body, self._meta(request))
        except _Refused as refusal:  # the body as a whole is malformed (a subclass that parses it)
            return refusal.response
        finally:
            self._hold(-len(body))
            del body
        if not token.events:
            return self._answer(request, 200, {"events": 0, "rejected": rejected})
        try:
            ok = await asyncio.wait_for(asyncio.shield(token.done), self.cfg.ack_timeout)
        except TimeoutError:
            return self._answer(request, 504, {"error": f"events not done within {self.cfg.ack_timeout:g}s; they may still be delivered"})
        if not ok:
            return self._answer(request, 500, {"error": "delivery failed"}, {"Retry-After": str(self.cfg.retry_after)})
        return self._answer(request, 200, {"events": token.events, "rejected": rejected})

    def _serves(self, path: str) -> bool:
        """Whether POSTs to ``path`` are taken (others get 404)."""
        return path == self.cfg.path

    def _answer(self, request: web.BaseRequest, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        """The response to a request whose body was read: its events done (200), failed (500) or late (504)."""
        return web.json_response(body, status=status, headers=headers)

    async def _hand_over(self, body: bytes, meta: Meta) -> tuple[_Request, int]:
        """Frame ``body`` a step at a time and hand each to the graph (one body at a time); the token and the rejected count."""
        assert self.sink is not None
        token = _Request()
        rejected = 0
        bs = self.cfg.batch_size
        try:
            async with self.framing:
                for records, bad in self.sink.frame(body) if body else ():
                    if bad:
                        rejected += len(bad)
                        await self.sink.reject(bad, meta)
                    for start in range(0, len(records), bs):
                        part = records[start : start + bs]
                        token.parts += 1
                        token.events += len(part)
                        self.pending += len(part)
                        await self.sink.records(part, [dict(meta) for _ in part], ack=token)
        finally:
            token.sealed = True  # even when cancelled: what was handed on still counts until done
            if token.parts == 0:  # none handed on, or every one already done
                self._resolve(token)
        return token, rejected

    def _resolve(self, token: _Request) -> None:
        self.pending -= token.events
        if not token.done.done():
            token.done.set_result(not token.failed)

    def _part_done(self, token: _Request) -> None:
        token.parts -= 1
        if token.parts == 0 and token.sealed:
            self._resolve(token)

    def ack(self, token: Any) -> None:
        self._part_done(token)

    def fail(self, token: Any) -> None:
        token.failed = True
        self._part_done(token)


def _authorized(header: str | None, expected: bytes) -> bool:
    """Whether an Authorization header carries the expected credentials (constant time; the scheme's case ignored)."""
    if header is None:
        return False
    scheme, _, rest = header.strip().partition(" ")
    given = f"{scheme.capitalize()} {rest.strip()}".encode("utf-8", "surrogateescape")
    if scheme.lower() == "basic":  # compare the decoded pair: base64 allows more than one spelling of it
        try:
            given = b"Basic " + base64.b64encode(base64.b64decode(rest.strip(), validate=True))
        except (binascii.Error, ValueError):
            return False
    return hmac.compare_digest(given, expected)
