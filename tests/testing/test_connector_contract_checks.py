"""The onramp and offramp contract suites catch what they promise to catch: each plugin below
breaks one invariant, and the suite must name it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ConfigDict

from headrace.contract.config import PluginConfig
from headrace.contract.sink import Offramp, PartialWrite, Rejections
from headrace.contract.source import Onramp, OnrampSink
from headrace.plugins.onramps.tcp import TcpOnramp
from headrace.testing import OfframpPeer, OnrampPeer, offramp_contract, onramp_contract
from headrace.testing.onramp_contract import Expected
from tests.support.daemon import free_port
from tests.testing.onramp_peers import StreamClient

RECORDS = [b"a", b"b", b"c"]


class Finite(Onramp):
    """A well-behaved finite onramp: hands over RECORDS with an ack token; the broken ones below change one thing."""

    name = "finite"
    summary = "three records"
    example = "{type: finite}"

    def __init__(self, config: Any, context: Any) -> None:
        super().__init__(config, context)
        self.finite = True

    async def run(self, sink: OnrampSink) -> None:
        await sink.records(list(RECORDS), ack="token")


class Expects(OnrampPeer):
    async def prepare(self, config: Any) -> Expected:
        return list(RECORDS)


class Touchy(Finite):
    def check(self) -> None:
        socket.socket().close()  # a config check that reaches for the network


class Fragile(Finite):
    async def stop(self) -> None:
        self.task.cancel()  # type: ignore[attr-defined]  # set by start(): stopping an onramp never started breaks


class Eager(Finite):
    async def start(self) -> None:
        pass  # never says ready

    async def run(self, sink: OnrampSink) -> None:
        await sink.records(list(RECORDS), ack="token")
        self.ready = True


class Late(Finite):
    async def run(self, sink: OnrampSink) -> None:
        await super().run(sink)
        asyncio.get_running_loop().call_later(0.01, lambda: asyncio.ensure_future(sink.records([b"late"])))  # after run() returned


class Lossy(Finite):
    async def run(self, sink: OnrampSink) -> None:
        await sink.records(RECORDS[:-1])


class EmptyToken(Finite):
    async def run(self, sink: OnrampSink) -> None:
        await sink.records(list(RECORDS), ack="token")
        await sink.records([], ack="nothing")


class BadWire(Finite):
    async def run(self, sink: OnrampSink) -> None:
        await sink.records(list(RECORDS), wire=(b"\x01\x00\x00\x00" * 3, (b"abd",)))


class Unpicklable(Finite):
    async def run(self, sink: OnrampSink) -> None:
        await sink.records(list(RECORDS), [{"f": lambda: None} for _ in RECORDS])


class AckRaises(Finite):
    def ack(self, token: Any) -> None:
        raise KeyError(token)


class Quits(Finite):
    def __init__(self, config: Any, context: Any) -> None:
        super().__init__(config, context)
        self.finite = False  # claims to run until stopped, then returns by itself


class ReadyTooSoon(TcpOnramp):
    """Says ready before it listens: a client connecting at once is refused."""

    async def start(self) -> None:
        self.ready = True

    async def run(self, sink: OnrampSink) -> None:
        await asyncio.sleep(0.2)
        await super().start()
        await super().run(sink)


class Lax(PluginConfig):
    model_config = ConfigDict(extra="allow", frozen=True)


class Lenient(Finite):
    Config = Lax


class BadExample(Finite):
    example = "{type: finite, config: {nope: 1}}"


@pytest.mark.parametrize(("cls", "message"), [
    (Touchy, "check\\(\\) touched socket"), (Fragile, "stop\\(\\) without start\\(\\) raised AttributeError"), (Eager, "before ready was True"),
    (Late, "while run\\(\\) was not running"), (Lossy, "missing \\[b'c'\\]"), (EmptyToken, "ack token with no records"),
    (BadWire, "wire does not hold the same records"), (Unpicklable, "cannot be pickled"), (AckRaises, "ack\\(\\)/fail\\(\\) raised KeyError"),
    (Quits, "returned by itself"), (Lenient, "unknown key"), (BadExample, "example does not validate"),
])  # fmt: skip
def test_onramp_contract_catches(cls: type[Onramp], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        onramp_contract(cls, dict, Expects(), timeout=2)


def test_onramp_contract_catches_an_onramp_ready_before_it_listens() -> None:
    with pytest.raises(AssertionError, match="ready was True, but its peer could not send to it"):
        onramp_contract(ReadyTooSoon, lambda: {"port": free_port()}, StreamClient(), timeout=5)


def test_onramp_contract_passes_the_well_behaved_one() -> None:
    onramp_contract(Finite, dict, Expects(), timeout=2)


class Memory(OfframpPeer):
    """A peer in memory: the offramps below write into ``got`` while it is ``up``."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.up = True

    async def received(self) -> list[bytes] | None:
        return list(self.got)

    async def fail(self) -> bool:
        self.up = False
        return True

    async def recover(self) -> None:
        self.up = True


