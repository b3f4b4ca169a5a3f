"""HTTP endpoints on ``daemon.metrics.listen``: /metrics, /health, /ready, /status, /reload, /tap, /replay.

A small Prometheus exposition (the last one rendered in under ``INLINE_RENDER_S``) is rendered
on the loop: a thread would hold the GIL against the loop for its whole render and, under load,
each of the loop's syscalls would hand the GIL to it (the convoy effect), which costs more than
the render. A large one (many components or workers) is rendered in a thread so a scrape never
holds the loop for long.

Exposure: a request whose ``Host`` is not a name of this endpoint (DNS rebinding) or that
carries a foreign ``Origin`` (a web page's script) gets 403; ``POST /reload`` also needs
``Content-Type: application/json``, which a cross-site form cannot send (CSRF) and a
cross-site script can only send after a CORS preflight that this server never grants.

With ``daemon.metrics.token`` (or ``token_file``) set, ``POST /reload``, ``GET /tap`` and
``POST /replay`` need ``Authorization: Bearer TOKEN`` (401 otherwise; compared in constant
time), and tap and replay then also answer on an endpoint that is not on loopback. Without a
token they answer only on loopback. /metrics, /health, /ready and /status stay open: they are
what Prometheus and a load balancer read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from headrace import registry
from headrace.contract.codec import Codec
from headrace.contract.expr import ExpressionError, compile_expr
from headrace.daemon.hosts import AllowedHosts, host_name
from headrace.metrics.defs import Metrics
from headrace.metrics.refusals import LogEvery
from headrace.runtime.tap import MAX_RATE, Tap

log = logging.getLogger("headrace.admin")

INLINE_RENDER_S = 0.002
GUARDED = frozenset({"/reload", "/tap", "/replay"})  # what needs the token when one is set
WRITE_EVERY = 0.05  # a tap's stream is written at most this often (each write of aiohttp's chunked stream costs ~10 us)


def admin_token(cfg: Any, base_dir: Path) -> str | None:
    """``daemon.metrics.token``, or the content of ``token_file`` (``OSError`` when unreadable or too short)."""
    if cfg.token_file is None:
        return str(cfg.token) if cfg.token else None
    path: Path = base_dir / cfg.token_file
    text = path.read_text(encoding="utf-8").strip()
    if len(text) < 16:
        raise OSError(f"{path}: a token of at least 16 characters is needed, it holds {len(text)}")
    return text


class AdminServer:
    def __init__(self, listen: str, metrics: Metrics, ready: Callable[[], bool], status: Callable[[], dict[str, Any]],
                 reload: Callable[[], Awaitable[dict[str, Any]]], allowed_hosts: tuple[str, ...] = (),
                 tap: Callable[[Tap], Callable[[], None]] | None = None, codec_maker: Callable[[str], Codec] | None = None,
                 replay: Callable[[str | None, list[Any], bool], Awaitable[dict[str, Any]]] | None = None,
                 token: str | None = None) -> None:  # fmt: skip
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.allowed = AllowedHosts(self.host, self.port, allowed_hosts)
        self.refused = 0
        self.token = token.strip().encode() if token else None  # needed by /reload, /tap and /replay when set
        self.log_due = LogEvery()
        self.metrics = metrics
        self.ready = ready
        self.status = status
        self.reload = reload
        self.tap = tap  # attach a tap (Engine.tap); None: /tap answers 404
        self.replay = replay  # put dead letters back in (Engine.replay); None: /replay answers 404
        self.codec_of: Callable[[str], Codec] = codec_maker or registry.make_codec  # the daemon's (cached) codecs by name
        self.runner: web.AppRunner | None = None
        self.last_render_s = 0.0  # the first render is inline; its duration picks the next one's place

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/status", self._status)
        app.router.add_post("/reload", self._reload)
        app.router.add_get("/tap", self._tap)
        app.router.add_post("/replay", self._replay)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _refuse(self, request: web.Request, status: int, why: str) -> web.Response:
        self.refused += 1
        if self.log_due():
            log.warning("admin endpoint: refused %s %s from %s: %s (%d refused so far)", request.method, request.path, request.remote, why,
                        self.refused)  # fmt: skip
        return web.json_response({"error": why}, status=status)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is None or not self.allowed(host_name(host)):
            return self._refuse(request, 403, f"Host {host!r} is not a name of this endpoint (see daemon.metrics.allowed_hosts)")
        origin = request.headers.get("Origin")
        if origin is not None and not self.allowed.origin(origin):
            return self._refuse(request, 403, f"cross-origin requests are refused (Origin {origin!r})")
        if request.method == "POST" and request.content_type != "application/json":
            return self._refuse(request, 415, f"POST {request.path} needs Content-Type: application/json")
        if self.token is not None and request.path in GUARDED:
            given = request.headers.get("Authorization", "")
            scheme, _, secret = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(secret.strip().encode(), self.token):
                resp = self._refuse(request, 401, f"{request.path} needs Authorization: Bearer TOKEN (daemon.metrics.token; "
                                                  "the CLI sends $HEADRACE_TOKEN or --token-file)")  # fmt: skip
                resp.headers["WWW-Authenticate"] = 'Bearer realm="headrace"'
                return resp
        return await handler(request)

    def _private(self, request: web.Request, what: str) -> web.Response | None:
        """Event data (tap) and injection (replay): on loopback, or anywhere once a token is needed; else 403."""
        if self.allowed.loopback or self.token is not None:
            return None
        return self._refuse(request, 403, f"{what}: only on a loopback admin endpoint (daemon.metrics.listen), or with daemon.metrics.token set")

    def _render(self) -> bytes:
        t0 = time.thread_time()  # CPU, not wall: a render preempted by a busy machine stays inline
        body: bytes = generate_latest(self.metrics.registry)
        self.last_render_s = time.thread_time() - t0
        return body

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.last_render_s < INLINE_RENDER_S:
            body = self._render()
        else:
            body = await asyncio.get_running_loop().run_in_executor(None, self._render)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        ok = self.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _tap(self, request: web.Request) -> web.StreamResponse:
        """Live events of one port as NDJSON lines until ``limit`` or the client goes; a last line
        ``{"tap_end": ...}`` says how many passed, were sampled and were dropped."""
        if self.tap is None:
            return web.json_response({"error": "no running graph"}, status=404)
        if (refused := self._private(request, "tap shows event data")) is not None:
            return refused
        q = request.query
        try:
            component, port = q["component"], q.get("port") or "out"
            every = int(q.get("every", "1"))
            limit = int(q["limit"]) if "limit" in q else None
            where = compile_expr(q["where"], ("event", "meta")) if q.get("where") else None
            max_rate = float(q.get("max_rate", MAX_RATE))
            if max_rate < 0:
                raise ValueError("max_rate must be 0 (no cap) or more")
            tap = Tap(component, port, every, where, q.get("meta") in ("1", "true"), limit, self.codec_of, max_rate)
            detach = self.tap(tap)
        except (KeyError, ValueError, ExpressionError) as exc:
            return web.json_response({"error": str(exc) if not isinstance(exc, KeyError) else f"missing {exc}"}, status=422)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        encode = self.codec_of("json").encode
        sent = 0
        try:
            while limit is None or sent < limit:
                lines = [encode(await tap.queue.get())]  # then what else comes within WRITE_EVERY: one write, not one per event
                if tap.queue.qsize() < 500 and (limit is None or sent + 1 < limit):
                    await asyncio.sleep(WRITE_EVERY)
                while not tap.queue.empty() and (limit is None or sent + len(lines) < limit) and len(lines) < 500:
                    lines.append(encode(tap.queue.get_nowait()))
                lines.append(b"")
                await resp.write(b"\n".join(lines))
                sent += len(lines) - 1
            end = {"tap_end": True, "passed": tap.seen, "sent": sent, "dropped": tap.dropped, "where_failed": tap.failed,
                   "over_rate": tap.over_rate}  # fmt: skip
            await resp.write(encode(end) + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            detach()
        return resp

    async def _replay(self, request: web.Request) -> web.Response:
        """``{"into": onramp | null, "dry_run": bool, "records": [{"event", "meta"}, ...]}`` -> the report
        (see ``headrace.runtime.replay``), once every replayed record was delivered."""
        if self.replay is None:
            return web.json_response({"error": "no running graph"}, status=404)
        if (refused := self._private(request, "replay injects events")) is not None:
            return refused
        try:
            body = await request.json()
            records = body["records"]
            if not isinstance(records, list):
                raise ValueError("records must be a list")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"a body {{into, dry_run, records: [...]}} is needed: {exc}"}, status=422)
        result = await self.replay(body.get("into"), records, bool(body.get("dry_run")))
        return web.json_response(result, status=422 if "error" in result else 200)

    async def _reload(self, request: web.Request) -> web.Response:
        result = await self.reload()
        return web.json_response(result, status=200 if result.get("ok") else 422)
