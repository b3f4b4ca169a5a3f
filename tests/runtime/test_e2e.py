"""End to end through the real ``headrace run`` subprocess: files, stdin, fan-in/out, err routing."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import HEADRACE, Daemon, headrace, json_lines

STAGES = '''
def tag(event, meta):
    if event.get("boom"):
        raise ValueError("boom on " + str(event["id"]))
    event["tagged"] = True
    meta["kind"] = "even" if event["id"] % 2 == 0 else "odd"
    return event

def drop_odd(event, meta):
    return event if event["id"] % 2 == 0 else None

def explode(event, meta):
    return [dict(event, part=i) for i in range(2)]
'''


def lines(path: Path) -> list[Any]:
    return json_lines(path)


def records(n: int, **extra: Any) -> str:
    return "".join(json.dumps({"id": i, **extra}) + "\n" for i in range(n))


@pytest.mark.parametrize("workers", [0, 2])
def test_file_python_file_equals_expected(tmp_path: Path, write: Any, workers: int) -> None:
    write("stages.py", STAGES)
    write("in.ndjson", records(500))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
pipelines:
  main:
    - {{op: python, fn: "stages:tag"}}
    - {{op: filter, where: "meta['kind'] == 'even'"}}
offramps: {{out: {{type: file, codec: json, config: {{path: out/result.ndjson}}}}}}
links: {{src: [main], main: [out]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    got = lines(tmp_path / "out" / "result.ndjson")
    assert got == [{"id": i, "tagged": True} for i in range(0, 500, 2)]


def test_stdin_to_stdout(tmp_path: Path, write: Any) -> None:
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {in: {type: stdin, codec: string}}
offramps: {out: {type: stdout, codec: string}}
links: {in: [out]}
""")
    res = headrace("run", str(cfg), input=b"alpha\nbeta\r\n\ngamma")
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == ["alpha", "beta", "gamma"]


def test_unlinked_pipeline_is_an_error_not_a_silent_drop(tmp_path: Path, write: Any) -> None:
    cfg = write("c.yaml", """
version: 1
onramps: {in: {type: stdin}}
pipelines: {up: [{op: set, set: {x: "1"}}]}
offramps: {out: {type: stdout}}
links: {in: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78
    assert "node 'up.set' is not reachable from any onramp" in res.stderr.decode()


def test_fan_out_and_fan_in(tmp_path: Path, write: Any) -> None:
    write("a.ndjson", records(100, src="a"))
    write("b.ndjson", records(50, src="b"))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 2, metrics: {listen: null}}
onramps:
  a: {type: file, config: {path: a.ndjson}}
  b: {type: file, config: {path: b.ndjson}}
pipelines:
  main: [{op: set, set: {seen: "True"}}]
offramps:
  one: {type: file, config: {path: one.ndjson}}
  two: {type: file, config: {path: two.ndjson}}
  raw: {type: file, config: {path: raw.ndjson}}
links:
  a: [main, raw]
  b: [main]
  main: [one, two]
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    expected = sorted([{"id": i, "src": "a", "seen": True} for i in range(100)] + [{"id": i, "src": "b", "seen": True} for i in range(50)],
                      key=lambda e: (e["src"], e["id"]))  # fmt: skip
    for name in ("one", "two"):
        assert sorted(lines(tmp_path / f"{name}.ndjson"), key=lambda e: (e["src"], e["id"])) == expected
    # the raw fan-out branch was not affected by the pipeline's modification
    assert lines(tmp_path / "raw.ndjson") == [{"id": i, "src": "a"} for i in range(100)]


@pytest.mark.parametrize("workers", [0, 2])
def test_err_routing_counts_add_up(tmp_path: Path, write: Any, workers: int) -> None:
    write("stages.py", STAGES)
    good = [json.dumps({"id": i}) for i in range(300)]
    bad_json = ["{not json", '{"id": 1', "\x00\x01", '"just a string']
    boom = [json.dumps({"id": 1000 + i, "boom": True}) for i in range(7)]
    invalid_utf8 = b'{"id": "\xff\xfe"}'
    body = "\n".join(good[:100] + bad_json + boom + good[100:]).encode() + b"\n" + invalid_utf8 + b"\n"
    write("in.ndjson", body)
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
pipelines:
  main:
    - {{op: python, fn: "stages:tag"}}
    - {{op: python, fn: "stages:drop_odd"}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], src/err: [dlq], main: [out], main/err: [dlq]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    out = lines(tmp_path / "out.ndjson")
    dlq = lines(tmp_path / "dlq.ndjson")
    assert [e["id"] for e in out] == list(range(0, 300, 2))
    decode_errors = [e for e in dlq if e["meta"]["error"]["type"] == "DecodeError"]
    stage_errors = [e for e in dlq if e["meta"]["error"]["type"] == "ValueError"]
    assert len(decode_errors) == len(bad_json) + 1
    assert all(e["meta"]["error"]["stage"] == "src" for e in decode_errors)
    assert sorted(e["event"]["id"] for e in stage_errors) == [1000 + i for i in range(7)]
    assert all(e["meta"]["error"]["stage"] == "main.tag" and e["meta"]["error"]["message"].startswith("boom on") for e in stage_errors)
    filtered = 150
    total_in = len(good) + len(bad_json) + len(boom) + 1
    assert total_in == len(out) + len(dlq) + filtered


def test_overlong_line_goes_to_err_and_the_rest_flows(tmp_path: Path, write: Any) -> None:
    write("in.ndjson", '{"id": 1}\n' + '{"x": "' + "a" * 5000 + '"}\n{"id": 2}\n' + "b" * 9000)
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, codec: json, preprocessors: [{name: lines, max_line_bytes: 4096}], config: {path: in.ndjson}}}
offramps:
  out: {type: file, config: {path: out.ndjson}}
  dlq: {type: file, codec: json, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [out], src/err: [dlq]}
""")
    d = Daemon(cfg)
    assert d.wait(30) == 0, d.stderr()
    assert lines(tmp_path / "out.ndjson") == [{"id": 1}, {"id": 2}]
    dlq = lines(tmp_path / "dlq.ndjson")
    assert [e["meta"]["error"]["message"] for e in dlq] == ["line longer than 4096 bytes"] * 2
    assert all(len(e["event"]) == 1024 for e in dlq)


