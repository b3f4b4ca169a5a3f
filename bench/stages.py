"""Stages used by the benchmarks (plain Python, like a user's)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


def read_only(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Reads a few fields, modifies nothing (no hint needed: an unwritten record leaves as its bytes)."""
    if event.get("application") == "app1" and event.get("aint", 0) > 1000:
        meta["rare"] = True
    return event


def set_one(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Writes one top-level field of every record."""
    event["seen"] = True
    return event


def classify(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Tremor's json-throughput classifier: class, rate and dimensions into meta."""
    app = event.get("application")
    index_type = event.get("index_type")
    if app == "app1":
        meta["class"], meta["rate"], meta["dimensions"] = "applog_app1", 1250, event.get("logger_name")
    elif app == "app2":
        meta["class"], meta["rate"], meta["dimensions"] = "applog_app2", 2500, event.get("logger_name")
    elif index_type == "applog_app6":
        meta["class"], meta["rate"], meta["dimensions"] = "applog_app6", 4500, event.get("logger_name")
    elif "tag1" in event.get("tags", ()):
        meta["class"], meta["rate"], meta["dimensions"] = "syslog_tag1", 1000, event.get("syslog_hostname")
    elif index_type == "syslog_app1":
        meta["class"], meta["rate"], meta["dimensions"] = "syslog_app1", 2500, event.get("syslog_hostname")
    else:
        meta["class"], meta["rate"] = "default", 250
    return event


async def fetch(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The seed scenario's I/O step: 100 ms of waiting."""
    event["t_start"] = time.time()
    await asyncio.sleep(0.1)
    return event


def transform(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The seed scenario's CPU step: 100 ms of computing."""
    end = time.process_time() + 0.1
    x = 0
    while time.process_time() < end:
        x += 1
    event["spins"] = x
    return event


async def stamp(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    event["t_end"] = time.time()
    return event


def burn_1ms(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    end = time.perf_counter() + 0.001
    while time.perf_counter() < end:
        pass
    return event


def burn_200us(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    end = time.perf_counter() + 0.0002
    while time.perf_counter() < end:
        pass
    return event


def add_field(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A stage that costs next to nothing: one field added."""
    event["h"] = 1
    return event


async def wait_2ms(event: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """An I/O stage: 2 ms of waiting."""
    await asyncio.sleep(0.002)
    return event
