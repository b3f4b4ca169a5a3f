"""The package's own tests: the contract suites headrace ships, and the behaviour."""

from __future__ import annotations

from typing import Any

import pytest
from headrace_example.logfmt import LogfmtCodec
from headrace_example.redact import RedactOperator

from headrace.contract import DecodeError
from headrace.testing import codec_contract, operator_contract


def test_redact_keeps_the_operator_contract() -> None:
    operator_contract(RedactOperator, {"fields": ["password"]})
    operator_contract(RedactOperator, {"fields": ["user"]}, [({"user": "ann", "n": 1}, {}), ({"n": 2}, {}), ("text", {})])


def test_logfmt_keeps_the_codec_contract() -> None:
    samples: list[dict[str, Any]] = [{}, {"a": "1"}, {"level": "info", "msg": "disk full", "path": 'C:\\ "x"', "empty": "", "eq": "a=b"}]
    codec_contract(LogfmtCodec, samples, garbage=[b"novalue", b'a="open', b"\xff=1", b'a="x"y', b'a="\\q"'])


def test_logfmt_flattens_and_writes_bytes() -> None:
    codec = LogfmtCodec()
    assert codec.encode({"a": {"b": 1}, "k": b"\xff", "t": b"ok"}) == b'a.b=1 k="base64:/w==" t=ok'  # '=' inside a value: quoted
    assert codec.encode_with_meta({"x": "1"}, {"kafka": {"key": b"k1"}}) == b"event.x=1 meta.kafka.key=k1"
    with pytest.raises(DecodeError):
        codec.decode(b"a b=1")
