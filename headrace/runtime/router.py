"""Routing of a component's output ports to the inboxes of its targets, with counting."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from headrace.contract.acks import add_each, done_each, fail_each
from headrace.runtime import replay
from headrace.runtime.batch import Batch
from headrace.runtime.budget import ErrorBudget
from headrace.runtime.inbox import Inbox
from headrace.runtime.lastresort import LastResort
from headrace.runtime.stats import ComponentStats
from headrace.runtime.tap import Tap, feed

log = logging.getLogger("headrace.router")


def config_digest(signatures: dict[str, str]) -> str:
    """A short digest of a running config (its components' signatures): changes with any change of it."""
    text = "\n".join(f"{cid}={sig}" for cid, sig in sorted(signatures.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stamp(batch: Batch, provenance: dict[str, str]) -> None:
    """Add to each dead letter's ``meta.error`` where it came from, once (the first err port it
    reaches): ``origin`` (the onramp), ``at`` (UTC, ISO 8601), ``config`` (the digest of the
    config that failed it) and, for a record read from Kafka, ``kafka: {topic, partition, offset}``;
    from a file, ``file: {path, line}``."""
    if batch.metas is None:
        return
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    extra = {"origin": batch.origin, "at": at, "config": provenance.get("config", "")}
    metas: list[Any] = []
    for m in batch.metas:
        err = m.get("error")
        if isinstance(err, dict) and "origin" not in err:
            m = dict(m)  # metas may be shared between events (and columns are read-only)
            m["error"] = {**err, **extra}
            if "kafka_topic" in m:  # where in Kafka it was read: what a replay or a human looks up
                m["error"]["kafka"] = {"topic": m["kafka_topic"], "partition": m.get("kafka_partition"), "offset": m.get("kafka_offset")}
            elif "file_path" in m:  # the file and line (when counted) it was read from
                m["error"]["file"] = {"path": m["file_path"], "line": m.get("file_line")}
            if "replayed" in m:  # a dead letter sent back in failed again: its replay learns why
                replay.noted(m, err)
        metas.append(m)
    batch.metas = metas


class Router:
    def __init__(self, stats: ComponentStats, targets: dict[str, list[tuple[Inbox, bool]]], last_resort: LastResort | None = None,
                 budget: ErrorBudget | None = None, provenance: dict[str, str] | None = None) -> None:  # fmt: skip
        self.stats = stats
        self.provenance = provenance  # the engine's: the config's digest, stamped into what goes to err (None: nothing stamped)
        self.budget = budget  # daemon.error_budget, counting what goes to err ports (None: off)
        self.taps: dict[str, list[Tap]] = {}  # port -> live taps (headrace tap); empty: no cost but this check
        self.targets = targets  # port -> [(inbox, target is a node)]; a reload replaces the dict
        self.last_resort = last_resort  # where events of an unlinked err port go (None: they are only logged and counted)
        self._last_err_log = 0.0

    def inboxes(self) -> list[Inbox]:
        seen: dict[int, Inbox] = {}
        for lst in self.targets.values():
            for inbox, _ in lst:
                seen[id(inbox)] = inbox
        return list(seen.values())

    async def send(self, port: str, batch: Batch) -> None:
        n = len(batch)
        if not n:
            return
        if port == "err":
            if self.budget is not None and self.budget.errored(batch.origin, batch.acks, n):
                self.stats.discard("error_budget", n)  # failed, not dead-lettered: the source does not ack them
                return
            if self.provenance is not None:
                stamp(batch, self.provenance)
        if self.taps:
            feed(self.taps, port, batch)
        self.stats.sent(port).inc(n)
        if port != "err":
            self.stats.sent_bytes.inc(batch.nbytes)
        targets = self.targets.get(port)
        if not targets:
            if port == "err":
                self.stats.error("unlinked_err", n)
                self._unlinked_err(batch)
                return
            self.stats.discard(f"unlinked_port_{port}", n)
            done_each(batch.acks)
            return
        if len(targets) > 1:
            add_each(batch.acks, len(targets) - 1)
        first = True
        skipped = 0
        for inbox, is_node in targets:
            if inbox.retired:  # a reload replaced it while this send waited on an earlier target
                skipped += 1
                continue
            await inbox.put(batch if first or not is_node else batch.fanout_copy())
            first = False
        if skipped:
            await self._redirect(port, batch, targets, skipped, first)

    async def _redirect(self, port: str, batch: Batch, old: list[tuple[Inbox, bool]], shares: int, first: bool) -> None:
        """Deliver what was meant for retired inboxes to the port's new targets.

        A send captures its targets when it starts. If a reload retires one of them while
        the send waits on another (full) target, the retired inbox's reader may already
        have finished; the batch then goes to the targets the reload added for this port
        (the replacements), which start after the old runners drained: order holds. With
        no replacement (the link or component was removed), its share of the acks is done.
        """
        had = {id(i) for i, _ in old}
        new = [(i, is_node) for i, is_node in self.targets.get(port, ()) if id(i) not in had and not i.retired]
        if len(new) > shares:
            add_each(batch.acks, len(new) - shares)
        for _ in range(shares - len(new)):
            done_each(batch.acks)
        if shares > len(new):
            self.stats.discard("removed_by_reload", (shares - len(new)) * len(batch))
        for inbox, is_node in new:
            await inbox.put(batch if first or not is_node else batch.fanout_copy())
            first = False

    def _unlinked_err(self, batch: Batch) -> None:
        """Events on an err port linked nowhere: to the last-resort file, done once it has them; failed if it cannot."""
        cid = self.stats.cid
        if self.last_resort is None:
            self._log_err(batch, "")
            done_each(batch.acks)
            return
        where = self.last_resort.path(cid)
        try:
            self.last_resort.keep(cid, batch)
        except OSError as exc:
            self.stats.error("last_resort_failed", len(batch))
            self._log_err(batch, f"; writing them to the last-resort file {where} failed too ({exc}): they are failed, their source not acked")
            fail_each(batch.acks)
            return
        self._log_err(batch, f", written to the last-resort file {where}")
        done_each(batch.acks)

    def _log_err(self, batch: Batch, fate: str) -> None:
        now = time.monotonic()
        if now - self._last_err_log < 1.0:
            return
        self._last_err_log = now
        err = batch.meta(0).get("error", {})
        # a node's err port feeds its pipeline's: the link to write is `<pipeline>/err`
        link = self.stats.cid.split(".", 1)[0] if self.stats.kind == "node" else self.stats.cid
        log.error(
            "%d event(s) on unlinked err port of %s%s; first: %s: %s (link '%s/err' to an offramp to handle them)",
            len(batch), self.stats.cid, fate, err.get("type", "?"), err.get("message", "?"), link,
        )  # fmt: skip