def test_unlinked_err_port_logs_and_counts(tmp_path: Path, write: Any) -> None:
    write("stages.py", STAGES)
    write("in.ndjson", records(3) + json.dumps({"id": 9, "boom": True}) + "\n")
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.ndjson}}}
pipelines: {main: [{op: python, fn: "stages:tag"}]}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
""")
    d = Daemon(cfg)
    assert d.wait(30) == 0
    assert "1 event(s) on unlinked err port of main.tag, written to the last-resort file" in d.stderr()
    assert "ValueError: boom on 9" in d.stderr()
    assert "link 'main/err' to an offramp" in d.stderr()  # the link check accepts, not main.tag/err
    assert len(lines(tmp_path / "out.ndjson")) == 3


def test_events_of_unlinked_err_ports_are_kept_in_the_last_resort_file(tmp_path: Path, write: Any) -> None:
    """Issue 12 item 1: an err port linked nowhere counted its events as done and kept nothing. Now a
    decode error at the onramp and a stage's exception each land in the component's last-resort file
    under the state dir ($STATE_DIRECTORY here, as systemd sets it), with the reason; `check` creates nothing."""
    write("stages.py", STAGES)
    write("in.ndjson", records(2) + "not json\n" + json.dumps({"id": 9, "boom": True, "key": "\u00e9"}) + "\n")
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.ndjson}}}
pipelines: {main: [{op: python, fn: "stages:tag"}]}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
""")
    state = tmp_path / "state"
    assert headrace("check", str(cfg), env={"STATE_DIRECTORY": str(state)}).returncode == 0
    assert not state.exists() and not (tmp_path / "headrace-state").exists(), "check created something"
    d = Daemon(cfg, env={"STATE_DIRECTORY": str(state)})
    assert d.wait(30) == 0, d.stderr()
    kept = {p.name: lines(p) for p in (state / "last-resort").iterdir()}
    assert sorted(kept) == ["main.tag.ndjson", "src.ndjson"]
    [stage_err] = kept["main.tag.ndjson"]
    assert stage_err["event"] == {"id": 9, "boom": True, "key": "\u00e9"} and stage_err["component"] == "main.tag"
    assert stage_err["meta"]["error"]["type"] == "ValueError" and stage_err["meta"]["error"]["message"] == "boom on 9"
    [decode_err] = kept["src.ndjson"]
    assert decode_err["raw"] == "not json" and decode_err["meta"]["error"]["type"] == "DecodeError"
    assert len(lines(tmp_path / "out.ndjson")) == 2


