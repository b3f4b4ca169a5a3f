"""Stages for the Kafka example."""

from __future__ import annotations

from typing import Any

PRICES = {"apple": 3, "pear": 4, "melon": 12}


def price(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Price an order; unknown items raise, so the order goes to the dead letter with the reason."""
    event["total"] = sum(PRICES[item["sku"]] * int(item.get("qty", 1)) for item in event["items"])
    event["partition"] = meta["kafka_partition"]
    return event
