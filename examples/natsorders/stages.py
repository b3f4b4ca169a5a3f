"""Stages for the NATS example."""

from __future__ import annotations

from typing import Any


def price(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Total an order; an item without a price raises, so the order goes to the dead letter with the reason."""
    event["total"] = round(sum(float(item["price"]) * int(item.get("qty", 1)) for item in event["items"]), 2)
    event["stream_seq"] = meta["nats_stream_seq"]
    return event
