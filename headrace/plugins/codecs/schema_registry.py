"""A Confluent schema-registry client and the wire format, for the codecs that use them (avro, protobuf).

The Confluent wire format puts the magic byte 0 and the schema id (4 bytes, big-endian)
before each record (protobuf adds the message indexes: see ``protobuf``). Schemas are
fetched and cached in the parent only (``RegistryCodec.prepare``: once per schema id,
before the records that name it are decoded anywhere); a worker's instance of the codec
gets the schemas of each job's records with the job (``shipment`` -> ``receive``) and never
talks to the registry. Endpoints used (the registry's REST API): ``GET /schemas/ids/{id}``
(``?format=serialized`` for protobuf), ``POST /subjects/{subject}/versions`` (register a
writer's schema, or find the id it has), ``POST /subjects/{subject}`` (find the id of a schema
registered already) and ``GET /subjects/{subject}/versions/latest``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import operator
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import aiohttp
from pydantic import Field

from headrace.contract.backoff import Backoff
from headrace.contract.codec import Codec, DecodeError
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.units import Duration
from headrace.errors import safe_str

log = logging.getLogger("headrace.plugins.schema_registry")

MAGIC = 0
HEADER = 5  # the magic byte and the schema id
_HEAD = operator.itemgetter(slice(0, HEADER))  # a record's header, with no Python frame per record (map)
MISSING_RETRY = 60.0  # a schema id the registry did not have is asked for again at most this often
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryAuth(PluginConfig):
    type: Literal["basic", "bearer"] = Field(description="basic: user and password (Confluent Cloud: API key and secret); bearer: a token")
    user: str | None = Field(None, min_length=1, description="basic: the user name (API key)")
    password: str | None = Field(None, description="basic: the password (API secret; use ${VAR})")
    token: str | None = Field(None, min_length=1, description="bearer: the token (use ${VAR})")


class RegistryConfig(PluginConfig):
    url: str = Field(pattern=r"^https?://", description="the schema registry's base URL, e.g. http://registry:8081")
    auth: RegistryAuth | None = Field(None, description="credentials sent with every request")
    timeout: Duration = Field(10.0, gt=0, description="time one request to the registry may take")


class SchemaMissing(Exception):
    """The registry answered, and has no such schema (or refused the request for good): records naming it go to err."""


class RegistryUnavailable(Exception):
    """The registry could not be reached, or failed (5xx): asked again with backoff."""


class SchemaRegistry:
    """The REST calls, one short-lived HTTP session each (they are rare: once per schema id)."""

    def __init__(self, cfg: RegistryConfig) -> None:
        self.base = cfg.url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        self.headers = {"Accept": CONTENT_TYPE}
        auth = cfg.auth
        if auth is not None and auth.type == "bearer":
            self.headers["Authorization"] = f"Bearer {auth.token}"
        elif auth is not None:
            raw = f"{auth.user}:{auth.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": CONTENT_TYPE} if body is not None else None
        try:
            async with aiohttp.ClientSession(timeout=self.timeout, headers=self.headers) as session, \
                    session.request(method, self.base + path, data=data, headers=headers) as resp:  # fmt: skip
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RegistryUnavailable(f"{method} {path}: {type(exc).__name__}: {safe_str(exc)}") from None
        if resp.status >= 500 or resp.status in (408, 429):
            raise RegistryUnavailable(f"{method} {path}: HTTP {resp.status}: {text[:200]}")
        if resp.status >= 300:
            raise SchemaMissing(f"HTTP {resp.status}: {_message(text)}")
        try:
            return json.loads(text)
        except ValueError:
            raise RegistryUnavailable(f"{method} {path}: the answer is not JSON: {text[:200]}") from None

    async def schema(self, sid: int, fmt: str | None = None) -> dict[str, Any]:
        """``GET /schemas/ids/{id}``: ``{"schema": ..., "schemaType": ..., "references": ...}``."""
        answer = await self.call("GET", f"/schemas/ids/{sid}" + (f"?format={fmt}" if fmt else ""))
        if not isinstance(answer, dict) or not isinstance(answer.get("schema"), str):
            raise SchemaMissing(f"the registry's answer for schema id {sid} has no schema")
        return answer

    async def register(self, subject: str, schema: str, schema_type: str) -> int:
        """``POST /subjects/{subject}/versions``: the id of ``schema`` under ``subject`` (registered if new)."""
        body: dict[str, Any] = {"schema": schema}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        answer = await self.call("POST", f"/subjects/{quote(subject, safe='')}/versions", body)
        return _id(answer)

    async def lookup(self, subject: str, schema: str, schema_type: str) -> int:
        """``POST /subjects/{subject}``: the id ``schema`` has under ``subject`` (it must be registered already)."""
        body: dict[str, Any] = {"schema": schema}
        if schema_type != "AVRO":
            body["schemaType"] = schema_type
        return _id(await self.call("POST", f"/subjects/{quote(subject, safe='')}", body))

    async def latest(self, subject: str) -> int:
        """``GET /subjects/{subject}/versions/latest``: the id of the subject's latest schema."""
        return _id(await self.call("GET", f"/subjects/{quote(subject, safe='')}/versions/latest"))


