"""Conversions between batches and the per-event view stages work on."""

from __future__ import annotations

from typing import Any

from headrace.contract.acks import AckRef
from headrace.contract.codec import Codec
from headrace.contract.stage import Ev
from headrace.runtime.batch import Batch, unshare


def to_events(batch: Batch, codec: Codec | None) -> tuple[list[Ev], list[tuple[int, str]]]:
    """Decode what is not decoded yet; returns the events and (index, reason) of failures."""
    n = len(batch)
    metas = unshare(batch.metas) if batch.metas is not None else None  # stages may write to them
    ingest = batch.ingest
    payloads = batch.payloads
    values = batch.values
    acks = batch.acks
    evs: list[Ev] = []
    failures: list[tuple[int, str]] = []
    if values is not None:
        for i in range(n):
            evs.append(Ev(values[i], metas[i] if metas is not None else {}, i, payloads[i] if payloads is not None else None, ingest[i],
                          acks[i] if acks is not None else None))  # fmt: skip
        return evs, failures
    assert payloads is not None
    if codec is None:  # no stage needs the values: keep the bytes, decode nothing
        return [Ev(None, metas[i] if metas is not None else {}, i, payloads[i], ingest[i], acks[i] if acks is not None else None)
                for i in range(n)], failures  # fmt: skip
    decode = codec.decode
    for i in range(n):
        raw = payloads[i]
        assert raw is not None
        try:
            value = decode(raw)
        except Exception as exc:  # whatever a codec raises for one record concerns that record only
            failures.append((i, codec.reason(exc)))
            continue
        evs.append(Ev(value, metas[i] if metas is not None else {}, i, raw, ingest[i], acks[i] if acks is not None else None))
    return evs, failures


def from_events(evs: list[Ev], parent: Batch, refs: list[AckRef] | None, decoded: bool = True) -> Batch:
    """A batch of stage outputs; original bytes are kept for events no stage modified.

    ``decoded`` is False when the stages only read meta: the events are still just bytes.
    An event's own ``ack`` wins over ``refs[ev.src]`` (an event made from held events
    carries a ``MergedAck``).
    """
    acks = [ev.ack if ev.ack is not None else refs[ev.src] for ev in evs] if refs is not None else None
    if acks is not None:
        for r in acks:
            r.pending += 1
    return Batch(
        payloads=[ev.raw for ev in evs],
        values=[ev.value for ev in evs] if decoded else None,
        metas=[ev.meta for ev in evs],
        ingest=[ev.ingest for ev in evs],
        acks=acks,
        codec=parent.codec,
        nbytes=None,
        origin=parent.origin,
        group=parent.group,
    )


def decode_failures(batch: Batch, failures: list[tuple[int, str]], component: str) -> Batch:
    """The failed records as an err batch: original bytes, the text, and the reason in meta."""
    payloads = batch.payloads or []
    out_payloads: list[bytes | None] = []
    values: list[Any] = []
    metas: list[dict[str, Any]] = []
    for i, reason in failures:
        raw = payloads[i] or b""
        out_payloads.append(raw)
        values.append(raw.decode("utf-8", "backslashreplace"))
        meta = dict(batch.meta(i))
        meta["error"] = {"stage": component, "type": "DecodeError", "message": reason}
        metas.append(meta)
    acks = [batch.acks[i] for i, _ in failures] if batch.acks is not None else None
    if acks is not None:
        for r in acks:
            r.pending += 1
    return Batch(payloads=out_payloads, values=values, metas=metas, ingest=[batch.ingest[i] for i, _ in failures],
                 acks=acks, codec="binary", origin=batch.origin, group=batch.group)  # fmt: skip
