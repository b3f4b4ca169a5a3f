"""``type: mqtt``: publish records to an MQTT topic with QoS 1 (or 0).

With ``qos: 1`` (default) a write is **confirmed** once the broker acknowledged (``PUBACK``)
every message of the batch; a batch not acknowledged within ``timeout`` is retried whole by the
runtime, so the broker may get some messages twice (at least once). While the client is not
connected, a write fails at once (the runtime retries it with backoff) instead of queueing. With ``qos: 0`` a write is
confirmed once paho handed it to the socket: at most once. ``topic_from_meta`` names a meta key
choosing each record's topic. Needs ``paho-mqtt`` (``pip install headrace[mqtt]``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas, destinations
from headrace.contract.sink import Offramp, Rejections
from headrace.contract.units import Duration
from headrace.plugins.mqtt_client import MqttConnection, close_client, make_client
from headrace.plugins.tls import check_tls


class MqttOfframpConfig(MqttConnection):
    topic: str = Field(min_length=1, description="the topic to publish to")
    topic_from_meta: str | None = Field(None, min_length=1, description="a meta key naming each record's topic (else `topic`)")
    qos: Literal[0, 1] = Field(1, description="1: wait for the broker's PUBACK (at least once); 0: at most once")
    retain: bool = Field(False, description="publish retained messages")
    timeout: Duration = Field(10.0, gt=0, description="how long a batch waits for the broker's acknowledgements")


class MqttOfframp(Offramp):
    name = "mqtt"
    Config = MqttOfframpConfig
    summary = "publish records to MQTT with QoS 1 (confirmed by PUBACK, a batch in flight together) or 0; retried whole"
    example = "{type: mqtt, codec: json, config: {host: 127.0.0.1, topic: alerts}}"
    coalesce_events = 1024

    def __init__(self, config: MqttOfframpConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.client: Any = None
        # publishes awaiting their PUBACK, by message id (paho's callback runs on the loop after publish() returned the id)
        self.waiting: dict[int, asyncio.Future[None]] = {}

    def check(self) -> None:
        check_tls(self.cfg.tls, listening=False)

    def _published(self, mid: int) -> None:
        fut = self.waiting.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def start(self) -> None:
        self.client = make_client(self.cfg, self.context.component_id, self.context.base_dir, manual_ack=False, on_publish=self._published)

    async def stop(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await asyncio.get_running_loop().run_in_executor(None, close_client, client)

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> Rejections:
        if self.client is None:
            await self.start()
        if not self.client.is_connected():  # fail fast: what paho would queue now is sent again by the runtime's retry anyway
            raise ConnectionError(f"not connected to the broker {self.cfg.host}:{self.cfg.port} (reconnecting)")
        loop = asyncio.get_running_loop()
        futures = []
        topics = destinations(self.cfg.topic, self.cfg.topic_from_meta, len(chunks), metas if len(chunks) == events else None)
        for topic, data in zip(topics, chunks, strict=True):
            info = self.client.publish(topic, data, qos=self.cfg.qos, retain=self.cfg.retain)
            if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (queued until the reconnect)
                raise ConnectionError(f"paho did not take the message: {info.rc}")
            if self.cfg.qos == 0:
                continue
            fut = self.waiting[info.mid] = loop.create_future()
            futures.append(fut)
        if not futures:
            return None
        try:
            await asyncio.wait_for(asyncio.gather(*futures), self.cfg.timeout)
        except TimeoutError:
            for mid in [m for m, f in self.waiting.items() if f in futures]:
                self.waiting.pop(mid, None)
            raise ConnectionError(f"the broker {self.cfg.host}:{self.cfg.port} did not acknowledge {sum(not f.done() for f in futures)} of "
                                  f"{len(futures)} message(s) within {self.cfg.timeout:g}s") from None  # fmt: skip
        return None
