"""Newline framing. Over-long lines are rejected without buffering them whole."""

from __future__ import annotations

from pydantic import Field

from headrace.config.units import Size
from headrace.plugins.base import PluginConfig, Postprocessor, Preprocessor

SAMPLE = 1024


class LinesConfig(PluginConfig):
    max_line_bytes: Size = Field(1 << 20, ge=1, description="longer lines go to err (first 1 KiB kept)")
    separator: str = Field("\n", min_length=1, max_length=4, description="record separator")


class LinesPreprocessor(Preprocessor):
    name = "lines"
    Config = LinesConfig
    summary = "split a byte stream at newlines; trailing \\r dropped; empty lines skipped"

    def __init__(self, config: LinesConfig | None = None) -> None:
        super().__init__(config)
        cfg: LinesConfig = self.config  # type: ignore[assignment]
        self.max = cfg.max_line_bytes
        self.sep = cfg.separator.encode()
        self.buf = bytearray()
        self.discarding = False  # inside an over-long line: drop until the next separator

    def _emit(self, line: bytes, out: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            out.append(line)

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        sep, start = self.sep, 0
        while True:
            idx = chunk.find(sep, start)
            if idx < 0:
                break
            if self.discarding:
                self.discarding = False
            elif self.buf:
                self.buf += chunk[start:idx]
                line = bytes(self.buf)
                self.buf.clear()
                if len(line) > self.max:
                    rejected.append((line[:SAMPLE], f"line longer than {self.max} bytes"))
                else:
                    self._emit(line, out)
            elif idx - start > self.max:
                rejected.append((chunk[start : start + SAMPLE], f"line longer than {self.max} bytes"))
            else:
                self._emit(chunk[start:idx], out)
            start = idx + len(sep)
        if start < len(chunk) and not self.discarding:
            self.buf += chunk[start:]
            if len(self.buf) > self.max:
                rejected.append((bytes(self.buf[:SAMPLE]), f"line longer than {self.max} bytes"))
                self.buf.clear()
                self.discarding = True

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.buf and not self.discarding:
            self._emit(bytes(self.buf), out)
        self.buf.clear()
        self.discarding = False


class LinesPostprocessor(Postprocessor):
    name = "lines"
    Config = LinesConfig
    summary = "join records with newlines (one trailing newline per record)"

    def process(self, records: list[bytes]) -> list[bytes]:
        if not records:
            return []
        sep = self.config.separator.encode()  # type: ignore[attr-defined]
        return [sep.join(records) + sep]
