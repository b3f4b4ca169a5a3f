"""Line numbers of records framed by ``lines`` (meta ``file_line``): right, or none, never wrong."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from headrace.plugins.processors.lines import LinesPreprocessor
from headrace.runtime.onramp import _line_numbers

LINES = st.lists(st.sampled_from([b"", b"a", b"bb", b"\r", b"c\r", b"\r\r", b"xyz", b"{\"k\": 1}"]), max_size=40)


def _chunks(text: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in pairwise(points) if b > a]


@settings(max_examples=300, deadline=None)
@given(lines=LINES, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_each_number_given_is_the_records_line(lines: list[bytes], cuts: list[int]) -> None:
    text = b"".join(line + b"\n" for line in lines)
    expected = [i + 1 for i, line in enumerate(lines) if (line[:-1] if line.endswith(b"\r") else line)]
    pre = LinesPreprocessor()
    first, numbers = 1, []
    for chunk in _chunks(text, cuts):
        carried, before = bool(pre.buf), pre.separators
        out: list[bytes] = []
        pre.feed(chunk, out, [])
        assert pre.separators - before == chunk.count(b"\n")
        found = _line_numbers(chunk, first, carried, len(out), pre.separators - before)
        numbers.extend(found if found is not None else [None] * len(out))
        first += chunk.count(b"\n")
    assert len(numbers) == len(expected)
    assert all(n is None or n == e for n, e in zip(numbers, expected, strict=True)), (numbers, expected)
    if b"\r" not in text:  # without a line that is only "\r" split from its "\n", every record is numbered
        assert numbers == expected


def test_a_chunk_whose_newlines_each_end_a_record_is_a_range() -> None:
    assert _line_numbers(b"a\nb\nc\n", 7, False, 3, 3) == range(7, 10)
    assert _line_numbers(b"a\n\nc\n", 7, False, 2, 3) == [7, 9]  # a blank line: counted one by one
    assert list(_line_numbers(b"\nc\n", 7, True, 2, 2) or []) == [7, 8]  # the first line began in the chunk before
    assert _line_numbers(b"a\nb\n", 1, False, 5, 2) is None  # does not come out: no numbers
