"""Base64 per record: place the preprocessor after a framing one (``[lines, base64]``)."""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import Field

from headrace.contract.config import PluginConfig
from headrace.contract.framing import Postprocessor, Preprocessor

SAMPLE = 1024
_WHITESPACE = b" \t\r\n"
_STANDARD = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_URLSAFE = re.compile(rb"[A-Za-z0-9_-]*={0,2}")


class Base64Config(PluginConfig):
    urlsafe: bool = Field(False, description="the URL-safe alphabet (- and _ instead of + and /)")


class Base64Preprocessor(Preprocessor):
    name = "base64"
    Config = Base64Config
    summary = "decode each record from base64 (surrounding whitespace ignored); invalid input goes to err"

    def __init__(self, config: Base64Config | None = None) -> None:
        super().__init__(config)
        urlsafe = self.config.urlsafe  # type: ignore[attr-defined]
        self.alphabet = _URLSAFE if urlsafe else _STANDARD
        self.altchars = b"-_" if urlsafe else None

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        data = chunk.strip(_WHITESPACE)
        if not self.alphabet.fullmatch(data):
            rejected.append((chunk[:SAMPLE], "invalid base64: characters outside the alphabet"))
            return
        if len(data) % 4:
            rejected.append((chunk[:SAMPLE], f"invalid base64: length {len(data)} is not a multiple of 4"))
            return
        try:
            out.append(base64.b64decode(data, altchars=self.altchars, validate=True))
        except (binascii.Error, ValueError) as exc:
            rejected.append((chunk[:SAMPLE], f"invalid base64: {exc}"))

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        pass


class Base64Postprocessor(Postprocessor):
    name = "base64"
    Config = Base64Config
    summary = "encode each record as base64"

    def process(self, records: list[bytes]) -> list[bytes]:
        enc = base64.urlsafe_b64encode if self.config.urlsafe else base64.b64encode  # type: ignore[attr-defined]
        return [enc(r) for r in records]
