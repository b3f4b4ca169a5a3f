"""``type: http``: send records to an HTTP endpoint (aiohttp client).

``batch: true`` (default) sends a whole batch, joined by the postprocessors (lines by
default), in one request; ``batch: false`` sends one request per chunk, ``concurrency``
at a time (with ``postprocessors: []`` a chunk is one record).

**Confirmed** means: the server answered the request with a ``2xx`` status. Every other
outcome is a retry or an ``err``, never a success:

- connection errors, timeouts (also while reading the answer), ``408``, ``425``, ``429``
  and ``5xx`` are retried with exponential backoff (honouring ``Retry-After``); when the
  retries are used up the write raises and the runtime retries the batch later;
- a redirect (``3xx``) is not followed (a ``301``/``302``/``303`` would turn the POST into a
  GET without the records, and the records would go to an address nobody configured): the
  records go to the ``err`` port with the ``Location`` named, so that ``url`` can be fixed;
- other ``4xx`` answers are final: the records go to the ``err`` port, never resent.

With ``batch: false``, requests of one batch that were confirmed are never sent again
when others of the batch fail: only the failed ones are retried.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import aiohttp
from pydantic import Field

from headrace.contract.backoff import Backoff
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.paths import SettingError
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.units import Duration
from headrace.plugins.tls import TlsConfig, check_tls, client_context

log = logging.getLogger("headrace.plugins.http")

SAMPLE = 200  # characters of a refusing response's body kept in the reason
RETRY_STATUSES = frozenset({408, 425, 429})  # 4xx answers that say "later", not "never"


class HttpOfframpConfig(PluginConfig):
    url: str = Field(pattern=r"^https?://", description="endpoint to send to")
    method: Literal["POST", "PUT", "PATCH"] = Field("POST", description="HTTP method")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers, e.g. Content-Type or Authorization")
    batch: bool = Field(True, description="one request per batch (true) or one per chunk (false)")
    concurrency: int = Field(4, ge=1, le=1024, description="requests in flight at once (batch: false)")
    timeout: Duration = Field(30.0, gt=0, description="time allowed for one request, response included")
    retries: int = Field(5, ge=0, description="retries of one request on connection errors, timeouts, 408, 425, 429 and 5xx")
    backoff_initial: Duration = Field(0.1, gt=0, description="first wait between retries; doubles each time")
    backoff_max: Duration = Field(10.0, gt=0, description="longest wait between retries (also caps Retry-After)")
    tls: TlsConfig | None = Field(None, description="for an https url (see reference/tls.md): the CAs to verify the server against "
                                  "(default: the system's), a client certificate, the name to verify")


class HttpRetryable(Exception):
    """A request that may succeed later: connection error, timeout, 408, 425, 429 or 5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HttpRefused(Exception):
    """A final answer (a redirect, or a 4xx other than 408, 425, 429): sending the same request again cannot help."""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


class HttpOfframp(Offramp):
    name = "http"
    Config = HttpOfframpConfig
    summary = "send records to an HTTP endpoint (batched or one per request); retries 429/5xx/connection errors, 4xx go to err"
    default_postprocessors = ("lines",)
    example = '{type: http, codec: json, config: {url: "http://127.0.0.1:8080/ingest", headers: {Content-Type: application/x-ndjson}}}'

    def __init__(self, config: HttpOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.session: aiohttp.ClientSession | None = None
        self.limit = asyncio.Semaphore(config.concurrency)
        self._warned_joined = False

    def check(self) -> None:
        check_tls(self.cfg.tls, listening=False)
        if self.cfg.tls is not None and not self.cfg.url.startswith("https://"):
            raise SettingError("tls", "tls is for an https:// url")
        if self.cfg.tls is not None and self.cfg.tls.server_name is not None:
            raise SettingError("tls", "server_name: the http offramp verifies the url's host name")

    async def start(self) -> None:
        tls = self.cfg.tls
        context = client_context(tls, self.context.base_dir) if tls is not None else True  # True: aiohttp's default verification
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
            connector=aiohttp.TCPConnector(limit=self.cfg.concurrency, ssl=context),
            headers=self.cfg.headers,
        )

    async def _send_once(self, body: bytes) -> None:
        assert self.session is not None, "start() was not called"
        where = f"{self.cfg.method} {self.cfg.url}"
        try:
            # a redirect is an answer, not a confirmation: it is not followed (see the module doc)
            async with self.session.request(self.cfg.method, self.cfg.url, data=body, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    await resp.read()
                    return
                text = (await resp.text(errors="replace"))[:SAMPLE].strip()
                msg = f"{where} -> {resp.status} {resp.reason}" + (f": {text}" if text else "")
                if resp.status in RETRY_STATUSES or resp.status >= 500:
                    raise HttpRetryable(msg, _retry_after(resp.headers.get("Retry-After")))
                if 300 <= resp.status < 400:
                    location = resp.headers.get("Location")
                    msg = f"{where} -> {resp.status} {resp.reason}, redirected to {location!r}: redirects are not followed; set url to the final address"
                raise HttpRefused(msg)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HttpRetryable(f"{where} failed: {type(exc).__name__}: {exc}") from exc

    async def send(self, body: bytes) -> None:
        """One request, retried with backoff; raises ``HttpRetryable`` when retries are used up, ``HttpRefused`` at once."""
        backoff = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max)
        async with self.limit:
            for attempt in range(self.cfg.retries + 1):
                try:
                    await self._send_once(body)
                    return
                except HttpRetryable as exc:
                    if attempt == self.cfg.retries:
                        raise
                    delay = backoff.next()
                    if exc.retry_after is not None:
                        delay = min(max(exc.retry_after, delay), self.cfg.backoff_max)
                    log.warning("%s: %s; retry %d/%d in %.2fs", self.context.component_id, exc, attempt + 1, self.cfg.retries, delay)
                    await asyncio.sleep(delay)

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        if not chunks:
            return None
        if self.cfg.batch:
            try:
                await self.send(b"".join(chunks))
            except HttpRefused as exc:
                log.error("%s: %s; %d event(s) to err", self.context.component_id, exc, events)
                return [(i, str(exc)) for i in range(events)]
            return None
        if len(chunks) != events and not self._warned_joined:
            self._warned_joined = True
            log.warning("%s: batch: false, but the postprocessors joined %d event(s) into %d chunk(s); "
                        "use postprocessors: [] for one request per event", self.context.component_id, events, len(chunks))  # fmt: skip
        results = await asyncio.gather(*(self.send(c) for c in chunks), return_exceptions=True)
        refused = [(i, r) for i, r in enumerate(results) if isinstance(r, HttpRefused)]
        failed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, HttpRefused)]
        if refused:
            log.error("%s: %d request(s) refused; first: %s", self.context.component_id, len(refused), refused[0][1])
        if len(chunks) != events:  # a chunk holds several events: all of them share its fate
            if failed:
                raise failed[0]
            return [(i, str(refused[0][1])) for i in range(events)] if refused else None
        rejections = [(i, str(exc)) for i, exc in refused]
        if failed:  # retryable after all retries (or unexpected): only these requests are sent again
            raise PartialWrite(failed[0], [i for i, r in enumerate(results) if r is None], rejections)
        return rejections or None

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
