"""Syslog messages (RFC 5424 and RFC 3164) <-> a dict.

Decoding recognises either format by what follows ``<PRI>``: a version digit and a space is
RFC 5424, anything else RFC 3164 (BSD syslog). An RFC 5424 message

``<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3"] An application event``

decodes to ``{"protocol": "rfc5424", "facility": 20, "severity": 5, "version": 1, "timestamp":
"2003-10-11T22:14:15.003Z", "hostname": "mymachine.example.com", "appname": "evntslog",
"procid": None, "msgid": "ID47", "structured_data": {"exampleSDID@32473": {"iut": "3"}},
"message": "An application event"}``: the nil value ``-`` is ``None``, a UTF-8 BOM before the
message is dropped, ``\\"``, ``\\\\`` and ``\\]`` in parameter values are unescaped. An RFC 3164
message ``<34>Oct 11 22:14:15 mymachine su[123]: 'su root' failed`` decodes to ``{"protocol":
"rfc3164", "facility": 4, "severity": 2, "timestamp": "Oct 11 22:14:15", "hostname":
"mymachine", "appname": "su", "procid": "123", "message": "'su root' failed"}``; BSD syslog has
no fixed grammar, so a message without its timestamp or tag keeps what it has (``None`` for the
rest). Timestamps stay the text the sender wrote (BSD syslog's have no year or zone). A message
without ``<PRI>`` (0..191), or an RFC 5424 header or structured data that does not parse, goes
to ``err`` with the reason. Invalid UTF-8 in the message is replaced (U+FFFD), not refused.

Encoding writes RFC 5424 unless the event says ``"protocol": "rfc3164"``; missing fields are
the nil value (RFC 5424) or left out (RFC 3164), ``facility`` defaults to 1 (user) and
``severity`` to 5 (notice). Over TCP, frame messages with the ``octet-counting``
pre/postprocessor (RFC 6587), or ``lines``.
"""

from __future__ import annotations

import re
from typing import Any

from headrace.contract.codec import Codec, DecodeError

_PRI = re.compile(rb"<(\d{1,3})>")
_BSD_TS = re.compile(r"([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) ")
_TAG = re.compile(r"([^\s\[\]:]{1,48})(?:\[([^\]\s]{1,128})\])?: ?")
_SD_NAME = re.compile(r'[^\s=\]"]{1,32}')
_SD_VALUE_ESC = re.compile(r'\\(["\\\]])')
_BOM = "\ufeff"


def _nil(v: str) -> str | None:
    return None if v == "-" else v


def _structured(text: str, at: int) -> tuple[dict[str, dict[str, str]] | None, int]:
    """RFC 5424 STRUCTURED-DATA starting at ``text[at]``: (the elements, the index after it)."""
    if text.startswith("-", at):
        return None, at + 1
    out: dict[str, dict[str, str]] = {}
    while at < len(text) and text[at] == "[":
        m = _SD_NAME.match(text, at + 1)
        if m is None:
            raise DecodeError(f"structured data: bad SD-ID at column {at + 2}")
        params: dict[str, str] = {}
        at = m.end()
        while text.startswith(" ", at):
            p = _SD_NAME.match(text, at + 1)
            if p is None or not text.startswith('="', p.end()):
                raise DecodeError(f"structured data: bad parameter at column {at + 2}")
            i = p.end() + 2
            chars: list[str] = []
            while True:
                if i >= len(text):
                    raise DecodeError("structured data: unterminated parameter value")
                c = text[i]
                if c == "\\" and i + 1 < len(text) and text[i + 1] in '"\\]':
                    chars.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    break
                chars.append(c)
                i += 1
            params[p.group(0)] = "".join(chars)
            at = i + 1
        if not text.startswith("]", at):
            raise DecodeError(f"structured data: ']' expected at column {at + 1}")
        out[m.group(0)] = params
        at += 1
    if not out:
        raise DecodeError(f"structured data: '-' or '[' expected at column {at + 1}")
    return out, at


def parse(data: bytes) -> dict[str, Any]:
    m = _PRI.match(data)
    if m is None:
        raise DecodeError("not syslog: no <PRI> at the start")
    pri = int(m.group(1))
    if pri > 191:
        raise DecodeError(f"not syslog: PRI {pri} over 191")
    text = data[m.end() :].decode("utf-8", "replace").rstrip("\r\n")
    facility, severity = divmod(pri, 8)
    if len(text) >= 2 and text[0] in "123456789" and (text[1] == " " or (text[1].isdigit() and text[2:3] == " ")):
        return _parse_5424(text, facility, severity)
    return _parse_3164(text, facility, severity)


