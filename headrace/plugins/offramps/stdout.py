"""``type: stdout`` / ``type: stderr``: write records to the process's standard streams.

**Confirmed** means: every byte of the record was written to the stream's file descriptor
(``write`` returned it; for a pipe, the reader's side holds it). Writes go to the file
descriptor directly, not through Python's buffer, so a short write continues where it
stopped, a stream in non-blocking mode (a parent set it on a shared pipe) is waited on
instead of failing, a blocking one is written from a thread (a reader that does not keep
up holds the offramp, never the event loop), and a write that fails part-way confirms the records before the
failure: only the rest is retried, and a record cut in two is completed, not written
again (with postprocessors that frame each record on its own, such as ``lines``; after
compression, which mixes records, the batch is written again whole). A closed pipe (the reader went away, ``| head``) will not come back: the records
go to ``err``.
"""

from __future__ import annotations

import asyncio
import os
import sys
from bisect import bisect_right
from itertools import accumulate
from typing import Any, TextIO

from headrace.contract.context import PluginContext
from headrace.contract.metas import Metas
from headrace.contract.sink import Offramp, PartialWrite


class StdoutOfframp(Offramp):
    name = "stdout"
    summary = "write each record to standard output, one per line"
    default_postprocessors = ("lines",)
    example = "{type: stdout, codec: json}"
    frames_itself = True  # one record per event: a failed write can tell which records went out

    def stream(self) -> TextIO:
        return sys.stdout

    def __init__(self, config: Any, context: PluginContext) -> None:
        super().__init__(config, context)
        self.torn: tuple[bytes, int] | None = None  # a record the last write cut, and how much of its framed bytes went out

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: Metas | None) -> None:
        stream = self.stream()
        stream.flush()  # what other code printed goes first
        fd = stream.fileno()
        data = memoryview(b"".join(self.postprocess(chunks)))
        pos = 0
        if self.torn is not None and chunks and chunks[0] == self.torn[0]:
            pos = self.torn[1]  # its head is out already: only the tail goes
        self.torn = None
        loop = asyncio.get_running_loop()
        while pos < len(data):
            try:
                # in a thread: a blocking stream whose reader is slow (a full pipe) holds this write, not the loop
                pos += await loop.run_in_executor(None, os.write, fd, data[pos:])
            except (BlockingIOError, InterruptedError):
                await _writable(fd)
            except OSError as exc:
                raise self._partial(exc, chunks, data, pos) from exc

    def _partial(self, exc: OSError, records: list[bytes], data: memoryview, pos: int) -> BaseException:
        """What a write that stopped at byte ``pos`` of ``data`` delivered (only on this failure path:
        each record framed alone, which must give the same bytes as framing them together)."""
        framed = [b"".join(self.postprocess([r])) for r in records]
        if b"".join(framed) != data:  # the framing mixes records (compression): nothing can be told apart
            return exc
        ends = list(accumulate(map(len, framed)))
        whole = bisect_right(ends, pos)  # records written completely
        start = ends[whole - 1] if whole else 0
        if whole < len(records) and pos > start:
            self.torn = (records[whole], pos - start)
        return PartialWrite(exc, range(whole))

    def retryable(self, exc: BaseException) -> bool:
        # nobody reads the other end any more (``| head``): it will not come back
        return not isinstance(exc, BrokenPipeError)


async def _writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


class StderrOfframp(StdoutOfframp):
    name = "stderr"
    summary = "write each record to standard error, one per line"
    example = "{type: stderr, codec: string}"

    def stream(self) -> TextIO:
        return sys.stderr
