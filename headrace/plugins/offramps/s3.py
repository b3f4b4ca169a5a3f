"""``type: s3``: write records into objects of an S3 bucket (AWS or any S3-compatible store).

Records are framed (by default one a line), gathered into an open object per key prefix and
compressed as they come (``compression: gzip`` or ``zstd``). An object **closes** when it
holds ``batch.max_events`` records, or ``batch.max_bytes`` bytes of records (encoded, before
framing and compression: the record that reaches the bound is the object's last), or when it
has been open for ``batch.timeout`` (the settings of Vector's ``aws_s3`` sink); then it is
uploaded: one ``PutObject``, or, once its compressed bytes reach ``part_size`` (at least
5 MiB), a multipart upload whose parts are sent while the object still fills, and
``CompleteMultipartUpload`` when it closes.

**Confirmed** means: the object's ``PutObject`` (or ``CompleteMultipartUpload``) succeeded.
A write returns only then, so the records of an object are acked upstream together, after
the upload; the runtime keeps up to ``max_in_flight`` writes waiting on open objects (when
that many wait, every open object closes at once, so a full pipe never waits out
``batch.timeout``). A failed upload fails the writes of its records: the runtime retries
them with backoff (``headrace_offramp_state`` shows ``retrying``) into a new object, and an
unfinished multipart upload is aborted. When a write had records in an uploaded object
and others in a failed one, only the failed ones are retried. An upload that succeeded on
the server while its answer was lost is retried too: those records are then in two objects
(at least once). At the end of the input (a drain on SIGTERM, a reload that changes the
offramp) every open object closes and is uploaded before the offramp stops.

``key`` is a template: ``{meta.KEY}`` (a metadata value), ``{uuid}`` (a new random id per
object; required, so that two objects of one prefix never overwrite each other) and
strftime codes such as ``%Y/%m/%d`` (the write time, UTC). Records whose key renders to the
same text (apart from ``{uuid}``) share an object. Keys are confined to the template's
fixed prefix: a meta value that is missing, empty, ``.`` or ``..``, or holds ``/``, ``\\``
or a control character is refused, as is a key longer than 1024 bytes, and that record goes
to the offramp's ``err`` port with the reason (the rest of the batch is written).

Every error of an upload is retried (a bucket that does not exist or a denied access can be
fixed while the records wait, unacked); the offramp's ``retry: {max_attempts, max_elapsed}``
bounds that, and then the records go to ``err``. Until its object is uploaded a record is held
in memory twice: in the object (compressed) and in its write (for a retry), so the memory of
the offramp is about ``batch.max_bytes`` per key prefix open at once. Compression runs on a
thread for writes over 64 KiB (zlib and zstd release the GIL), in order per object. With
``buffer: {type: disk}`` the runtime writes one at a time from the buffer, so each write's
records close their objects at once (an object per write of the buffer: up to 8,192 records
or 4 MiB).

The client is ``aiobotocore`` (``pip install headrace[s3]``): ``region``, ``endpoint_url``
(MinIO, moto, Ceph ...), ``force_path_style`` (``bucket`` in the path, not the host name),
and the credentials ``access_key_id``/``secret_access_key``/``session_token`` (use
``${VAR}``; without them botocore's usual chain: the ``AWS_*`` variables, the shared
credentials file, an instance role). ``zstd`` needs the ``zstandard`` package
(``headrace[compression]``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
import zlib
from typing import Any, Literal

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.units import Duration, Size

log = logging.getLogger("headrace.s3")

MIN_PART = 5 * 2**20  # S3's smallest part (all but the last)
MAX_KEY = 1024  # bytes of UTF-8
INLINE = 64 * 1024  # records of a write up to this size are compressed on the loop (a thread hop costs more)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_META = re.compile(r"meta\.([A-Za-z_][A-Za-z0-9_]*)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class S3Batch(PluginConfig):
    max_bytes: Size = Field(10_000_000, ge=1, description="an object closes once its records (encoded, before framing and compression) reach this size")
    max_events: int | None = Field(None, ge=1, description="an object closes once it holds this many records (default: no bound)")
    timeout: Duration = Field(300.0, gt=0, description="an object closes this long after its first record")


class S3OfframpConfig(PluginConfig):
    bucket: str = Field(min_length=3, max_length=63, description="the bucket (it must exist)")
    key: str = Field(min_length=1, description="object key template: {meta.KEY}, {uuid} (required), strftime codes (UTC); "
                     "e.g. logs/%Y/%m/%d/{uuid}.ndjson.gz")
    batch: S3Batch = Field(default_factory=lambda: S3Batch(), description="when an object closes: {max_bytes: 10MB (its records' bytes "
                        "before framing and compression), max_events: none, timeout: 5m}, whichever comes first")
    compression: Literal["none", "gzip", "zstd"] = Field("gzip", description="compression of each object (zstd: headrace[compression])")
    level: int | None = Field(None, ge=1, le=22, description="compression level (default: gzip 6, zstd 3)")
    part_size: Size = Field(8 * 2**20, ge=MIN_PART, le=5 * 2**30, description="an object whose compressed size reaches this is sent as a "
                            "multipart upload, in parts of this size")
    content_type: str = Field("application/octet-stream", min_length=1, description="the objects' Content-Type")
    storage_class: str | None = Field(None, min_length=1, description="the objects' storage class (STANDARD, STANDARD_IA, ...)")
    region: str = Field("us-east-1", min_length=1, description="the bucket's region")
    endpoint_url: str | None = Field(None, pattern=r"^https?://", description="an S3-compatible endpoint (default: AWS)")
    force_path_style: bool = Field(False, description="address the bucket in the path (http://host/bucket/key), as most S3-compatible stores want")
    access_key_id: str | None = Field(None, min_length=1, description="access key (use ${VAR}; default: botocore's credential chain)")
    secret_access_key: str | None = Field(None, min_length=1, description="secret key (use ${VAR})")
    session_token: str | None = Field(None, min_length=1, description="session token of temporary credentials (use ${VAR})")
    timeout: Duration = Field(60.0, gt=0, description="how long one request (a PUT, a part) may take before it fails and is retried")
    max_in_flight: int = Field(256, ge=1, le=65536, description="writes waiting on open objects; when that many wait, every open object closes")


class KeyRefused(ValueError):
    pass


class OpenObject:
    """An object being filled: its compressed bytes not sent yet, the parts already sent, its outcome."""

    __slots__ = ("compressing", "compressor", "done", "events", "key", "opened", "parts", "pending", "pending_size", "prefix", "raw", "sending",
                 "timer", "upload_id")  # fmt: skip

    def __init__(self, prefix: tuple[str, ...], compressor: Any, done: asyncio.Future[None]) -> None:
        self.prefix = prefix
        self.key = uuid.uuid4().hex.join(prefix)
        self.compressor = compressor
        self.done = done  # its upload's outcome
        self.events = 0
        self.raw = 0  # bytes of records, before framing and compression
        self.pending: list[bytes] = []  # compressed, not sent yet
        self.pending_size = 0
        self.opened = time.monotonic()
        self.sending: asyncio.Task[None] | None = None  # the last part upload (each awaits the one before)
        self.compressing: asyncio.Task[None] | None = None  # the last compression job on a thread (each awaits the one before)
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.timer: asyncio.TimerHandle | None = None


class _Plain:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def _retrieved(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # nobody may await a failed object (its writes were cancelled): no "never retrieved" warning


class S3Offramp(Offramp):
    name = "s3"
    Config = S3OfframpConfig
    summary = "write records into S3 objects closed by size, count or age (gzip/zstd, multipart); acked once the object is uploaded"
    default_postprocessors = ("lines",)
    example = "{type: s3, codec: json, config: {bucket: logs, key: 'app/{meta.app}/%Y/%m/%d/{uuid}.ndjson.gz', batch: {timeout: 60s}}}"
    frames_itself = True
    coalesce_events = 8192

    def __init__(self, config: S3OfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.max_in_flight = config.max_in_flight
        self.parts = config.key.split("{uuid}")
        self.templated = [bool(_PLACEHOLDER.search(p)) or "%" in p for p in self.parts]
        self.by_meta = any(_PLACEHOLDER.search(p) for p in self.parts)
        self.client: Any = None
        self._cm: Any = None
        self.open: dict[tuple[str, ...], OpenObject] = {}
        self.uploads: set[asyncio.Task[None]] = set()
        self.waiting = 0  # writes waiting on their objects
        self.closing = False  # the input ended: every write's objects close at once

    def check(self) -> None:
        key = self.cfg.key
        if "{uuid}" not in key:
            raise ValueError("key must hold {uuid}: two objects of the same prefix would overwrite each other")
        if key.startswith("/"):
            raise ValueError("key must not start with '/'")
        for m in _PLACEHOLDER.finditer(key):
            if m.group(1) != "uuid" and not _META.match(m.group(1)):
                raise ValueError(f"key: unknown placeholder {m.group(0)} (use {{meta.KEY}} or {{uuid}})")
        if re.sub(_PLACEHOLDER, "", key).count("{") or re.sub(_PLACEHOLDER, "", key).count("}"):
            raise ValueError("key: an unmatched '{' or '}'")
        try:
            time.strftime(key, time.gmtime())
        except ValueError as exc:
            raise ValueError(f"key: {exc}") from None
        if self.cfg.compression == "zstd":
            try:
                import zstandard  # noqa: F401
            except ImportError:
                raise ValueError("compression: zstd needs the zstandard package: pip install 'headrace[compression]'") from None
        if self.cfg.compression == "gzip" and self.cfg.level is not None and self.cfg.level > 9:
            raise ValueError(f"level: gzip's levels are 1 to 9, not {self.cfg.level}")
        if (self.cfg.access_key_id is None) != (self.cfg.secret_access_key is None):
            raise ValueError("give access_key_id and secret_access_key together")

    # -- keys ------------------------------------------------------------------------------------
    def prefix_for(self, meta: dict[str, Any], now: time.struct_time) -> tuple[str, ...]:
        """The key without its uuid (the parts around it), for one record."""

        def value(m: re.Match[str]) -> str:
            name = m.group(1)[5:]
            v = meta.get(name)
            if v is None:
                raise KeyRefused(f"meta key '{name}' of the key template is missing")
            text = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            if not text or "/" in text or "\\" in text or text in (".", "..") or _CONTROL.search(text):
                raise KeyRefused(f"meta key '{name}' = {text!r} cannot be a part of an object key")
            return text.replace("%", "%%")

        out = tuple(time.strftime(_PLACEHOLDER.sub(value, p), now) if t else p for p, t in zip(self.parts, self.templated, strict=True))
        if sum(len(p.encode()) for p in out) + 32 * (len(out) - 1) > MAX_KEY:
            raise KeyRefused(f"the object key {'{uuid}'.join(out)[:80]!r}... is longer than {MAX_KEY} bytes")
        return out

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the s3 offramp needs the aiobotocore package: pip install 'headrace[s3]'") from exc
        cfg = self.cfg
        config = AioConfig(connect_timeout=min(cfg.timeout, 10.0), read_timeout=cfg.timeout, retries={"total_max_attempts": 1},
                           s3={"addressing_style": "path" if cfg.force_path_style else "auto"})  # fmt: skip
        self._cm = get_session().create_client("s3", region_name=cfg.region, endpoint_url=cfg.endpoint_url, aws_access_key_id=cfg.access_key_id,
                                               aws_secret_access_key=cfg.secret_access_key, aws_session_token=cfg.session_token,
                                               config=config)  # fmt: skip
        self.client = await self._cm.__aenter__()
        self.closing = False

    async def flush(self) -> None:
        """Close every open object and wait for the uploads; from now on each write's objects close at once
        (called when the input ended: a drain, a reload)."""
        self.closing = True
        for obj in list(self.open.values()):
            self._close(obj)
        if self.uploads:
            await asyncio.wait(list(self.uploads))

    async def stop(self) -> None:
        for obj in list(self.open.values()):
            if obj.timer is not None:
                obj.timer.cancel()
            if not obj.done.done():
                obj.done.set_exception(ConnectionError("the offramp stopped before the object was uploaded"))
        self.open.clear()
        for task in list(self.uploads):
            task.cancel()
        if self.uploads:
            await asyncio.gather(*self.uploads, return_exceptions=True)
        if self._cm is not None:
            cm, self._cm, self.client = self._cm, None, None
            await cm.__aexit__(None, None, None)

    # -- writing ---------------------------------------------------------------------------------
    def _compressor(self) -> Any:
        cfg = self.cfg
        if cfg.compression == "gzip":
            return zlib.compressobj(cfg.level or 6, zlib.DEFLATED, 31)  # 31: a gzip member
        if cfg.compression == "zstd":
            import zstandard

            return zstandard.ZstdCompressor(level=cfg.level or 3).compressobj()
        return _Plain()

    def _object(self, prefix: tuple[str, ...]) -> OpenObject:
        obj = self.open.get(prefix)
        if obj is None:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[None] = loop.create_future()
            done.add_done_callback(_retrieved)
            obj = self.open[prefix] = OpenObject(prefix, self._compressor(), done)
            obj.timer = loop.call_later(self.cfg.batch.timeout, self._close, obj)
        return obj

    def _add(self, obj: OpenObject, records: list[bytes], raw: int) -> None:
        data = b"".join(self.postprocess(records))
        obj.events += len(records)
        obj.raw += raw
        if obj.sending is not None and obj.sending.done() and not obj.sending.cancelled() and obj.sending.exception() is not None:
            self._close(obj)  # a part failed: the object fails now, its writes are retried into a new one
            return
        if (len(data) < INLINE or self.cfg.compression == "none") and obj.compressing is None:
            self._compressed(obj, obj.compressor.compress(data))
            return
        # larger data is compressed on a thread (zlib and zstd let go of the GIL), in order: each job awaits the one before
        task = asyncio.create_task(self._compress(obj, data, obj.compressing))
        obj.compressing = task
        self.uploads.add(task)
        task.add_done_callback(self.uploads.discard)

    async def _compress(self, obj: OpenObject, data: bytes, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await before
        out = await asyncio.get_running_loop().run_in_executor(None, obj.compressor.compress, data)
        if obj.compressing is asyncio.current_task():
            obj.compressing = None  # the last job: small data may be compressed inline again
        self._compressed(obj, out)

    def _compressed(self, obj: OpenObject, data: bytes) -> None:
        if data:
            obj.pending.append(data)
            obj.pending_size += len(data)
        if obj.pending_size >= self.cfg.part_size:
            self._send_part(obj)

    def _send_part(self, obj: OpenObject) -> None:
        """Send the pending bytes as parts of exactly ``part_size``; what is left stays pending."""
        data = b"".join(obj.pending)
        size = self.cfg.part_size
        whole = len(data) - len(data) % size
        rest = data[whole:]
        obj.pending, obj.pending_size = ([rest] if rest else []), len(rest)
        for at in range(0, whole, size):
            task = asyncio.create_task(self._part(obj, data[at : at + size], obj.sending))
            obj.sending = task
            self.uploads.add(task)
            task.add_done_callback(self.uploads.discard)

    async def _part(self, obj: OpenObject, data: bytes, before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await before  # parts are numbered in order; a failed one fails the rest
        cfg = self.cfg
        if obj.upload_id is None:
            answer = await self.client.create_multipart_upload(Bucket=cfg.bucket, Key=obj.key, **self._headers())
            obj.upload_id = answer["UploadId"]
        number = len(obj.parts) + 1
        answer = await self.client.upload_part(Bucket=cfg.bucket, Key=obj.key, UploadId=obj.upload_id, PartNumber=number, Body=data)
        obj.parts.append({"ETag": answer["ETag"], "PartNumber": number})

    def _headers(self) -> dict[str, str]:
        cfg = self.cfg
        out = {"ContentType": cfg.content_type}
        if cfg.compression != "none":
            out["ContentEncoding"] = cfg.compression
        if cfg.storage_class:
            out["StorageClass"] = cfg.storage_class
        return out

    def _close(self, obj: OpenObject) -> None:
        if self.open.get(obj.prefix) is not obj:
            return  # closed already
        del self.open[obj.prefix]
        if obj.timer is not None:
            obj.timer.cancel()
        task = asyncio.create_task(self._upload(obj))
        self.uploads.add(task)
        task.add_done_callback(self.uploads.discard)

    async def _upload(self, obj: OpenObject) -> None:
        cfg = self.cfg
        try:
            if obj.compressing is not None:
                await obj.compressing  # what the object's writes handed over is all compressed
            tail = obj.compressor.flush()
            data = b"".join([*obj.pending, tail])
            obj.pending = []
            if obj.sending is None:
                await self.client.put_object(Bucket=cfg.bucket, Key=obj.key, Body=data, **self._headers())
            else:
                if data:
                    await self._part(obj, data, obj.sending)
                else:
                    await obj.sending
                await self.client.complete_multipart_upload(Bucket=cfg.bucket, Key=obj.key, UploadId=obj.upload_id,
                                                            MultipartUpload={"Parts": obj.parts})  # fmt: skip
        except asyncio.CancelledError:
            if not obj.done.done():
                obj.done.set_exception(ConnectionError("the offramp stopped while the object was uploaded"))
            raise
        except Exception as exc:
            log.warning("offramp %s: upload of s3://%s/%s (%d records) failed: %s", self.context.component_id, cfg.bucket, obj.key,
                        obj.events, exc)  # fmt: skip
            if not obj.done.done():
                obj.done.set_exception(exc)
            if obj.upload_id is not None:
                try:
                    await asyncio.wait_for(self.client.abort_multipart_upload(Bucket=cfg.bucket, Key=obj.key, UploadId=obj.upload_id), 5.0)
                except Exception:
                    pass  # the bucket's lifecycle rule for incomplete uploads cleans up what this could not
            return
        if not obj.done.done():
            obj.done.set_result(None)

    def _due(self, obj: OpenObject) -> bool:
        b = self.cfg.batch
        return obj.raw >= b.max_bytes or (b.max_events is not None and obj.events >= b.max_events)

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        if self.client is None:
            await self.start()
        rejected: list[tuple[int, str]] = []
        groups: dict[tuple[str, ...], list[int]] = {}
        now = time.gmtime()
        if not self.by_meta:  # one prefix for the whole write
            try:
                groups[self.prefix_for({}, now)] = list(range(len(chunks)))
            except KeyRefused as exc:
                rejected = [(i, str(exc)) for i in range(len(chunks))]
        else:
            for i in range(len(chunks)):
                try:
                    prefix = self.prefix_for(metas[i] if metas is not None else {}, now)
                except KeyRefused as exc:
                    rejected.append((i, str(exc)))
                    continue
                groups.setdefault(prefix, []).append(i)
        mine: list[tuple[OpenObject, list[int]]] = []
        limits = self.cfg.batch
        for prefix, idx in groups.items():
            start = 0
            while start < len(idx):
                obj = self._object(prefix)
                room = len(idx) - start if limits.max_events is None else min(len(idx) - start, limits.max_events - obj.events)
                end, size, left = start, 0, limits.max_bytes - obj.raw
                while end - start < room:
                    size += len(chunks[idx[end]])
                    end += 1
                    if size >= left:
                        break
                piece = idx[start:end]
                self._add(obj, [chunks[i] for i in piece], size)
                mine.append((obj, piece))
                if self._due(obj):
                    self._close(obj)
                start = end
        self.waiting += 1
        try:
            if self.closing or self.waiting >= self.max_in_flight:  # the runtime can hand no more: send what is open
                for obj in list(self.open.values()):
                    self._close(obj)
            futures = {obj.done for obj, _ in mine}
            if futures:
                await asyncio.wait(futures)  # not cancelled with this write: the object is shared
        finally:
            self.waiting -= 1
        delivered: list[int] = []
        failure: BaseException | None = None
        for obj, piece in mine:
            err = obj.done.exception()
            if err is None:
                delivered += piece
            else:
                failure = failure or err
        if failure is not None:
            if not delivered and not rejected:
                raise failure
            raise PartialWrite(failure, delivered, rejected)
        return rejected or None
