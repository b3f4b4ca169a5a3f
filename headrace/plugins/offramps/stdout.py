"""``type: stdout`` / ``type: stderr``: write records to the process's standard streams."""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

from headrace.plugins.base import Offramp, PluginContext


class StdoutOfframp(Offramp):
    name = "stdout"
    summary = "write each record to standard output, one per line"
    default_postprocessors = ("lines",)
    example = "{type: stdout, codec: json}"

    def stream(self) -> BinaryIO:
        return sys.stdout.buffer

    def __init__(self, config: Any, context: PluginContext) -> None:
        super().__init__(config, context)

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> None:
        out = self.stream()
        for c in chunks:
            out.write(c)
        out.flush()

    def retryable(self, exc: BaseException) -> bool:
        # nobody reads the other end any more (``| head``): it will not come back
        return not isinstance(exc, BrokenPipeError)


class StderrOfframp(StdoutOfframp):
    name = "stderr"
    summary = "write each record to standard error, one per line"
    example = "{type: stderr, codec: string}"

    def stream(self) -> BinaryIO:
        return sys.stderr.buffer
