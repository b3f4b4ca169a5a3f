"""``type: nats``: publish records to NATS, by default to JetStream with an acknowledgement.

With ``jetstream: true`` (default) each record is published to ``subject`` and the write is
**confirmed** once the stream acknowledged every record of the batch (the publishes of a batch
are in flight together). A batch with a failed or timed-out publish is retried whole by the
runtime with backoff, so records the stream had stored before the failure can appear twice
(at least once).

``jetstream: false`` publishes plain NATS messages: confirmed once the server has them
(a flush), delivered to whoever subscribes at that moment: at most once. ``subject_from_meta``
names a meta key choosing each record's subject. Needs the ``nats-py`` package (``pip install
headrace[nats]``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas, destinations
from headrace.contract.sink import Offramp, Rejections
from headrace.contract.units import Duration

log = logging.getLogger("headrace.nats")


class NatsOfframpConfig(PluginConfig):
    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"], min_length=1, description="NATS server URLs")
    subject: str = Field(min_length=1, description="the subject to publish to")
    subject_from_meta: str | None = Field(None, min_length=1, description="a meta key naming each record's subject (else `subject`)")
    jetstream: bool = Field(True, description="publish to JetStream and wait for its acknowledgement (false: plain NATS, at most once)")
    timeout: Duration = Field(10.0, gt=0, description="how long a publish waits for its acknowledgement")


class NatsOfframp(Offramp):
    name = "nats"
    Config = NatsOfframpConfig
    summary = "publish records to NATS JetStream (acknowledged, a batch in flight together) or plain NATS; retried whole"
    example = "{type: nats, codec: json, config: {servers: ['nats://127.0.0.1:4222'], subject: events.out}}"
    coalesce_events = 1024

    def __init__(self, config: NatsOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.nc: Any = None
        self.js: Any = None

    async def start(self) -> None:
        try:
            import nats
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the nats offramp needs the nats-py package: pip install 'headrace[nats]'") from exc
        cid = self.context.component_id

        async def error(exc: Exception) -> None:
            log.warning("nats offramp %s: %s", cid, exc)

        self.nc = await nats.connect(self.cfg.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5, error_cb=error)
        self.js = self.nc.jetstream(timeout=self.cfg.timeout)

    async def stop(self) -> None:
        if self.nc is not None:
            nc, self.nc = self.nc, None
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except Exception:
                await nc.close()

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        if self.nc is None:
            await self.start()
        subjects = destinations(self.cfg.subject, self.cfg.subject_from_meta, len(chunks), metas if len(chunks) == events else None)
        try:
            if not self.cfg.jetstream:
                for subject, data in zip(subjects, chunks, strict=True):
                    await self.nc.publish(subject, data)
                await self.nc.flush(timeout=self.cfg.timeout)
                return None
            publish = self.js.publish
            results = await asyncio.gather(*(publish(s, d) for s, d in zip(subjects, chunks, strict=True)), return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:  # the batch is retried whole (each publish was awaited: none is left running)
                raise failed
        except TimeoutError as exc:  # the client's timeouts are TimeoutErrors: say what did not answer, as a failed write
            raise ConnectionError(f"no acknowledgement from {'JetStream' if self.cfg.jetstream else 'the server'} within "
                                  f"{self.cfg.timeout:g}s (is the server up, and a stream bound to the subject?)") from exc
        return None
