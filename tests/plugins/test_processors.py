"""Length-prefixed framing, base64, zstd and lz4: round trips, bad input, and any bytes."""

from __future__ import annotations

import struct
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.contract.framing import Postprocessor, Preprocessor
from headrace.plugins.processors.base64 import Base64Config, Base64Postprocessor, Base64Preprocessor
from headrace.plugins.processors.compress import (
    STEP,
    GzipPostprocessor,
    GzipPreprocessor,
    Lz4Postprocessor,
    Lz4Preprocessor,
    MissingExtra,
    ZstdPostprocessor,
    ZstdPreprocessor,
)
from headrace.plugins.processors.framing import (
    LengthPrefixedConfig,
    LengthPrefixedPostprocessor,
    LengthPrefixedPreprocessor,
    OctetCountingConfig,
    OctetCountingPostprocessor,
    OctetCountingPreprocessor,
)

Rejected = list[tuple[bytes, str]]


def run(pre: Preprocessor, pieces: list[bytes]) -> tuple[list[bytes], Rejected]:
    out: list[bytes] = []
    rejected: Rejected = []
    for p in pieces:
        pre.feed(p, out, rejected)
    pre.finish(out, rejected)
    return out, rejected


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def frame(record: bytes) -> bytes:
    return struct.pack(">I", len(record)) + record


