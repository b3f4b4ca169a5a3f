"""Newline framing. Over-long lines are rejected without buffering them whole."""

from __future__ import annotations

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.contract.units import Size

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
        self.tail = b""  # while discarding, with a separator of several bytes: the last bytes read, which may begin one
        self.sample = min(SAMPLE, self.max + 1)
        self.separators = 0  # separators found so far (the runner numbers lines by it)

    def _emit(self, line: bytes, out: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            out.append(line)

    def _too_long(self, line: bytes | bytearray, rejected: list[tuple[bytes, str]]) -> None:
        # the sample is the line's first bytes, as many as were certainly buffered however reads split it
        rejected.append((bytes(line[: self.sample]), f"line longer than {self.max} bytes"))

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        sep, start = self.sep, 0
        if len(sep) > 1 and self.buf and not self.discarding:
            # a separator may straddle the previous read and this one: look at them together
            keep = len(sep) - 1
            tail = bytes(self.buf[-keep:])
            del self.buf[-keep:]
            chunk = tail + chunk
        elif len(sep) > 1 and self.discarding and self.tail:
            chunk = self.tail + chunk
        self.tail = b""
        found = 0
        while True:
            idx = chunk.find(sep, start)
            if idx < 0:
                break
            found += 1
            if self.discarding:
                self.discarding = False
            elif self.buf:
                self.buf += chunk[start:idx]
                line = bytes(self.buf)
                self.buf.clear()
                if len(line) > self.max:
                    self._too_long(line, rejected)
                else:
                    self._emit(line, out)
            elif idx - start > self.max:
                self._too_long(chunk[start:idx], rejected)
            else:
                self._emit(chunk[start:idx], out)
            start = idx + len(sep)
        self.separators += found
        if start < len(chunk):
            if self.discarding:
                self.tail = chunk[-(len(sep) - 1) :] if len(sep) > 1 else b""  # a separator may begin here
                return
            self.buf += chunk[start:]
            # over the bound: rejected now, not buffered whole; a trailing partial separator
            # (len(sep) - 1 bytes) is not part of the line yet
            if len(self.buf) - (len(sep) - 1) > self.max:
                self._too_long(self.buf, rejected)
                self.tail = bytes(self.buf[-(len(sep) - 1) :]) if len(sep) > 1 else b""
                self.buf.clear()
                self.discarding = True

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        if self.buf and not self.discarding:
            if len(self.buf) > self.max:
                self._too_long(self.buf, rejected)
            else:
                self._emit(bytes(self.buf), out)
        self.buf.clear()
        self.tail = b""
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
