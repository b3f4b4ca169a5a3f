"""``headrace replay``: dead letters go back through a running daemon once their cause is fixed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon, free_port, json_lines

BROKEN = '''
def picky(event, meta):
    if event["id"] % 3 == 0:
        raise ValueError(f"no multiples of three: {event['id']}")
    return event
'''
FIXED = '''
def picky(event, meta):
    if event["id"] == 9:
        raise ValueError("nine is still refused")
    return event
'''


CONFIG = """
version: 1
daemon: {{workers: {workers}, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{orders: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}}}
pipelines: {{main: [{stages}]}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{orders: [main], main: [out], main/err: [dlq]}}
"""


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "headrace", "replay", *args], capture_output=True, text=True, timeout=120, check=False)


def metric(port: int, series: str) -> float:
    import urllib.request

    for line in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_replay_redelivers_the_fixed_dead_letters_once_and_reports_the_rest(tmp_path: Path, write: Any) -> None:
    port = free_port()
    write("stages.py", BROKEN)
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(30)))
    cfg = write("c.yaml", CONFIG.format(port=port, workers=2, stages='{op: python, fn: "stages:picky"}'))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(json_lines(tmp_path / "dlq.ndjson")) == 10 and len(json_lines(tmp_path / "out.ndjson")) == 20, timeout=30)
        letters = tmp_path / "letters.ndjson"
        letters.write_text((tmp_path / "dlq.ndjson").read_text())
        dry = replay(str(letters), "--url", f"127.0.0.1:{port}", "--dry-run")
        assert dry.returncode == 0 and "would replay 10, failed again 0, skipped 0" in dry.stdout, dry

        write("stages.py", FIXED)  # the cause is fixed (all but id 9), and the daemon reloaded
        d.signal(signal.SIGHUP)
        d.wait_for(lambda: metric(port, 'headrace_config_reloads_total{result="success"}') == 1, timeout=30)

        first = replay(str(letters), "--url", f"127.0.0.1:{port}")
        assert first.returncode == 1, first  # one failed again
        assert "re-delivered 9, failed again 1, skipped 0" in first.stdout, first
        assert "1 x ValueError: nine is still refused" in first.stdout, first
        out = sorted(e["id"] for e in json_lines(tmp_path / "out.ndjson"))
        assert out == [i for i in range(30) if i != 9], "each fixed dead letter delivered once"
        again = json_lines(tmp_path / "dlq.ndjson")[10:]
        assert len(again) == 1 and again[0]["event"] == {"id": 9}
        assert again[0]["meta"]["error"]["message"] == "nine is still refused"
        assert again[0]["meta"]["replayed"]["error"]["message"] == "no multiples of three: 9", "the old reason kept beside the new"

        second = replay(str(letters), "--url", f"127.0.0.1:{port}", "--where", "event['id'] >= 6")
        assert "re-delivered 0, failed again 1, skipped 7 (replayed before); 2 not chosen by --where" in second.stdout, second
        assert sorted(e["id"] for e in json_lines(tmp_path / "out.ndjson")) == out, "nothing delivered twice"
    finally:
        assert d.stop() == 0, d.stderr()


def test_replay_with_no_daemon_running_runs_the_config_once_and_exits(tmp_path: Path, write: Any) -> None:
    import socket

    port = free_port()
    write("stages.py", BROKEN)
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(30)))
    cfg = write("c.yaml", CONFIG.format(port=port, workers=1, stages='{op: python, fn: "stages:picky"}'))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(json_lines(tmp_path / "dlq.ndjson")) == 10 and len(json_lines(tmp_path / "out.ndjson")) == 20, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    letters = tmp_path / "letters.ndjson"
    letters.write_text((tmp_path / "dlq.ndjson").read_text())
    write("stages.py", FIXED)
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(100, 105)))  # a new file: not read
    with socket.socket() as taken:  # the admin port is busy (say, the daemon came back): a one-shot run does not need it
        taken.bind(("127.0.0.1", port))
        taken.listen()
        dry = replay(str(letters), "--config", str(cfg), "--dry-run")
        assert dry.returncode == 0 and "would replay 10, failed again 0, skipped 0" in dry.stdout, dry
        first = replay(str(letters), "--config", str(cfg), "--rate", "50")
    assert first.returncode == 1, first  # one failed again
    assert "re-delivered 9, failed again 1, skipped 0" in first.stdout and "1 x ValueError: nine is still refused" in first.stdout, first
    assert sorted(e["id"] for e in json_lines(tmp_path / "out.ndjson")) == [i for i in range(30) if i != 9], "its onramps read nothing"
    again = json_lines(tmp_path / "dlq.ndjson")[10:]
    assert [x["event"] for x in again] == [{"id": 9}] and again[0]["meta"]["error"]["message"] == "nine is still refused"
    second = replay(str(letters), "--config", str(cfg))
    assert "re-delivered 0, failed again 1, skipped 9 (replayed before)" in second.stdout, second
    assert len(json_lines(tmp_path / "out.ndjson")) == 29, "nothing delivered twice"
    bad = replay(str(letters), "--config", str(write("bad.yaml", "version: 1\nonramps: {x: {type: nope}}\n")))
    assert bad.returncode == 78 and "nope" in bad.stderr, bad


def test_dead_letters_from_a_file_name_its_path_and_line_across_chunks_blank_lines_and_a_restart(tmp_path: Path, write: Any) -> None:
    write("stages.py", BROKEN)
    lines = []
    for i in range(40):
        lines.append(json.dumps({"id": i}) + ("\r" if i % 5 == 0 else ""))
        if i % 11 == 0:
            lines.append("")  # blank lines are skipped by the framing, and still counted
    write("in.ndjson", "".join(line + "\n" for line in lines[:30]))
    numbers = {json.loads(line)["id"]: k + 1 for k, line in enumerate(lines) if line}
    port = free_port()
    cfg = write("c.yaml", CONFIG.format(port=port, workers=1, stages='{op: python, fn: "stages:picky"}').replace(
        "poll_interval: 50ms", "poll_interval: 50ms, read_size: 64, checkpoint_interval: 50ms"))  # fmt: skip
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(json_lines(tmp_path / "out.ndjson")) + len(json_lines(tmp_path / "dlq.ndjson")) == 27, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    with open(tmp_path / "in.ndjson", "a") as f:  # more lines while it is down: resumed after the checkpoint, still counted
        f.write("".join(line + "\n" for line in lines[30:]))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(json_lines(tmp_path / "dlq.ndjson")) == 14, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    path = str(tmp_path / "in.ndjson")
    for letter in json_lines(tmp_path / "dlq.ndjson"):
        i = letter["event"]["id"]
        assert letter["meta"]["error"]["file"] == {"path": path, "line": numbers[i]}, letter
        assert letter["meta"]["file_path"] == path and letter["meta"]["file_line"] == numbers[i]
    assert sorted(x["event"]["id"] for x in json_lines(tmp_path / "dlq.ndjson")) == list(range(0, 40, 3))


def test_replay_refuses_what_it_cannot_do(tmp_path: Path, write: Any) -> None:
    missing = replay(str(tmp_path / "nope.ndjson"))
    assert missing.returncode == 2 and "no file" in missing.stderr
    f = write("x.ndjson", '{"event": 1, "meta": {}}\n')
    assert replay(str(f), "--where", "import os").returncode == 2
    down = replay(str(f), "--url", f"127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach" in down.stderr


def test_replay_reads_dead_letters_from_a_kafka_topic_into_a_node(tmp_path: Path, write: Any, kafka_broker: Any, kafka_topic: Any) -> None:
    topic = kafka_topic(2, prefix="dlq")
    letters = [{"event": {"id": i}, "meta": {"error": {"stage": "main.picky", "type": "ValueError", "message": "old", "origin": "gone"}}}
               for i in range(6)]  # fmt: skip
    kafka_broker.produce(topic, [(None, json.dumps(x).encode()) for x in letters])
    port = free_port()
    write("stages.py", FIXED)
    write("in.ndjson", "")
    cfg = write("c.yaml", CONFIG.format(port=port, workers=0, stages='{op: python, fn: "stages:picky"}, {op: set, set: {seen: "True"}}'))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _ready(port), timeout=30)
        url = f"kafka://{kafka_broker.bootstrap}/{topic}"
        gone = replay(url, "--url", f"127.0.0.1:{port}")  # their origin is no onramp of this config
        assert gone.returncode == 1 and "6 x no onramp or first node of a chain 'gone'" in gone.stdout, gone
        res = replay(url, "--url", f"127.0.0.1:{port}", "--into", "main.picky")
        assert res.returncode == 0 and "re-delivered 6, failed again 0, skipped 0" in res.stdout, res
        assert sorted(e["id"] for e in json_lines(tmp_path / "out.ndjson")) == list(range(6))
        assert all(e["seen"] is True for e in json_lines(tmp_path / "out.ndjson")), "through the whole chain from its first node"
        missing = replay(f"kafka://{kafka_broker.bootstrap}/nosuchtopic", "--url", f"127.0.0.1:{port}")
        assert missing.returncode == 2 and "no topic 'nosuchtopic'" in missing.stderr, missing
    finally:
        assert d.stop() == 0, d.stderr()


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