def _parse_5424(text: str, facility: int, severity: int) -> dict[str, Any]:
    parts = text.split(" ", 6)
    if len(parts) < 7:
        raise DecodeError("RFC 5424: header too short (VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA)")
    version, ts, host, app, procid, msgid, rest = parts
    if not all((ts, host, app, procid, msgid)):
        raise DecodeError("RFC 5424: an empty header field (two spaces in a row; '-' is the nil value)")
    sd, at = _structured(rest, 0)
    if at < len(rest) and rest[at] != " ":
        raise DecodeError(f"RFC 5424: a space expected after the structured data, got {rest[at]!r}")
    message = rest[at + 1 :] if at < len(rest) else ""
    if message.startswith(_BOM):
        message = message[1:]
    return {"protocol": "rfc5424", "facility": facility, "severity": severity, "version": int(version), "timestamp": _nil(ts),
            "hostname": _nil(host), "appname": _nil(app), "procid": _nil(procid), "msgid": _nil(msgid), "structured_data": sd,
            "message": message}  # fmt: skip


def _parse_3164(text: str, facility: int, severity: int) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": "rfc3164", "facility": facility, "severity": severity, "timestamp": None, "hostname": None,
                           "appname": None, "procid": None, "message": text}  # fmt: skip
    ts = _BSD_TS.match(text)
    if ts is None:
        return out
    out["timestamp"] = ts.group(1)
    rest = text[ts.end() :]
    host, sep, after = rest.partition(" ")
    if not sep or host.endswith(":"):  # no host: the tag (or the message) follows the timestamp
        after = rest
    else:
        out["hostname"] = host
    tag = _TAG.match(after)
    if tag is not None:
        out["appname"], out["procid"] = tag.group(1), tag.group(2)
        after = after[tag.end() :]
    out["message"] = after
    return out


def _field(v: Any, name: str, limit: int) -> str:
    if v is None:
        return "-"
    s = str(v)
    if not s or len(s) > limit or any(c.isspace() or not c.isprintable() for c in s) or not s.isascii():
        raise ValueError(f"syslog: {name} {s[:40]!r} must be 1-{limit} printable ASCII characters without spaces")
    return s


def _pri(value: dict[str, Any]) -> int:
    facility, severity = value.get("facility", 1), value.get("severity", 5)
    if not isinstance(facility, int) or isinstance(facility, bool) or not 0 <= facility <= 23:
        raise ValueError(f"syslog: facility must be 0..23, got {facility!r}")
    if not isinstance(severity, int) or isinstance(severity, bool) or not 0 <= severity <= 7:
        raise ValueError(f"syslog: severity must be 0..7, got {severity!r}")
    return facility * 8 + severity


def _sd_text(sd: Any) -> str:
    if not sd:
        return "-"
    if not isinstance(sd, dict):
        raise ValueError("syslog: structured_data must be a mapping of SD-ID to a mapping of parameters")
    out = []
    for sd_id, params in sd.items():
        if not _SD_NAME.fullmatch(str(sd_id)) or not isinstance(params, dict):
            raise ValueError(f"syslog: bad SD-ID {sd_id!r} or parameters")
        items = []
        for k, v in params.items():
            if not _SD_NAME.fullmatch(str(k)):
                raise ValueError(f"syslog: bad parameter name {k!r}")
            items.append(f' {k}="' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]") + '"')
        out.append(f"[{sd_id}{''.join(items)}]")
    return "".join(out)


def format_message(value: Any) -> bytes:
    if not isinstance(value, dict):
        raise ValueError("syslog: expected a mapping (facility, severity, timestamp, hostname, appname, procid, msgid, "
                         "structured_data, message)")  # fmt: skip
    pri = _pri(value)
    message = value.get("message")
    message = "" if message is None else str(message)
    if value.get("protocol") == "rfc3164":
        head = [f"<{pri}>"]
        if value.get("timestamp"):
            head.append(f"{value['timestamp']} ")
        if value.get("hostname"):
            head.append(_field(value["hostname"], "hostname", 255) + " ")
        if value.get("appname"):
            head.append(_field(value["appname"], "appname", 48) + (f"[{_field(value['procid'], 'procid', 128)}]" if value.get("procid") else "") + ": ")
        return ("".join(head) + message).encode("utf-8")
    version = value.get("version", 1)
    header = " ".join([f"<{pri}>{int(version)}", _field(value.get("timestamp"), "timestamp", 64), _field(value.get("hostname"), "hostname", 255),
                       _field(value.get("appname"), "appname", 48), _field(value.get("procid"), "procid", 128),
                       _field(value.get("msgid"), "msgid", 32), _sd_text(value.get("structured_data"))])  # fmt: skip
    return (header + (" " + message if message else "")).encode("utf-8")


class SyslogCodec(Codec):
    name = "syslog"
    summary = "syslog messages, RFC 5424 and RFC 3164 (told apart by the version after <PRI>) <-> dicts; writes RFC 5424 by default"

    def decode(self, data: bytes) -> Any:
        return parse(bytes(data))

    def encode(self, value: Any) -> bytes:
        return format_message(value)
