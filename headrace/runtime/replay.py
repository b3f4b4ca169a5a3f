"""Dead letters sent back in, once their cause is fixed (``headrace replay``, ``POST /replay``).

A dead letter is a record an ``err`` port wrote with its meta (``with_meta: true``): ``{"event":
..., "meta": {..., "error": {stage, type, message, origin, at, config}}}``. Replaying puts its
event back into an onramp's output (``into``, else the onramp it came from: ``error.origin``) as
if that onramp had read it again, with its meta minus ``error``, plus ``replayed: {key, error}``
(the old error, for the record). The answer comes when every replayed record was delivered:

- ``redelivered``: delivered, and nowhere sent to an ``err`` port again;
- ``failed``: sent to an ``err`` port again (it is dead-lettered again there, with the new
  reason and ``replayed``), or not delivered at all; the reasons are counted;
- ``skipped``: replayed successfully before (its key is in ``replayed.keys`` under
  ``daemon.state_dir``), so a replay run twice re-delivers nothing twice.

A record's key is a digest of its provenance (origin, time, config, stage, error) and its event.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from headrace.contract.source import Onramp, OnrampSink

PENDING: dict[str, ReplayRun] = {}  # key -> the run waiting for it: an err port it reaches notes the failure (Router)
LEDGER = "replayed.keys"


def record_key(event: Any, meta: dict[str, Any]) -> str:
    found = meta.get("error")
    err: dict[str, Any] = found if isinstance(found, dict) else {}
    where: dict[str, Any] = {k: err.get(k) for k in ("origin", "at", "config", "stage", "type", "message")}
    where["kafka"] = [meta.get("kafka_topic"), meta.get("kafka_partition"), meta.get("kafka_offset")]
    if "file_path" in meta:  # absent before files were named: keys of earlier replays stay the same
        where["file"] = [meta.get("file_path"), meta.get("file_line")]
    blob = orjson.dumps({"where": where, "event": event}, option=orjson.OPT_SORT_KEYS, default=repr)
    return hashlib.sha256(blob).hexdigest()[:32]


class Ledger:
    """Keys of records replayed successfully, one per line, appended and synced."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LEDGER

    def load(self) -> set[str]:
        try:
            return set(self.path.read_text(encoding="ascii").split())
        except FileNotFoundError:
            return set()

    def add(self, keys: list[str]) -> None:
        if not keys:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="ascii") as f:
            f.write("".join(k + "\n" for k in keys))
            f.flush()
            os.fsync(f.fileno())


class ReplayRun:
    """One replay request: its batches' acks and the failures its records met again."""

    def __init__(self) -> None:
        self.outstanding = 0
        self.finished = asyncio.Event()
        self.failed: dict[str, str] = {}  # key -> the new reason
        self.undelivered: set[int] = set()  # tokens of batches whose delivery failed

    def expect(self) -> None:
        self.outstanding += 1
        self.finished.clear()

    def ack(self, token: Any) -> None:
        self._settle()

    def fail(self, token: Any) -> None:
        self.undelivered.add(token)
        self._settle()

    def _settle(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.finished.set()

    def failed_again(self, key: str, error: dict[str, Any]) -> None:
        self.failed.setdefault(key, f"{error.get('type', 'Error')}: {error.get('message', '')}")


def noted(meta: dict[str, Any], error: dict[str, Any]) -> None:
    """An event reached an err port: if it is being replayed, its run learns the new reason."""
    replayed = meta.get("replayed")
    if isinstance(replayed, dict):
        run = PENDING.get(replayed.get("key", ""))
        if run is not None:
            run.failed_again(replayed["key"], error)


def report(keys_by_token: dict[int, list[str]], run: ReplayRun, skipped: int, unroutable: Counter[str], invalid: int) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    redelivered: list[str] = []
    for token, keys in keys_by_token.items():
        for key in keys:
            if key in run.failed:
                reasons[run.failed[key]] += 1
            elif token in run.undelivered:
                reasons["not delivered (the onramp's delivery failed: a shutdown, a reload, the error budget)"] += 1
            else:
                redelivered.append(key)
    for why, n in unroutable.items():
        reasons[why] += n
    return {"redelivered": len(redelivered), "failed": sum(reasons.values()), "skipped": skipped, "invalid": invalid,
            "reasons": dict(reasons.most_common()), "keys": redelivered}  # fmt: skip


class IdleOnramp(Onramp):
    """Stands in for every onramp of a one-shot replay (``headrace replay --config``): reads nothing
    and runs until the drain, so that replayed records are the only ones the graph sees."""

    name = "(replay)"

    async def run(self, sink: OnrampSink) -> None:
        await asyncio.Event().wait()


class Job:
    """A one-shot replay run by the daemon (``Daemon(replay=...)``): the chosen dead letters, sent
    in chunks at ``rate``; ``totals`` and ``reasons`` are the report once it ran."""

    def __init__(self, letters: list[Any], into: str | None, rate: float | None, dry_run: bool, chunk: int = 500) -> None:
        self.letters = letters
        self.into = into
        self.rate = rate
        self.dry_run = dry_run
        self.chunk = chunk
        self.totals: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.error: str | None = None

    def chunks(self) -> list[tuple[float, list[Any]]]:
        """(seconds after the start when it may go, records) of each request."""
        step = self.chunk if self.rate is None else max(1, min(self.chunk, int(self.rate)))
        return [(k / self.rate if self.rate else 0.0, self.letters[k : k + step]) for k in range(0, len(self.letters), step)]

    def add(self, result: dict[str, Any]) -> None:
        for name in ("redelivered", "would_replay", "failed", "skipped", "invalid"):
            self.totals[name] += int(result.get(name, 0))
        self.reasons.update(result.get("reasons", {}))
