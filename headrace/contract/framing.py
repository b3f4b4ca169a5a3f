"""``Preprocessor``: a stream of chunks -> records (framing, decompression); stateful.
``Postprocessor``: records -> chunks to write (framing, compression)."""

from __future__ import annotations

from typing import ClassVar

from headrace.contract.config import NoConfig, PluginConfig


class Preprocessor:
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = NoConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config or self.Config()

    def feed(self, chunk: bytes, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        """Append complete records from ``chunk`` to ``out``; malformed input to ``rejected``."""
        raise NotImplementedError

    def finish(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        """End of stream: flush what is left."""

    def has_pending(self) -> bool:
        """Input was kept back to bound the output of one call (a decompressor); ``resume`` gives more."""
        return False

    def resume(self, out: list[bytes], rejected: list[tuple[bytes, str]]) -> None:
        """Continue on input kept back by ``feed`` (called while ``has_pending``)."""

    def whole_message(self) -> None:
        """This instance frames one whole message (an HTTP body, a datagram), not a stream."""


class Postprocessor:
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = NoConfig
    summary: ClassVar[str] = ""

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config or self.Config()

    def process(self, records: list[bytes]) -> list[bytes]:
        raise NotImplementedError


