"""A local stand-in for a Confluent schema registry (none can run here): the documented REST
endpoints the avro and protobuf codecs use, served by aiohttp on a free 127.0.0.1 port in a
thread of the test process, counting every request.

``GET /schemas/ids/{id}`` (``?format=serialized`` answers the protobuf schema's serialized
file descriptor, base64, as the registry does), ``POST /subjects/{subject}/versions``
(registers a schema, or answers the id it has), ``POST /subjects/{subject}`` (the id of a schema
registered already), ``GET /subjects/{subject}/versions/latest``.
Errors are the registry's shape: ``{"error_code": 40403, "message": "Schema not found"}``.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from tests.support.daemon import free_port


class FakeRegistry:
    def __init__(self, auth: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = auth  # the Authorization header every request must carry, or None
        self.schemas: dict[int, dict[str, Any]] = {}  # id -> {"schema", "schemaType", "serialized"?}
        self.subjects: dict[str, list[int]] = {}
        self.requests: Counter[str] = Counter()  # "GET /schemas/ids/1" -> how many
        self.down = False  # answer 503 to everything
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    # -- what a test sets up ------------------------------------------------------------------
    def add(self, schema: str, schema_type: str = "AVRO", sid: int | None = None, serialized: bytes | None = None,
            subject: str | None = None, references: list[Any] | None = None) -> int:  # fmt: skip
        sid = sid if sid is not None else max(self.schemas, default=0) + 1
        entry: dict[str, Any] = {"schema": schema, "schemaType": schema_type}
        if serialized is not None:
            entry["serialized"] = base64.b64encode(serialized).decode("ascii")
        if references:
            entry["references"] = references
        self.schemas[sid] = entry
        if subject is not None:
            self.subjects.setdefault(subject, []).append(sid)
        return sid

    def count(self, prefix: str) -> int:
        return sum(n for k, n in self.requests.items() if k.startswith(prefix))

    # -- the endpoints ------------------------------------------------------------------------------
    def _refuse(self, request: web.Request) -> web.Response | None:
        self.requests[f"{request.method} {request.path_qs}"] += 1
        if self.down:
            return web.json_response({"error_code": 50001, "message": "down for the test"}, status=503)
        if self.auth is not None and request.headers.get("Authorization") != self.auth:
            return web.json_response({"error_code": 401, "message": "Unauthorized"}, status=401)
        return None

    async def by_id(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        entry = self.schemas.get(int(request.match_info["id"]))
        if entry is None:
            return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)
        body: dict[str, Any] = {"schema": entry["schema"]}
        if request.query.get("format") == "serialized" and "serialized" in entry:
            body["schema"] = entry["serialized"]
        if entry["schemaType"] != "AVRO":
            body["schemaType"] = entry["schemaType"]
        if entry.get("references"):
            body["references"] = entry["references"]
        return web.json_response(body, content_type="application/vnd.schemaregistry.v1+json")

    async def register(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        doc = await request.json()
        subject = request.match_info["subject"]
        kind = doc.get("schemaType", "AVRO")
        for sid, entry in self.schemas.items():
            if entry["schema"] == doc["schema"] and entry["schemaType"] == kind:
                if sid not in self.subjects.setdefault(subject, []):
                    self.subjects[subject].append(sid)
                return web.json_response({"id": sid})
        return web.json_response({"id": self.add(doc["schema"], kind, subject=subject)})

    async def lookup(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        doc = await request.json()
        subject = request.match_info["subject"]
        for version, sid in enumerate(self.subjects.get(subject, []), 1):
            entry = self.schemas[sid]
            if entry["schema"] == doc["schema"] and entry["schemaType"] == doc.get("schemaType", "AVRO"):
                return web.json_response({"subject": subject, "version": version, "id": sid, "schema": entry["schema"]})
        if subject not in self.subjects:
            return web.json_response({"error_code": 40401, "message": f"Subject '{subject}' not found."}, status=404)
        return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)

    async def latest(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        subject = request.match_info["subject"]
        ids = self.subjects.get(subject)
        if not ids:
            return web.json_response({"error_code": 40401, "message": f"Subject '{subject}' not found."}, status=404)
        sid = ids[-1]
        return web.json_response({"subject": subject, "version": len(ids), "id": sid, "schema": self.schemas[sid]["schema"]})

    # -- life -----------------------------------------------------------------------------------
    def start(self) -> FakeRegistry:
        app = web.Application()
        app.router.add_get("/schemas/ids/{id:\\d+}", self.by_id)
        app.router.add_post("/subjects/{subject}/versions", self.register)
        app.router.add_post("/subjects/{subject}", self.lookup)
        app.router.add_get("/subjects/{subject}/versions/latest", self.latest)
        self.thread.start()

        async def serve() -> None:
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextmanager
def fake_registry(auth: str | None = None) -> Iterator[FakeRegistry]:
    reg = FakeRegistry(auth).start()
    try:
        yield reg
    finally:
        reg.stop()
