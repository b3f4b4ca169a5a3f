"""HTTP endpoints on ``daemon.metrics.listen``: /metrics, /health, /ready, /status, /reload.

The Prometheus exposition is rendered in a thread, so a scrape does not hold the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from headrace.metrics.defs import Metrics


class AdminServer:
    def __init__(self, listen: str, metrics: Metrics, ready: Callable[[], bool], status: Callable[[], dict[str, Any]],
                 reload: Callable[[], Awaitable[dict[str, Any]]]) -> None:  # fmt: skip
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.metrics = metrics
        self.ready = ready
        self.status = status
        self.reload = reload
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/status", self._status)
        app.router.add_post("/reload", self._reload)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, request: web.Request) -> web.Response:
        ok = self.ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def _reload(self, request: web.Request) -> web.Response:
        result = await self.reload()
        return web.json_response(result, status=200 if result.get("ok") else 422)
