"""``type: mqtt``: subscribe to MQTT topics with QoS 1 in a persistent session, at least once.

The onramp subscribes to ``topics`` (filters, ``+`` and ``#`` allowed) with QoS 1 as a client
whose session the broker keeps (``clean_session: false``, a stable ``client_id``), and
acknowledges a message (``PUBACK``) only once every event made from it is done (delivered by
every offramp, routed to ``err``, or filtered). A message not acknowledged when the daemon dies
is sent again by the broker when the session reconnects; what was published meanwhile waits in
the session (mosquitto keeps 1000 per client by default: raise ``max_queued_messages`` for
long outages). The broker sends at most its ``max_inflight_messages`` unacknowledged messages at
a time (mosquitto: 20 by default; raise it for throughput). A broker that goes away is
reconnected to with backoff. The onramp is ready (``/ready``) once the broker acknowledged its
subscription.

Each event's meta: ``mqtt_topic``, ``mqtt_retain`` (a retained message sent at subscription) and
``mqtt_dup`` (the broker sent it before). Needs ``paho-mqtt`` (``pip install headrace[mqtt]``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import Field

from headrace.contract.context import PluginContext
from headrace.contract.metas import COLUMN, CONST, MetaColumns
from headrace.contract.source import Onramp, OnrampSink
from headrace.plugins.mqtt_client import MqttConnection, close_client, make_client
from headrace.plugins.tls import check_tls

log = logging.getLogger("headrace.mqtt")


class MqttOnrampConfig(MqttConnection):
    topics: list[str] = Field(min_length=1, description="topic filters to subscribe to (QoS 1)")
    batch: int = Field(512, ge=1, le=100_000, description="messages handed on at most at once")


class MqttOnramp(Onramp):
    name = "mqtt"
    Config = MqttOnrampConfig
    summary = "subscribe to MQTT topics with QoS 1 in a persistent session; PUBACK once delivered; meta mqtt_topic"
    example = "{type: mqtt, codec: json, config: {host: 127.0.0.1, topics: ['sensors/#']}}"

    def __init__(self, config: MqttOnrampConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.client: Any = None
        self.queue: asyncio.Queue[list[Any]] = asyncio.Queue()  # runs of messages from paho's thread

    def check(self) -> None:
        check_tls(self.cfg.tls, listening=False)

    async def start(self) -> None:
        def subscribe(client: Any) -> None:
            client.subscribe([(t, 1) for t in self.cfg.topics])

        def subscribed() -> None:
            self.ready = True  # ready once the broker holds the subscription: from then on the session keeps what comes

        self.client = make_client(self.cfg, self.context.component_id, self.context.base_dir, manual_ack=True,
                                  on_connect=subscribe, on_message=self.queue.put_nowait, on_subscribed=subscribed)  # fmt: skip

    async def stop(self) -> None:
        self.ready = False
        if self.client is not None:
            client, self.client = self.client, None
            await asyncio.get_running_loop().run_in_executor(None, close_client, client)

    async def run(self, sink: OnrampSink) -> None:
        if self.client is None:
            await self.start()
        queue = self.queue
        batch = self.cfg.batch
        while True:
            msgs = await queue.get()
            while len(msgs) < batch and not queue.empty():
                msgs += queue.get_nowait()
            for start in range(0, len(msgs), batch):
                part = msgs[start : start + batch]
                topics = [m.topic for m in part]
                metas = MetaColumns(len(part), [
                    ("mqtt_topic", CONST, topics[0]) if topics.count(topics[0]) == len(topics) else ("mqtt_topic", COLUMN, topics),
                    ("mqtt_retain", COLUMN, [bool(m.retain) for m in part]), ("mqtt_dup", COLUMN, [bool(m.dup) for m in part]),
                ])  # fmt: skip
                await sink.records([m.payload for m in part], metas, ack=[(m.mid, m.qos) for m in part])

    def ack(self, token: Any) -> None:
        client = self.client
        if client is None:
            return  # stopped: the broker sends them again to the next session
        for mid, qos in token:
            if qos > 0:
                client.ack(mid, qos)

    def fail(self, token: Any) -> None:
        log.error("mqtt onramp %s: %d message(s) were not delivered; not acknowledged, the broker sends them again when the session "
                  "reconnects (at the next start)", self.context.component_id, len(token))  # fmt: skip
