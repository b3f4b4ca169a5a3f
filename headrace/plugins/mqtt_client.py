"""The MQTT client the mqtt onramp and offramp share: paho-mqtt's network thread, bridged to asyncio.

paho runs its own thread (``loop_start``: reading, writing, keep-alive, reconnecting with
backoff); its callbacks hand what they get to the event loop with ``call_soon_threadsafe``
(messages in runs: the loop is woken once for all that arrived meanwhile).
Its ``publish`` and ``ack`` are safe to call from the event loop (paho queues the packet under
its own lock).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.plugins.tls import TlsConfig

log = logging.getLogger("headrace.mqtt")


class MqttConnection(PluginConfig):
    host: str = Field("127.0.0.1", description="broker address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 is the usual one with tls)")
    client_id: str | None = Field(None, min_length=1, max_length=128, description="the session's client id (default: headrace-<hostname>-"
                                  "<component id>); stable, so the broker keeps the session across restarts")
    username: str | None = Field(None, description="user name (use ${VAR})")
    password: str | None = Field(None, description="password (use ${VAR})")
    keepalive: int = Field(30, ge=5, le=65535, description="seconds between keep-alive pings")
    tls: TlsConfig | None = Field(None, description="connect with TLS (see reference/tls.md)")


def make_client(cfg: MqttConnection, component: str, base_dir: Any, manual_ack: bool, on_connect: Callable[[Any], None] | None = None,
                on_message: Callable[[list[Any]], None] | None = None, on_publish: Callable[[int], None] | None = None,
                on_subscribed: Callable[[], None] | None = None) -> Any:  # fmt: skip
    """A connected-in-the-background paho client with a persistent session; callbacks run on the event loop."""
    try:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
    except ImportError as exc:  # an optional extra
        raise RuntimeError("the mqtt connectors need the paho-mqtt package: pip install 'headrace[mqtt]'") from exc
    from headrace.plugins.tls import client_context

    loop = asyncio.get_running_loop()
    client_id = cfg.client_id or f"headrace-{socket.gethostname()}-{component}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, manual_ack=manual_ack)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)  # unbounded: the runtime bounds what it hands over
    client.reconnect_delay_set(1, 10)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls is not None:
        client.tls_set_context(client_context(cfg.tls, base_dir))
        if not cfg.tls.verify:
            client.tls_insecure_set(True)

    def connected(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("mqtt %s: the broker %s:%d refused the connection: %s", component, cfg.host, cfg.port, reason)
            return
        log.info("mqtt %s: connected to %s:%d", component, cfg.host, cfg.port)
        if on_connect is not None:
            loop.call_soon_threadsafe(on_connect, client)

    def disconnected(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not getattr(reason, "is_failure", True):  # our own disconnect (a stop)
            log.info("mqtt %s: disconnected from %s:%d", component, cfg.host, cfg.port)
            return
        log.warning("mqtt %s: disconnected from %s:%d (%s); reconnecting", component, cfg.host, cfg.port, reason)

    def subscribed(_c: Any, _u: Any, _mid: int, reasons: Any, _props: Any) -> None:
        failed = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if failed:
            log.error("mqtt %s: the broker refused a subscription: %s", component, ", ".join(failed))
        else:
            log.info("mqtt %s: subscribed", component)
            if on_subscribed is not None:
                loop.call_soon_threadsafe(on_subscribed)

    client.on_connect = connected
    client.on_disconnect = disconnected
    client.on_subscribe = subscribed
    if on_message is not None:  # messages reach the loop in runs: one wake-up per run, not per message
        arrived: list[Any] = []
        lock = threading.Lock()

        def message(_c: Any, _u: Any, msg: Any) -> None:
            with lock:
                arrived.append(msg)
                if len(arrived) > 1:
                    return  # a hand-over is scheduled already
            loop.call_soon_threadsafe(hand_over)

        def hand_over() -> None:
            with lock:
                msgs = arrived[:]
                arrived.clear()
            on_message(msgs)

        client.on_message = message
    if on_publish is not None:
        def published(_c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
            loop.call_soon_threadsafe(on_publish, mid)

        client.on_publish = published
    try:
        client.connect_async(cfg.host, cfg.port, cfg.keepalive)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"mqtt {component}: cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
    client.loop_start()
    return client


def close_client(client: Any) -> None:
    client.disconnect()
    client.loop_stop()