def test_blaster_to_blackhole_prints_throughput(tmp_path: Path, write: Any) -> None:
    write("data.ndjson", records(100, payload="x" * 500))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: blaster, codec: json, config: {source: data.ndjson}}}
offramps: {sink: {type: blackhole, codec: json, config: {warmup_secs: 0.2, stop_after_secs: 1, report: report.json}}}
links: {src: [sink]}
""")
    d = Daemon(cfg)
    assert d.wait(30) == 0, d.stderr()
    out = d.stdout()
    assert out.startswith("Throughput: ") and " MiB/s" in out.splitlines()[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["events"] > 1000 and report["throughput_mib_s"] > 0
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_closed_stdout_stops_neither_the_blackhole_nor_the_daemon(tmp_path: Path, write: Any) -> None:
    """``headrace run bench.yaml | head -1``: the report line is read, the pipe closes, the daemon
    still stops (it kept blasting forever when printing the rest of the report raised)."""
    write("data.ndjson", records(100))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: blaster, codec: json, config: {source: data.ndjson}}}
offramps: {sink: {type: blackhole, codec: json, config: {warmup_secs: 0.1, stop_after_secs: 0.5, report: report.json}}}
links: {src: [sink]}
""")
    r, w = os.pipe()
    os.close(r)  # nobody will read: every write to stdout raises BrokenPipeError
    proc = subprocess.Popen([*HEADRACE, "run", str(cfg)], cwd=tmp_path, stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()  # a no-op once it exited; it must not outlive a failed test
    assert proc.returncode == 0, err.decode()
    assert "cannot write its report" in err.decode()
    assert json.loads((tmp_path / "report.json").read_text())["events"] > 0, "the report file is written first"


def test_stdout_offramp_with_a_closed_pipe_sends_records_to_err(tmp_path: Path, write: Any) -> None:
    write("in.ndjson", records(5))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.ndjson}}}
offramps:
  out: {type: stdout}
  dlq: {type: file, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [out], out/err: [dlq]}
""")
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.Popen([*HEADRACE, "run", str(cfg)], cwd=tmp_path, stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()  # a no-op once it exited; it must not outlive a failed test
    assert proc.returncode == 0, err.decode()
    dead = [json.loads(x) for x in (tmp_path / "dlq.ndjson").read_text().splitlines()]
    assert [d["event"]["id"] for d in dead] == list(range(5))
    assert all("BrokenPipeError" in d["meta"]["error"]["message"] for d in dead)


SHARED_META_STAGES = """
def tag(event, meta):          # on workers: every event gets an equal meta (it comes back shared)
    meta["kind"] = "same"
    return event

async def own(event, meta):    # on the loop, then on workers again: each writes its own value
    meta["id"] = event["id"]
    return event

def own_again(event, meta):
    meta["twice"] = event["id"] * 2
    return event
"""


def test_equal_metas_shared_by_workers_are_unshared_before_stages_write(tmp_path: Path, write: Any) -> None:
    write("stages.py", SHARED_META_STAGES)
    write("in.ndjson", records(300))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 2, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.ndjson}}}
pipelines:
  main:
    - {op: python, fn: "stages:tag", readonly: true}
    - {op: python, fn: "stages:own"}
    - {op: python, fn: "stages:own_again"}
offramps: {out: {type: file, with_meta: true, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    got = [json.loads(x) for x in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert [(e["event"]["id"], e["meta"]["id"], e["meta"]["twice"], e["meta"]["kind"]) for e in got] == \
        [(i, i, 2 * i, "same") for i in range(300)]  # fmt: skip


def test_sigint_drains_and_exits_zero(tmp_path: Path, write: Any) -> None:
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {tick: {type: metronome, config: {interval: 10ms}}}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {tick: [out]}
""")
    d = Daemon(cfg)
    d.wait_for(lambda: (tmp_path / "out.ndjson").exists() and len(lines(tmp_path / "out.ndjson")) >= 5)
    d.signal(signal.SIGINT)
    assert d.wait(20) == 0
    ids = [e["id"] for e in lines(tmp_path / "out.ndjson")]
    assert ids == list(range(len(ids)))


