"""A job of the worker pool: what it carries, and the two ways it fails as a whole.

A job is one chunk of records for one worker segment. It either comes back as a
``Response`` (per-record failures are inside it, on ``err`` ports), or fails whole:
``WorkerCrashed`` when its worker died while executing it (retry, bisect: an external kill
is not the records' fault), ``JobFailed`` when it fails the same way wherever it runs (a
value that cannot be pickled either way, a segment error outside any record). The caller
(``pooled.PooledChainRunner``) narrows both down to the record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from headrace.runtime.workers.wire import Response

CONFIGURE_JOB = -1  # the id of a set-up message, answered in order with the jobs


class WorkerCrashed(Exception):
    """The worker died (killed, timed out, out of memory) while executing this job."""


class JobFailed(Exception):
    """The job fails the same way whenever it runs: its answer cannot be pickled or read, or
    its segment raised outside any record. The caller narrows it down to the record."""


@dataclass
class Job:
    id: int
    segment: str
    parts: list[Any]
    future: asyncio.Future[Response]
    started: float = 0.0
    wire: list[Any] = field(default_factory=list)  # the job message, pickled once
    located: bytes | None = None  # where its records' blobs are in this process (memread.locate), when all are bytes
    by_reference: bool = False  # ``wire`` names where the blobs are (for a worker that reads our memory) instead of holding them
