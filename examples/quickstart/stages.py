"""Stages for the quickstart: plain Python, importable and unit-testable."""

from __future__ import annotations

from typing import Any

LEVELS = {"trace": "debug", "debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error", "fatal": "error"}


def classify(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Normalise the level into meta['class'] and tag the event with its service."""
    level = str(event.get("level", "info")).lower()
    meta["class"] = LEVELS.get(level, "info")
    event["severity"] = meta["class"]
    event.setdefault("service", event.get("host", "unknown").split(".")[0])
    return event