def test_stdout_in_non_blocking_mode_with_a_slow_reader_writes_each_record_once(tmp_path: Path, write: Any) -> None:
    """Issue 12 item 2: a pipe that a parent put in non-blocking mode, read slowly. The buffered writer
    raised BlockingIOError part-way through a batch, and the retry wrote the batch again whole:
    duplicates and torn lines. Now the write waits for the pipe and every record is written once."""
    n = 3000
    write("in.ndjson", "".join(json.dumps({"id": i, "pad": "x" * 200}) + "\n" for i in range(n)))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.ndjson}}}
offramps: {out: {type: stdout}}
links: {src: [out]}
""")
    r, w = os.pipe()
    os.set_blocking(w, False)  # shared with the daemon: its stdout is non-blocking
    proc = subprocess.Popen([*HEADRACE, "run", str(cfg)], cwd=tmp_path, stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    data = b""
    try:
        with os.fdopen(r, "rb", buffering=0) as reader:
            while chunk := reader.read(4096):  # a slow reader: the 64 KiB pipe buffer stays full
                data += chunk
                time.sleep(0.001)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()  # a no-op once it exited; it must not outlive a failed test
    assert proc.returncode == 0, err.decode()
    ids = [json.loads(x)["id"] for x in data.splitlines()]  # a torn line fails to parse here
    assert ids == list(range(n))


def test_stdout_to_a_full_file_completes_the_cut_record_instead_of_writing_it_again(tmp_path: Path, write: Any) -> None:
    """stdout redirected to a file that cannot grow (EFBIG under a file size limit, as ENOSPC on a full
    disk): the write stops inside a record. The records before it are done; once the file can grow,
    the cut record's tail is written, then the rest: each record once, none torn."""
    n, limit = 400, 20_000
    write("in.ndjson", "".join(json.dumps({"id": i, "pad": "x" * 90}) + "\n" for i in range(n)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}, batch_size: {n}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
offramps: {{out: {{type: stdout}}}}
links: {{src: [out]}}
""")
    saved = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, saved[1]))  # inherited by the daemon from its start
    try:
        d = Daemon(cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
    try:
        d.wait_for(lambda: "write of" in d.stderr() and "File too large" in d.stderr())
        assert d.stdout_path.stat().st_size == limit, "the write stopped inside a record"
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, saved)
        assert d.wait(30) == 0, d.stderr()
    finally:
        d.stop()
    assert [json.loads(x)["id"] for x in d.stdout_path.read_bytes().splitlines()] == list(range(n))


@pytest.mark.parametrize("targets", ["two offramps", "an offramp and a pipeline", "two pipelines"])
def test_each_malformed_record_is_reported_once_whatever_the_fan_out(tmp_path: Path, targets: str) -> None:
    """An onramp linked to several targets: each would find the same malformed records; they
    reach the onramp's err port once (they were reported once per target)."""
    from tests.support.daemon import Daemon

    lines = [json.dumps({"id": i}) for i in range(10)] + ["not json", "{broken", '{"id": 99']
    (tmp_path / "in.ndjson").write_text("\n".join(lines) + "\n")
    (tmp_path / "stages.py").write_text("def same(event, meta):\n    return event\n")
    pipelines, links = {
        "two offramps": ("", "src: [a, b]"),
        "an offramp and a pipeline": ("p1: [{op: python, fn: 'stages:same'}]", "src: [a, p1], p1: [b]"),
        "two pipelines": ("p1: [{op: python, fn: 'stages:same'}], p2: [{op: python, fn: 'stages:same'}]", "src: [p1, p2], p1: [a], p2: [b]"),
    }[targets]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
pipelines: {{{pipelines}}}
offramps:
  a: {{type: file, config: {{path: a.ndjson}}}}
  b: {{type: file, config: {{path: b.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{{links}, src/err: [dlq]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    dead = [json.loads(x) for x in (tmp_path / "dlq.ndjson").read_text().splitlines()]
    assert sorted(e["event"] for e in dead) == sorted(["not json", "{broken", '{"id": 99']), dead
    for name in ("a", "b"):
        assert len((tmp_path / f"{name}.ndjson").read_text().splitlines()) == 10
