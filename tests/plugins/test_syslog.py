"""The syslog codec (RFC 5424 and RFC 3164) and syslog over TCP with octet counting (issue 18)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headrace.contract.codec import DecodeError
from headrace.plugins.codecs.syslog import SyslogCodec
from tests.support.daemon import Daemon, free_port, json_lines

CODEC = SyslogCodec()

RFC_EXAMPLES: list[tuple[bytes, dict[str, Any]]] = [
    (b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \xef\xbb\xbf'su root' failed for lonvick on /dev/pts/8",
     {"protocol": "rfc5424", "facility": 4, "severity": 2, "version": 1, "timestamp": "2003-10-11T22:14:15.003Z",
      "hostname": "mymachine.example.com", "appname": "su", "procid": None, "msgid": "ID47", "structured_data": None,
      "message": "'su root' failed for lonvick on /dev/pts/8"}),
    (b'<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application" '
     b'eventID="1011"][examplePriority@32473 class="high"]',
     {"protocol": "rfc5424", "facility": 20, "severity": 5, "version": 1, "timestamp": "2003-10-11T22:14:15.003Z",
      "hostname": "mymachine.example.com", "appname": "evntslog", "procid": None, "msgid": "ID47",
      "structured_data": {"exampleSDID@32473": {"iut": "3", "eventSource": "Application", "eventID": "1011"},
                          "examplePriority@32473": {"class": "high"}}, "message": ""}),
    (b'<13>1 - host app 42 - [x@1 quote="a\\"b" slash="c\\\\d" bracket="e\\]f"] msg',
     {"protocol": "rfc5424", "facility": 1, "severity": 5, "version": 1, "timestamp": None, "hostname": "host", "appname": "app",
      "procid": "42", "msgid": None, "structured_data": {"x@1": {"quote": 'a"b', "slash": "c\\d", "bracket": "e]f"}}, "message": "msg"}),
    (b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
     {"protocol": "rfc3164", "facility": 4, "severity": 2, "timestamp": "Oct 11 22:14:15", "hostname": "mymachine", "appname": "su",
      "procid": None, "message": "'su root' failed for lonvick on /dev/pts/8"}),
    (b"<13>Feb  5 17:32:18 10.0.0.99 sshd[4242]: Accepted publickey",
     {"protocol": "rfc3164", "facility": 1, "severity": 5, "timestamp": "Feb  5 17:32:18", "hostname": "10.0.0.99", "appname": "sshd",
      "procid": "4242", "message": "Accepted publickey"}),
    (b"<0>no header at all",
     {"protocol": "rfc3164", "facility": 0, "severity": 0, "timestamp": None, "hostname": None, "appname": None, "procid": None,
      "message": "no header at all"}),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), RFC_EXAMPLES)
def test_the_rfcs_examples_decode_and_encode_back(raw: bytes, expected: dict[str, Any]) -> None:
    assert CODEC.decode(raw) == expected
    assert CODEC.decode(CODEC.encode(expected)) == expected


@pytest.mark.parametrize(("raw", "reason"), [
    (b"no pri", "no <PRI>"),
    (b"<192>1 - - - - - -", "PRI 192 over 191"),
    (b"<13>1 - - - -", "header too short"),
    (b"<13>1 -  - - - - msg", "empty header field"),
    (b"<13>1 - - - - - [bad", "']' expected"),
    (b'<13>1 - - - - - [id k="unterminated]', "unterminated parameter value"),
    (b"<13>1 - - - - - x", "'-' or '['"),
])  # fmt: skip
def test_what_does_not_parse_is_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        CODEC.decode(raw)
    assert reason in str(info.value)


_TOKEN = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
_SD_NAME = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='="] '), min_size=1, max_size=10)


@given(facility=st.integers(0, 23), severity=st.integers(0, 7), fields=st.lists(st.one_of(st.none(), _TOKEN), min_size=5, max_size=5),
       sd=st.one_of(st.none(), st.dictionaries(_SD_NAME, st.dictionaries(_SD_NAME, st.text(max_size=10)), min_size=1, max_size=3)),
       message=st.text(max_size=50).filter(lambda m: "\n" not in m and "\r" not in m and not m.startswith("\ufeff")))  # fmt: skip
def test_any_rfc5424_message_survives_encode_then_decode(facility: int, severity: int, fields: list[str | None],
                                                         sd: dict[str, dict[str, str]] | None, message: str) -> None:  # fmt: skip
    event = {"protocol": "rfc5424", "facility": facility, "severity": severity, "version": 1, "timestamp": fields[0], "hostname": fields[1],
             "appname": fields[2], "procid": fields[3], "msgid": fields[4], "structured_data": sd, "message": message}  # fmt: skip
    assert CODEC.decode(CODEC.encode(event)) == event


@pytest.mark.parametrize("bad", [{"facility": 24}, {"severity": -1}, {"hostname": "two words"}, {"structured_data": {"a b": {}}}, "text"])
def test_what_syslog_cannot_carry_is_an_encode_error(bad: Any) -> None:
    value = {"message": "m", **bad} if isinstance(bad, dict) else bad
    with pytest.raises(ValueError, match="syslog"):
        CODEC.encode(value)


def test_syslog_over_tcp_with_octet_counting_and_newlines_mixed(tmp_path: Path) -> None:
    src = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{syslog: {{type: tcp, codec: syslog, preprocessors: [octet-counting], config: {{port: {src}}}}}}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  bad: {{type: file, codec: json, with_meta: true, config: {{path: err.ndjson}}}}
links: {{syslog: [out], syslog/err: [bad]}}
""")
    messages = [b"<165>1 2026-12-04T00:00:00Z host app - - - message %d" % i for i in range(100)]
    stream = b"".join((b"%d %s" % (len(m), m)) if i % 2 else m + b"\n" for i, m in enumerate(messages))
    stream += b"14 this is no PRI"  # octet-counted, but not syslog
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _listening(src), timeout=30)
        with socket.create_connection(("127.0.0.1", src), timeout=10) as s:
            s.sendall(stream)
        d.wait_for(lambda: _lines(tmp_path / "out.ndjson") == 100 and _lines(tmp_path / "err.ndjson") == 1, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    assert [e["message"] for e in json_lines(tmp_path / "out.ndjson")] == [f"message {i}" for i in range(100)]
    (err,) = json_lines(tmp_path / "err.ndjson")
    assert "no <PRI>" in err["meta"]["error"]["message"] and err["event"] == "this is no PRI"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_json_of_a_decoded_message_is_plain() -> None:
    assert json.loads(json.dumps(CODEC.decode(RFC_EXAMPLES[1][0])))["structured_data"]["examplePriority@32473"] == {"class": "high"}
