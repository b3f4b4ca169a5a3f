"""Records of a batch as the events stages work on: decoded once, failures named."""

from __future__ import annotations

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