def _id(answer: Any) -> int:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
        raise SchemaMissing(f"the registry's answer has no schema id: {str(answer)[:200]}")
    return int(answer["id"])


def _message(text: str) -> str:
    """The registry's error message (``{"error_code": ..., "message": ...}``), else the text's start."""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and "message" in doc:
            return f"{doc['message']} (error code {doc.get('error_code')})"
    except ValueError:
        pass
    return text[:200]


def wire_id(data: bytes | memoryview) -> int:
    """The schema id of a record in the Confluent wire format (DecodeError when it is not)."""
    if len(data) < HEADER or data[0] != MAGIC:
        raise DecodeError("not in the Confluent wire format: the magic byte 0 and a 4-byte schema id must come first")
    return int.from_bytes(data[1:HEADER], "big")


def wire_header(sid: int) -> bytes:
    return bytes([MAGIC]) + sid.to_bytes(4, "big")


class RegistryCodec(Codec):
    """A codec whose records may name their schema by a registry id: the parent fetches each
    id's schema once (``prepare``) and ships it to the workers with the jobs that need it.

    Subclasses say how a registry's schema becomes something to decode with (``compile``)
    and what they register for writing (``open``)."""

    schema_type: ClassVar[str] = "AVRO"
    fetch_format: ClassVar[str | None] = None  # ``?format=`` of GET /schemas/ids/{id}

    def __init__(self, config: PluginConfig | None = None, context: PluginContext | None = None) -> None:
        super().__init__(config, context)
        self.registry_cfg: RegistryConfig | None = getattr(self.config, "registry", None)
        self.client = SchemaRegistry(self.registry_cfg) if self.registry_cfg is not None else None
        self.by_head: dict[bytes, Any] = {}  # a record's 5-byte header -> the compiled schema (decoding, per record)
        self.compiled: dict[int, Any] = {}
        self.answers: dict[int, dict[str, Any]] = {}  # id -> the registry's answer (what a worker compiles)
        self.refused: dict[int, tuple[str, float]] = {}  # id -> (why its records go to err, when the registry said so)
        self.writer_id: int | None = None  # the registry's id of the schema this codec writes with
        self.lock: asyncio.Lock | None = None

    # -- in the parent ----------------------------------------------------------------------------
    def needs_parent(self) -> bool:
        return self.client is not None

    async def prepare(self, payloads: Sequence[bytes | None]) -> None:
        """Fetch the schemas these records name that are not known yet (each id once; a registry
        that cannot be reached is asked again with backoff, holding these records back)."""
        heads = set(map(_HEAD, payloads)).difference(self.by_head)  # type: ignore[arg-type]
        if not heads:
            return
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:  # several sources (connections) may bring the same new id at once
            for head in heads:
                if len(head) < HEADER or head[0] != MAGIC:
                    continue  # decode refuses it, with the reason
                sid = int.from_bytes(head[1:], "big")
                if sid in self.compiled:
                    self.by_head[head] = self.compiled[sid]
                    continue
                refused = self.refused.get(sid)
                if refused is not None and time.monotonic() - refused[1] < MISSING_RETRY:
                    continue
                await self._fetch(sid)
                if sid in self.compiled:
                    self.by_head[head] = self.compiled[sid]

    async def _fetch(self, sid: int) -> None:
        assert self.client is not None
        backoff = Backoff(0.2, 10.0)
        while True:
            try:
                answer = await self.client.schema(sid, self.fetch_format)
                break
            except SchemaMissing as exc:
                self._refuse(sid, f"schema id {sid}: not in the registry ({exc})")
                return
            except RegistryUnavailable as exc:
                delay = backoff.next()
                log.warning("codec %s: cannot fetch schema id %d (%s); records naming it wait, asking again in %.1fs", self.name, sid, exc, delay)
                await asyncio.sleep(delay)
        self._adopt(sid, answer)
        if sid in self.compiled:
            log.info("codec %s: schema id %d fetched from the registry", self.name, sid)

    def _adopt(self, sid: int, answer: Any) -> None:
        if isinstance(answer, str):  # a refusal, as the parent shipped it
            self._refuse(sid, answer)
            return
        found = answer.get("schemaType") or "AVRO"
        if found != self.schema_type:
            self._refuse(sid, f"schema id {sid} is a {found} schema, not {self.schema_type}")
            return
        try:
            self.compiled[sid] = self.compile(answer)
        except Exception as exc:
            self._refuse(sid, f"schema id {sid} from the registry cannot be used: {type(exc).__name__}: {safe_str(exc)}")
            return
        self.answers[sid] = answer
        self.refused.pop(sid, None)

    def _refuse(self, sid: int, why: str) -> None:
        self.refused[sid] = (why, time.monotonic())

    def compile(self, answer: dict[str, Any]) -> Any:
        """What decoding needs from the registry's answer for a schema id."""
        raise NotImplementedError

    async def writer(self, client: SchemaRegistry) -> int | None:
        """The registry's id of the schema this codec writes with (registered, or looked up), or None."""
        return None

    async def open(self) -> None:
        if self.client is None:
            return
        backoff = Backoff(0.2, 5.0)
        while True:  # a registry not reachable yet is asked again; the start is bounded by daemon.start_timeout
            try:
                self.writer_id = await self.writer(self.client)
                break
            except RegistryUnavailable as exc:
                delay = backoff.next()
                log.warning("codec %s: the schema registry cannot be reached yet (%s); again in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
            except SchemaMissing as exc:
                raise RuntimeError(f"codec {self.name}: the schema registry refused the schema it writes: {exc}") from None
        if self.writer_id is not None:
            log.info("codec %s: writes schema id %d", self.name, self.writer_id)

    def shipment(self, payloads: Sequence[bytes | None] | None) -> Any:
        """What a worker's instance needs for these records: the schemas (or refusals) of the ids they
        name, and the writer's id. Small: only the ids of this job go."""
        if self.client is None:
            return None
        ids: dict[int, Any] = {}
        if payloads:
            for head in set(map(_HEAD, payloads)):  # type: ignore[arg-type]
                if len(head) == HEADER and head[0] == MAGIC:
                    sid = int.from_bytes(head[1:], "big")
                    if sid in self.answers:
                        ids[sid] = self.answers[sid]
                    elif sid in self.refused:
                        ids[sid] = self.refused[sid][0]
        return {"ids": ids, "writer": self.writer_id}

    # -- in a worker ------------------------------------------------------------------------------
    def receive(self, shipment: Any) -> None:
        if not shipment:
            return
        for sid, answer in shipment["ids"].items():
            if sid not in self.compiled or isinstance(answer, str):
                self._adopt(sid, answer)
        self.writer_id = shipment["writer"]
        for sid in shipment["ids"]:
            if sid in self.compiled:
                self.by_head[wire_header(sid)] = self.compiled[sid]
            else:
                self.by_head.pop(wire_header(sid), None)

    # -- anywhere ---------------------------------------------------------------------------------
    def schema_of(self, data: bytes | memoryview) -> Any:
        """The compiled schema a wire-format record names (DecodeError with the reason when there is none)."""
        found = self.by_head.get(bytes(data[:HEADER]))
        if found is not None:
            return found
        sid = wire_id(data)
        refused = self.refused.get(sid)
        raise DecodeError(refused[0] if refused else f"schema id {sid} was not looked up in the registry")

    def header(self) -> bytes:
        """The wire-format header of a record this codec writes."""
        if self.writer_id is None:
            raise ValueError(f"codec {self.name}: no registry id for the schema it writes (give `subject` and a schema)")
        return wire_header(self.writer_id)
