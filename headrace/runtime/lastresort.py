"""The last-resort file: where events go that reach an ``err`` port linked nowhere.

An unlinked ``err`` port (a decode error at an onramp, a stage's exception, a record an
offramp refused or could not encode) used to count its events as done, so a Kafka
offset was committed for a record that was nowhere. Now each such event is appended to
``<state_dir>/last-resort/<component>.ndjson``, one JSON object per line::

    {"time": "2026-12-03T10:00:00.123456Z", "component": "main.classify", "codec": "json",
     "event": {...}, "raw": "...", "meta": {..., "error": {"stage": ..., "type": ..., "message": ...}}}

``event`` is the decoded value when there is one, ``raw`` the record's bytes as the
``json`` codec writes bytes (text, or ``{"base64": ...}``) in ``codec``. The line is
written and handed to the kernel before the events count as done; if that fails too
(disk full), the events are *failed*: their source is not acked (a Kafka offset is not
committed, an HTTP client gets a 500). Nothing is created until an event needs it, so
``headrace check`` creates nothing.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from headrace import registry
from headrace.config.model import DaemonConfig
from headrace.runtime.batch import Batch

log = logging.getLogger("headrace.lastresort")

DEFAULT_FOLDER = "headrace-state"  # beside the config file, when neither state_dir nor $STATE_DIRECTORY says
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def state_dir(daemon: DaemonConfig, base_dir: Path) -> Path:
    """``daemon.state_dir`` (relative to the config's folder), else ``$STATE_DIRECTORY``, else a folder beside the config."""
    if daemon.state_dir:
        p = Path(daemon.state_dir)
        return p if p.is_absolute() else base_dir / p
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]  # systemd may list several
    return Path(systemd) if systemd else base_dir / DEFAULT_FOLDER


class LastResort:
    """Appends events to one last-resort file per component, opened when first needed."""

    def __init__(self, state: Path) -> None:
        self.state = state  # the state dir
        self.folder = state / "last-resort"
        self.fds: dict[str, int] = {}
        self.json = registry.make_codec("json")  # writes bytes as text or {"base64": ...}, big integers exact

    def path(self, component: str) -> Path:
        name = _UNSAFE.sub("_", component).lstrip(".") or "_"
        return self.folder / f"{name}.ndjson"

    def keep(self, component: str, batch: Batch) -> None:
        """Append the events of ``batch``; returns once the kernel has them, raises ``OSError`` if it cannot."""
        data = b"".join(_lines(component, batch, self.json.encode))
        fd = self.fds.get(component)
        if fd is None:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = self.fds[component] = os.open(self.path(component), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            try:
                os.ftruncate(fd, start)  # no torn line: the events are failed whole
            except OSError:
                pass
            raise

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _lines(component: str, batch: Batch, to_json: Callable[[Any], bytes]) -> Iterator[bytes]:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for i in range(len(batch)):
        raw = batch.payloads[i] if batch.payloads is not None else None
        entry: dict[str, Any] = {"time": now, "component": component, "codec": batch.codec,
                                 "event": batch.values[i] if batch.values is not None else None,
                                 "raw": raw, "meta": batch.meta(i)}  # fmt: skip
        try:
            line = to_json(entry)
        except (TypeError, ValueError, orjson.JSONEncodeError) as exc:  # a value JSON cannot hold: its repr, cut short
            entry["event"] = {"repr": _repr(entry["event"]), "why": str(exc)}
            entry["meta"] = {"repr": _repr(entry["meta"])}
            line = to_json(entry)
        yield line + b"\n"


def _repr(value: Any) -> str:
    try:
        return repr(value)[:65536]
    except Exception as exc:  # a repr that raises must not lose the event's line
        return f"<{type(value).__name__}: repr failed: {type(exc).__name__}>"
