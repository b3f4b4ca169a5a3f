"""UDP onramp and offramp through the real daemon: one datagram, one record; oversized ones to err."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.plugins.peers import json_lines, wait_until
from tests.reliability.harness import scrape_or_empty
from tests.support.daemon import Daemon, free_port


def free_udp_port() -> int:
    return free_port(udp=True)


def test_udp_in_and_out(tmp_path: Path, write: Any) -> None:
    in_port, out_port = free_udp_port(), free_udp_port()
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", out_port))
    receiver.settimeout(10)
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: udp, codec: json, config: {{port: {in_port}, max_datagram_bytes: 100}}}}}}
pipelines:
  main: [{{op: set, set: {{peer: "meta['udp_peer']"}}}}]
offramps:
  copy: {{type: file, codec: json, config: {{path: copy.ndjson}}}}
  out: {{type: udp, codec: json, config: {{port: {out_port}, max_datagram_bytes: 60}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], src/err: [dlq], main: [out, copy], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        copy, dlq = tmp_path / "copy.ndjson", tmp_path / "dlq.ndjson"

        def probe() -> bool:  # UDP has no connect: send until the daemon has seen one
            sender.sendto(b'{"id": 0}', ("127.0.0.1", in_port))
            return bool(json_lines(copy))

        wait_until(probe, what="the udp onramp to listen")
        sent = [{"id": 1}, {"id": 2, "text": "x" * 40}]  # the second encodes over 60 bytes: not sent
        for e in sent:
            sender.sendto(json.dumps(e).encode(), ("127.0.0.1", in_port))
        sender.sendto(b"{broken", ("127.0.0.1", in_port))
        sender.sendto(b'{"big": "' + b"y" * 200 + b'"}', ("127.0.0.1", in_port))
        wait_until(lambda: any(e["id"] == 2 for e in json_lines(copy)) and len(json_lines(dlq)) >= 3, what="all events")
        received = [json.loads(receiver.recv(65536))]  # each datagram is exactly one record
        while received[-1]["id"] == 0:  # the probes
            received.append(json.loads(receiver.recv(65536)))
        assert received[-1]["id"] == 1 and received[-1]["peer"].startswith("127.0.0.1:")
        errors = sorted(json_lines(dlq), key=lambda e: str(e["meta"]["error"]["message"]))
        messages = [e["meta"]["error"]["message"] for e in errors]
        assert messages[0] == "datagram of 211 bytes is over max_datagram_bytes (100)"
        assert messages[1].startswith("invalid JSON")
        assert messages[2].startswith("record of ") and messages[2].endswith("is over max_datagram_bytes (60)")
        assert errors[2]["event"]["id"] == 2
    finally:
        sender.close()
        receiver.close()
        assert d.stop() == 0, d.stderr()


def test_datagrams_to_a_port_nobody_listens_on_are_not_counted_as_sent(tmp_path: Path, write: Any) -> None:
    """Issue 12 item 2: the kernel reports "port unreachable" as an error on the next send; the old
    offramp's transport logged it at debug level and every datagram counted as sent. Now the write
    fails, is retried with backoff, and once a receiver listens every record arrives."""
    out_port, metrics_port = free_udp_port(), free_port()
    n = 50
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{metrics_port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
offramps: {{out: {{type: udp, codec: json, config: {{port: {out_port}}}}}}}
links: {{src: [out]}}
""")
    d = Daemon(cfg)
    refused = 'headrace_component_errors_total{component_id="out",component_kind="offramp",error_type="ConnectionRefusedError"}'
    sent = 'headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}'
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        metrics = d.wait_for(lambda: (m := scrape_or_empty(metrics_port)).get(refused, 0) > 0 and m)
        assert metrics.get(sent, 0) == 0, "nothing counts as sent while nobody listens"
        receiver.bind(("127.0.0.1", out_port))
        receiver.settimeout(20)
        got: set[int] = set()
        while len(got) < n:
            got.add(json.loads(receiver.recv(65536))["id"])
        assert d.wait(20) == 0, d.stderr()
    finally:
        receiver.close()
        d.stop()
    assert got == set(range(n))