# -- length-prefixed ---------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=10), st.lists(st.integers(0, 5000), max_size=8))
def test_length_prefixed_round_trip_whatever_the_chunking(records: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(LengthPrefixedPostprocessor().process(records))
    out, rejected = run(LengthPrefixedPreprocessor(), split(stream, cuts))
    assert out == records and rejected == []


def test_length_prefixed_oversized_declared_length_breaks_the_stream_without_buffering() -> None:
    pre = LengthPrefixedPreprocessor(LengthPrefixedConfig(max_frame_bytes=100))
    out: list[bytes] = []
    rejected: Rejected = []
    pre.feed(frame(b"ok") + struct.pack(">I", 10**9) + b"x" * 50, out, rejected)
    pre.feed(b"y" * 10_000, out, rejected)  # the rest of the stream is dropped, not kept
    assert out == [b"ok"]
    assert len(rejected) == 1 and "frame length 1000000000 over max_frame_bytes (100)" in rejected[0][1]
    assert len(pre.buf) == 0
    pre.finish(out, rejected)
    assert len(rejected) == 1
    # a new stream after the end (a rotated file) is read again
    pre.feed(frame(b"again"), out, rejected)
    assert out == [b"ok", b"again"]


@pytest.mark.parametrize(
    ("tail", "reason"),
    [(frame(b"0123456789")[:-3], "truncated frame: 7 of 10 bytes"), (b"\x00\x00", "truncated frame header (2 of 4 bytes)")],
)
def test_length_prefixed_truncated_at_end_of_stream(tail: bytes, reason: str) -> None:
    out, rejected = run(LengthPrefixedPreprocessor(), [frame(b"whole"), tail])
    assert out == [b"whole"]
    assert [r for _, r in rejected] == [reason]


def test_length_prefixed_empty_frame_is_an_empty_record() -> None:
    assert run(LengthPrefixedPreprocessor(), [frame(b"") + frame(b"a")]) == ([b"", b"a"], [])


# -- base64 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("urlsafe", [False, True])
@given(records=st.lists(st.binary(max_size=100), max_size=10))
def test_base64_round_trip(urlsafe: bool, records: list[bytes]) -> None:
    cfg = Base64Config(urlsafe=urlsafe)
    encoded = Base64Postprocessor(cfg).process(records)
    out, rejected = run(Base64Preprocessor(cfg), [e + b"\r\n" for e in encoded])
    assert out == records and rejected == []


@pytest.mark.parametrize(
    ("record", "urlsafe"), [(b"not base64!", False), (b"YWJj=", False), (b"YWJjZA", False), (b"a-_b", False), (b"ab+/", True), (b"YQ==YQ==", False)]
)
def test_base64_invalid_is_rejected_with_a_reason(record: bytes, urlsafe: bool) -> None:
    out, rejected = run(Base64Preprocessor(Base64Config(urlsafe=urlsafe)), [record])
    assert out == []
    assert len(rejected) == 1 and rejected[0][0] == record and rejected[0][1].startswith("invalid base64")


# -- zstd / lz4 --------------------------------------------------------------------------------

CODECS = [(ZstdPreprocessor, ZstdPostprocessor), (Lz4Preprocessor, Lz4Postprocessor)]
IDS = ["zstd", "lz4"]


@pytest.mark.parametrize(("pre", "post"), CODECS, ids=IDS)
@settings(max_examples=50)
@given(batches=st.lists(st.lists(st.binary(max_size=2000), max_size=5), max_size=4), cuts=st.lists(st.integers(0, 100_000), max_size=10))
def test_compressed_frames_round_trip_streaming(pre: type[Preprocessor], post: type[Postprocessor], batches: list[list[bytes]], cuts: list[int]) -> None:
    p = post()
    stream = b"".join(c for batch in batches for c in p.process(batch))  # one frame per written chunk
    out, rejected = run(pre(), split(stream, cuts))
    assert b"".join(out) == b"".join(r for batch in batches for r in batch)
    assert rejected == []


@pytest.mark.parametrize(("pre", "post"), CODECS, ids=IDS)
def test_compressed_corrupt_and_truncated(pre: type[Preprocessor], post: type[Postprocessor]) -> None:
    out, rejected = run(pre(), [b"definitely not compressed"])
    assert out == [] and len(rejected) == 1 and "corrupt" in rejected[0][1]
    whole = post().process([b"x" * 10_000])[0]
    out, rejected = run(pre(), [whole[: len(whole) // 2]])
    assert len(rejected) == 1 and "truncated" in rejected[0][1]


ALL_CODECS = [(GzipPreprocessor, GzipPostprocessor), *CODECS]
ALL_IDS = ["gzip", *IDS]


@pytest.mark.parametrize(("pre", "post"), ALL_CODECS, ids=ALL_IDS)
def test_a_compression_bomb_comes_out_a_bounded_step_at_a_time(pre: type[Preprocessor], post: type[Postprocessor]) -> None:
    bomb = post().process([bytes(64 << 20)])[0]
    assert len(bomb) < 400_000  # zeros: 64 MiB in a few hundred KiB at most
    p = pre()
    out: list[bytes] = []
    rejected: Rejected = []
    p.feed(bomb, out, rejected)
    steps = [sum(map(len, out))]
    while p.has_pending():
        out = []
        p.resume(out, rejected)
        steps.append(sum(map(len, out)))
    assert max(steps) <= STEP + (8 << 20), "one call makes a step (zstd: plus one input slice's worth), not the whole bomb"
    assert sum(steps) == 64 << 20 and len(steps) >= 8
    out = []
    p.finish(out, rejected)
    assert out == [] and rejected == []


@pytest.mark.parametrize(("pre", "post"), ALL_CODECS, ids=ALL_IDS)
@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(0, 10**7), max_size=6), seed=st.integers(0, 1000))
def test_streams_larger_than_a_step_round_trip_whatever_the_chunking(pre: type[Preprocessor], post: type[Postprocessor], cuts: list[int],
                                                                    seed: int) -> None:  # fmt: skip
    import random

    rnd = random.Random(seed)
    batches = [[b"%d %s\n" % (rnd.randrange(10**9), b"x" * rnd.randrange(200)) for _ in range(20_000)] for _ in range(3)]
    p = post()
    stream = b"".join(c for batch in batches for c in p.process(batch))
    out, rejected = run(pre(), split(stream, cuts))
    assert b"".join(out) == b"".join(r for batch in batches for r in batch)
    assert rejected == []


@pytest.mark.parametrize(("pre", "post"), ALL_CODECS, ids=ALL_IDS)
def test_a_whole_message_over_max_message_bytes_is_refused(pre: type[Preprocessor], post: type[Postprocessor]) -> None:
    p = pre(pre.Config(max_message_bytes=3 << 20))  # type: ignore[call-arg]
    p.whole_message()
    out, rejected = run(p, [post().process([bytes(10 << 20)])[0]])
    assert sum(map(len, out)) <= (3 << 20) + STEP + (8 << 20)
    assert len(rejected) == 1 and "decompresses to more than max_message_bytes (3145728)" in rejected[0][1], rejected


def test_a_truncated_gzip_stream_is_reported() -> None:
    whole = GzipPostprocessor().process([b"y" * 10_000])[0]
    _out, rejected = run(GzipPreprocessor(), [whole[: len(whole) // 2]])
    assert len(rejected) == 1 and rejected[0][1] == "truncated gzip stream: the last member is incomplete"


@pytest.mark.parametrize(("pre", "post", "module"), [(*CODECS[0], "zstandard"), (*CODECS[1], "lz4.frame")], ids=IDS)
def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, pre: type[Preprocessor], post: type[Postprocessor], module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    for cls in (pre, post):
        with pytest.raises(ImportError, match=r"pip install headrace\[compression\]") as info:
            cls()
        assert isinstance(info.value, MissingExtra)


# -- octet counting (RFC 6587) ---------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), max_size=10), st.lists(st.integers(0, 5000), max_size=8))
def test_octet_counting_round_trip_whatever_the_chunking(records: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(OctetCountingPostprocessor().process(records))
    out, rejected = run(OctetCountingPreprocessor(), split(stream, cuts))
    assert (out, rejected) == (records, [])


@given(st.lists(st.sampled_from([b"<13>one", b"<34>two three", b"<0>"]), max_size=8), st.lists(st.booleans(), max_size=8),
       st.lists(st.integers(0, 500), max_size=6))  # fmt: skip
def test_octet_counted_and_newline_framed_messages_mix_in_one_stream(messages: list[bytes], counted: list[bool], cuts: list[int]) -> None:
    parts = [(b"%d %s" % (len(m), m)) if (counted[i] if i < len(counted) else False) else m + b"\n" for i, m in enumerate(messages)]
    out, rejected = run(OctetCountingPreprocessor(), split(b"".join(parts), cuts))
    assert (out, rejected) == (messages, [])


@pytest.mark.parametrize(("stream", "reason"), [
    (b"12x <13>hello", "bad octet count"),
    (b"hello world", "bad octet count"),
    (b"0123 <13>x", "bad octet count"),
    (b"99999999999999 <13>x", "no octet count"),
    (b"100 <13>x", "over max_frame_bytes"),
    (b"10 <13>abc", "truncated frame"),
])  # fmt: skip
def test_octet_counting_refuses_what_it_cannot_frame(stream: bytes, reason: str) -> None:
    out, rejected = run(OctetCountingPreprocessor(OctetCountingConfig(max_frame_bytes=50)), [b"5 <1>ok", stream])
    assert out == [b"<1>ok"]
    assert len(rejected) == 1 and reason in rejected[0][1]


# -- any bytes: records or rejections, never an exception ----------------------------------------


def _pre(name: str) -> Preprocessor:
    return {
        "length-prefixed": lambda: LengthPrefixedPreprocessor(LengthPrefixedConfig(max_frame_bytes=64)),
        "octet-counting": lambda: OctetCountingPreprocessor(OctetCountingConfig(max_frame_bytes=64)),
        "base64": Base64Preprocessor,
        "zstd": ZstdPreprocessor,
        "lz4": Lz4Preprocessor,
    }[name]()


@pytest.mark.parametrize("name", ["length-prefixed", "octet-counting", "base64", "zstd", "lz4"])
@settings(max_examples=200)
@given(pieces=st.lists(st.binary(max_size=100), max_size=5))
def test_any_bytes_give_records_or_rejections(name: str, pieces: list[bytes]) -> None:
    out, rejected = run(_pre(name), pieces)
    assert all(isinstance(r, bytes) for r in out)
    assert all(isinstance(s, bytes) and isinstance(reason, str) and reason for s, reason in rejected)
    assert all(len(s) <= 1024 for s, _ in rejected)


def test_postprocessors_emit_one_chunk_per_batch() -> None:
    records: Any = [b"a", b"bc"]
    assert LengthPrefixedPostprocessor().process(records) == [b"\x00\x00\x00\x01a\x00\x00\x00\x02bc"]
    assert LengthPrefixedPostprocessor().process([]) == []


# -- framing does not depend on where reads split the stream (issue 12, class 21) ----------------


def _framers() -> dict[str, Any]:
    """Preprocessor chains as onramps use them (base64 and decompressors see what a framer gives)."""
    from headrace.plugins.processors.lines import LinesConfig, LinesPreprocessor

    def lines(**kw: Any) -> Preprocessor:
        return LinesPreprocessor(LinesConfig(max_line_bytes=16, **kw))

    return {
        "lines": lambda: [lines()],
        "lines crlf": lambda: [lines(separator="\r\n")],
        "lines ||": lambda: [lines(separator="||")],
        "lines |||": lambda: [lines(separator="|||")],
        "length-prefixed": lambda: [LengthPrefixedPreprocessor(LengthPrefixedConfig(max_frame_bytes=16))],
        "lines, base64": lambda: [lines(), Base64Preprocessor()],
    }


def _run_chain(chain: list[Preprocessor], pieces: list[bytes]) -> tuple[list[bytes], Rejected]:
    """Feed ``pieces`` through ``chain`` the way an onramp does (each stage gets what the one before gave)."""
    rejected: Rejected = []
    records: list[bytes] = []
    for piece in [*pieces, None]:
        chunks = [piece] if piece is not None else []
        for p in chain:
            out: list[bytes] = []
            for c in chunks:
                p.feed(c, out, rejected)
            if piece is None:  # end of stream: this stage's tail goes on through the rest
                tail: list[bytes] = []
                p.finish(tail, rejected)
                out += tail
            chunks = out
        records += chunks
    return records, rejected


# streams made of the bytes that matter to the framers (separators, \r, base64 padding), long runs included
stream_bytes = st.lists(st.sampled_from([b"a", b"b", b"\n", b"\r", b"|", b"=", b"\x00", b"\x10", b"a" * 20, b"\r\n", b"||"]), max_size=40).map(b"".join)


@pytest.mark.parametrize("name", list(_framers()))
@settings(max_examples=300, deadline=None)
@given(data=stream_bytes, cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8))
def test_framing_is_the_same_wherever_reads_split_the_stream(name: str, data: bytes, cuts: list[int]) -> None:
    make = _framers()[name]

    def run_chain(chain: list[Preprocessor], pieces: list[bytes]) -> tuple[list[bytes], Rejected]:
        records, rejected = _run_chain(chain, pieces)
        return records, sorted(rejected)  # the order of rejections of different stages may follow the reads

    whole = run_chain(make(), [data])
    byte_by_byte = run_chain(make(), [data[i : i + 1] for i in range(len(data))])
    pieces = run_chain(make(), split(data, cuts))
    assert pieces == whole, f"{name}: split {split(data, cuts)!r}"
    assert byte_by_byte == whole, f"{name}: one byte at a time"