PEER = Memory()


class Writes(Offramp):
    """A well-behaved offramp into ``PEER``: confirms only what the peer took."""

    name = "writes"
    summary = "into memory"
    example = "{type: writes}"

    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        if not PEER.up:
            raise ConnectionError("the peer is down")
        PEER.got += chunks
        return None


class Liar(Writes):
    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        if PEER.up:
            PEER.got += chunks
        return None  # success, whatever became of them


class OutOfRange(Writes):
    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        await super().write(chunks[:-1], events - 1, ingest_ns, metas)
        return [(events, "too large")]


class Overlap(Writes):
    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        raise PartialWrite(OSError("x"), delivered=[0], rejected=[(0, "refused")])


class Twice(Writes):
    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        PEER.got += chunks[:1]
        return await super().write(chunks, events, ingest_ns, metas)


class NeedsMetas(Writes):
    async def write(self, chunks: list[bytes], events: int, ingest_ns: list[int], metas: list[dict[str, Any]] | None) -> Rejections:
        keys = [m["k"] for m in metas]  # type: ignore[union-attr]  # the runtime passes None when no event has meta
        return await super().write(chunks, len(keys), ingest_ns, metas)


class Unframed(Writes):
    frames_itself = True  # but writes the records as they came, without self.postprocess


class Vague(Writes):
    def retryable(self, exc: BaseException) -> bool:
        return "maybe"  # type: ignore[return-value]


@pytest.mark.parametrize(("cls", "message"), [
    (Liar, "returned success for 6 records while its peer was down"), (OutOfRange, "outside the 8 events"),
    (Overlap, "both delivered and rejected"), (Twice, "twice"), (NeedsMetas, "still fail after 2s: TypeError"),
    (Unframed, "without self.postprocess"), (Vague, "must return a bool"),
])  # fmt: skip
def test_offramp_contract_catches(cls: type[Offramp], message: str) -> None:
    PEER.got.clear()
    PEER.up = True
    with pytest.raises(AssertionError, match=message):
        offramp_contract(cls, dict, PEER, postprocessors=[], timeout=2)


def test_offramp_contract_passes_the_well_behaved_one() -> None:
    PEER.got.clear()
    offramp_contract(Writes, dict, PEER, postprocessors=[], timeout=2)
    assert len(PEER.got) == 19, "8 + 5 records, and 6 once the peer was back"


def test_check_may_import_but_not_open(tmp_path: Path) -> None:
    class Imports(Finite):
        def check(self) -> None:
            import xml.dom.minidom  # noqa: F401  # a module not loaded yet: its files are read

    onramp_contract(Imports, dict, Expects(), timeout=2)

    class Opens(Finite):
        def check(self) -> None:
            (tmp_path / "x").open("w").close()

    with pytest.raises(AssertionError, match="check\\(\\) touched open"):
        onramp_contract(Opens, dict, Expects(), timeout=2)
