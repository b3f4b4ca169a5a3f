"""Logging to stderr: text for people, JSON for machines, syslog priority prefixes under journald."""

from __future__ import annotations

import logging
import os
import sys
import time

import orjson

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def utc_timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-12-03T10:00:00.123Z (the same on every host, sortable)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_timestamp(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": utc_timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class JournalPrefix(logging.Filter):
    """Prefix ``<N>`` so journald stores the right priority for each line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.prio = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return True


def under_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}" == dev and f"{st.st_ino}" == ino


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    journal = under_journal()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif journal:
        handler.addFilter(JournalPrefix())
        handler.setFormatter(logging.Formatter("%(prio)s%(name)s: %(message)s"))
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
