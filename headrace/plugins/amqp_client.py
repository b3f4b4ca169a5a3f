"""What the amqp onramp and offramp share: the broker address, and how to name it in a log line without its password."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.units import Duration


class AmqpConnection(PluginConfig):
    url: str = Field("amqp://guest:guest@127.0.0.1:5672/", pattern=r"^amqps?://",
                     description="the broker: amqp://user:password@host:port/vhost (amqps:// for TLS); put the password in ${VAR}")  # fmt: skip
    connect_timeout: Duration = Field(10.0, gt=0, description="how long connecting (TCP, TLS, the AMQP handshake) may take")


def where(url: str) -> str:
    """``host:port/vhost`` of an AMQP URL: what a log line names (never the credentials)."""
    from yarl import URL

    u = URL(url)
    vhost = u.path[1:] if len(u.path) > 1 else "/"
    return f"{u.host}:{u.port or (5671 if u.scheme == 'amqps' else 5672)} (vhost {vhost})"


def import_aio_pika(what: str) -> Any:
    try:
        import aio_pika
    except ImportError as exc:  # an optional extra
        raise RuntimeError(f"the amqp {what} needs the aio-pika package: pip install 'headrace[amqp]'") from exc
    # the client logs each refused connection and lost reader as an error with a traceback; the onramp and
    # offramp say what happened and what they do about it, once, without the password
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return aio_pika
