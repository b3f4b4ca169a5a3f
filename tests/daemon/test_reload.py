"""Hot reload through the real daemon: by difference, without loss, and without leaks."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import RELOAD_HEADERS, Daemon, free_port, json_lines, metric, scrape

STAGES = '''
def work(event, meta):
    event["w"] = 1
    return event
'''

BASE = """
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}, batch_size: 64}}
onramps: {{src: {{type: file, config: {{path: in.ndjson, read_size: 4096}}}}}}
pipelines:
  keep: [{{op: python, fn: "stages:work"}}]
  change:
    - {{op: python, fn: "stages:work"}}
{extra}
offramps:
  out1: {{type: file, config: {{path: out1.ndjson}}}}
  out2: {{type: file, config: {{path: out2.ndjson}}}}
links: {{src: [keep, change], keep: [out1], change: [out2]}}
"""


def ids(path: Path) -> list[int]:
    return [e["id"] for e in json_lines(path)]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
def test_reload_under_load_switches_one_pipeline_at_one_point(tmp_path: Path, write: Any) -> None:
    n = 400_000
    write("stages.py", STAGES)
    write("in.ndjson", "".join(f'{{"id": {i}}}\n' for i in range(n)))
    port = free_port()
    cfg = write("c.yaml", BASE.format(port=port, extra=""))
    d = Daemon(cfg)
    d.wait_for(lambda: len(ids(tmp_path / "out2.ndjson")) > n // 10, timeout=60, interval=0.02)
    cfg.write_text(BASE.format(port=port, extra="    - {op: filter, where: \"event['id'] % 2 == 0\"}"))
    d.signal(signal.SIGHUP)
    assert d.wait(120) == 0, d.stderr()
    assert "reloaded in" in d.stderr(), d.stderr()
    assert ids(tmp_path / "out1.ndjson") == list(range(n)), "the unchanged pipeline: complete, in order, no duplicates"
    out2 = ids(tmp_path / "out2.ndjson")
    k = next(i for i, v in enumerate(out2) if v != i)  # the switch point: first missing odd id
    assert n // 10 <= k < n, "switched after the reload, before the end"
    assert out2[:k] == list(range(k))
    assert out2[k:] == [i for i in range(k, n) if i % 2 == 0], "after the switch only the new pipeline's output, nothing lost"


def test_invalid_reload_changes_nothing_and_is_counted(tmp_path: Path, write: Any) -> None:
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{tick: {{type: metronome, config: {{interval: 5ms}}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{tick: [out]}}
""")
    good = cfg.read_text()
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(ids(tmp_path / "out.ndjson")) > 10)
        cfg.write_text(good.replace("type: metronome", "type: metronom"))
        d.signal(signal.SIGHUP)
        d.wait_for(lambda: metric(port, 'headrace_config_reloads_total{result="failure"}') == 1)
        m = scrape(port)
        assert m["headrace_config_last_reload_successful"] == 0
        assert "reload rejected, the running config stays" in d.stderr()
        assert "c.yaml:4:" in d.stderr() and "unknown onramp 'metronom'" in d.stderr()
        before = len(ids(tmp_path / "out.ndjson"))
        d.wait_for(lambda: len(ids(tmp_path / "out.ndjson")) > before + 10)
        # the admin endpoint reports the same, with the errors
        req = urllib.request.Request(f"http://127.0.0.1:{port}/reload", method="POST", headers=RELOAD_HEADERS)
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("expected 422")
        except urllib.error.HTTPError as exc:
            assert exc.code == 422
            assert "unknown onramp 'metronom'" in json.loads(exc.read())["errors"][0]
        cfg.write_text(good)
        body = json.loads(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/reload", method="POST", headers=RELOAD_HEADERS), timeout=10).read())
        assert body["ok"] is True and body["diff"]["unchanged"] == ["tick", "out"] and not body["diff"]["changed"]
        assert scrape(port)["headrace_config_last_reload_successful"] == 1
    finally:
        assert d.stop() == 0, d.stderr()
    got = ids(tmp_path / "out.ndjson")
    assert got == list(range(len(got))), "the metronome never restarted: one unbroken sequence"


@pytest.mark.slow
def test_twenty_reloads_leave_processes_and_descriptors_stable(tmp_path: Path, write: Any) -> None:
    write("stages.py", STAGES)
    port = free_port()
    variant = """
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{tick: {{type: metronome, config: {{interval: 2ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:work"}}, {{op: filter, where: "event['id'] % {mod} != 1"}}]}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{tick: [main], main: [out]}}
"""
    cfg = write("c.yaml", variant.format(port=port, mod=2))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: metric(port, 'headrace_component_received_events_total{component_id="out",component_kind="offramp"}') > 10)
        start_fds, start_kids = fds(d.pid), sorted(d.children())
        t0 = time.monotonic()
        for i in range(20):
            cfg.write_text(variant.format(port=port, mod=3 + i % 2))
            d.signal(signal.SIGHUP)
            d.wait_for(lambda i=i: metric(port, 'headrace_config_reloads_total{result="success"}') >= i + 1, timeout=10, interval=0.02)
        assert time.monotonic() - t0 < 10
        time.sleep(0.5)
        assert sorted(d.children()) == start_kids, "same worker processes: a stage change is a reconfigure, not a restart"
        assert fds(d.pid) <= start_fds + 2, (start_fds, fds(d.pid))
    finally:
        assert d.stop() == 0, d.stderr()
    got = ids(tmp_path / "out.ndjson")
    assert len(got) == len(set(got)), "no duplicates across 20 reloads"
    assert got == sorted(got), "one source, in order across the reloads"


def test_reload_reimports_changed_stage_module_in_workers(tmp_path: Path, write: Any) -> None:
    write("stages.py", 'import os\n\ndef work(event, meta):\n    event["v"] = 1\n    event["pid"] = os.getpid()\n    return event\n')
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{tick: {{type: metronome, config: {{interval: 5ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:work"}}]}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{tick: [main], main: [out]}}
""")
    out = tmp_path / "out.ndjson"

    def events() -> list[Any]:
        return json_lines(out)

    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(events()) > 20)
        pids_before = {e["pid"] for e in events()}
        kids_before = set(d.children())  # the fork server and both workers (an idle pool may have used only one so far)
        assert pids_before <= kids_before
        write("stages.py", 'import os\n\ndef work(event, meta):\n    event["v"] = 2\n    event["pid"] = os.getpid()\n    return event\n')
        body = json.loads(urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/reload", method="POST", headers=RELOAD_HEADERS), timeout=20).read())
        assert body["diff"]["changed"] == ["main.work"], body
        assert body["diff"]["unchanged"] == ["tick", "out"], body
        d.wait_for(lambda: sum(e["v"] == 2 for e in events()) > 20)
        assert set(d.children()) == kids_before, "no process restarted"
    finally:
        assert d.stop() == 0, d.stderr()
    evs = events()
    versions = [e["v"] for e in evs]
    k = versions.index(2)
    assert set(versions[:k]) == {1} and set(versions[k:]) == {2}, "one switch point"
    assert [e["id"] for e in evs] == list(range(len(evs))), "the metronome kept running: nothing lost, in order"
    assert {e["pid"] for e in evs[k:]} <= kids_before, "the same workers run the new code (re-imported, not restarted)"


def test_watch_reloads_when_a_stage_module_changes(tmp_path: Path, write: Any) -> None:
    """--watch follows the stage modules too, not only the config file (issue 17, bug 8)."""
    write("stages.py", 'def work(event, meta):\n    event["v"] = 1\n    return event\n')
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {tick: {type: metronome, config: {interval: 10ms}}}
pipelines: {main: [{op: python, fn: "stages:work"}]}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {tick: [main], main: [out]}
""")
    out = tmp_path / "out.ndjson"
    d = Daemon(cfg, run_args=("--watch",))
    try:
        d.wait_for(lambda: len(json_lines(out)) > 10)
        before = (tmp_path / "stages.py").stat().st_mtime_ns
        write("stages.py", 'def work(event, meta):\n    event["v"] = 2\n    return event\n')
        os.utime(tmp_path / "stages.py", ns=(before + 10**9, before + 10**9))  # a distinct modification time, however coarse the clock
        d.wait_for(lambda: any(e["v"] == 2 for e in json_lines(out)), timeout=20)
        assert "config file or a stage module changed; reloading" in d.stderr()
    finally:
        assert d.stop() == 0, d.stderr()


def test_a_reload_names_every_daemon_setting_it_cannot_apply(tmp_path: Path, write: Any) -> None:
    """Issue 17 bug 3's class: every ``daemon:`` setting a reload does not apply is named in the answer
    and the log (was: only workers and metrics.listen; batch_size, the queue bounds, allowed_hosts and
    worker_max_rss changed silently nothing for what kept running); the ones it applies are not."""
    port = free_port()
    write("stages.py", STAGES)
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}, batch_size: 64, queue_events: 1000, shutdown_timeout: 20s}}
onramps: {{tick: {{type: metronome, config: {{interval: 5ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:work"}}]}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{tick: [main], main: [out]}}
""")
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(ids(tmp_path / "out.ndjson")) > 10)
        cfg.write_text(cfg.read_text().replace("workers: 2", "workers: 1").replace("batch_size: 64", "batch_size: 32")
                       .replace("queue_events: 1000", "queue_events: 500").replace("shutdown_timeout: 20s", "shutdown_timeout: 5s")
                       .replace('"}, batch_size', '", allowed_hosts: [example.org]}, batch_size')
                       .replace("daemon: {workers: 1,", "daemon: {workers: 1, worker_max_rss: 1GiB, stage_timeout: 30s,"))
        req = urllib.request.Request(f"http://127.0.0.1:{port}/reload", method="POST", headers=RELOAD_HEADERS)
        body = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert body["ok"] is True
        assert body["restart_required"] == ["batch_size", "metrics.allowed_hosts", "queue_events", "worker_max_rss", "workers"]
        for key in body["restart_required"]:
            assert f"reload: daemon.{key} changed; it takes effect only after a restart" in d.stderr()
        assert "daemon.shutdown_timeout changed" not in d.stderr() and "daemon.stage_timeout changed" not in d.stderr()
    finally:
        assert d.stop() == 0, d.stderr()


CODEC_RELOAD = """
version: 1
daemon: {{workers: {workers}, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: {{name: csv, delimiter: "{delim}", header: [a, b]}}, config: {{path: in.csv, follow: true, poll_interval: 20ms, checkpoint_interval: 20ms}}}}}}
pipelines: {{main: [{{op: python, fn: "tagstage:tag"}}]}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  bad: {{type: file, codec: json, with_meta: true, config: {{path: err.ndjson}}}}
links: {{src: [main], src/err: [bad], main: [out]}}
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_a_reload_that_changes_a_codecs_options_decodes_with_the_new_ones(tmp_path: Path, write: Any, workers: int) -> None:
    """The codec's options are part of its identity: after the reload the new delimiter is used, on
    the loop and on the workers (whose unchanged pipeline gets the new codec too)."""
    write("tagstage.py", "def tag(event, meta):\n    event['t'] = 1\n    return event\n")
    write("in.csv", "1;2\n")
    port = free_port()
    cfg = write("c.yaml", CODEC_RELOAD.format(workers=workers, port=port, delim=";"))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(json_lines(tmp_path / "out.ndjson")) == 1, timeout=30)
        # the changed onramp starts again from its checkpoint: once it is saved, no line is read twice
        d.wait_for(lambda: '"offset": 4' in _text(tmp_path / "headrace-state" / "file-onramp" / "src.json"), timeout=30)
        cfg.write_text(CODEC_RELOAD.format(workers=workers, port=port, delim="|"))
        d.signal(signal.SIGHUP)
        d.wait_for(lambda: "reloaded in" in d.stderr(), timeout=30)
        with open(tmp_path / "in.csv", "a") as f:
            f.write("3|4\n")
        d.wait_for(lambda: len(json_lines(tmp_path / "out.ndjson")) + len(json_lines(tmp_path / "err.ndjson")) >= 2, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    assert json_lines(tmp_path / "err.ndjson") == [], "nothing decoded with the old options"
    assert json_lines(tmp_path / "out.ndjson") == [{"a": "1", "b": "2", "t": 1}, {"a": "3", "b": "4", "t": 1}]


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


FOLLOW_RELOAD = """
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson, follow: true, poll_interval: {poll}, checkpoint_interval: 1h}}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
"""


def test_a_reload_that_changes_a_followed_file_onramp_reads_no_line_twice(tmp_path: Path, write: Any) -> None:
    """The new onramp reads the checkpoints after the one it replaces saved them at its stop (not
    when it was built, before that save): no line delivered before the reload comes again."""
    write("in.ndjson", "".join(f'{{"id": {i}}}\n' for i in range(1000)))
    port = free_port()
    cfg = write("c.yaml", FOLLOW_RELOAD.format(port=port, poll="20ms"))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(ids(tmp_path / "out.ndjson")) == 1000, timeout=30)
        cfg.write_text(FOLLOW_RELOAD.format(port=port, poll="30ms"))  # the onramp changed: a new one replaces it
        d.signal(signal.SIGHUP)
        d.wait_for(lambda: "reloaded in" in d.stderr(), timeout=30)
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write("".join(f'{{"id": {i}}}\n' for i in range(1000, 2000)))
        d.wait_for(lambda: len(ids(tmp_path / "out.ndjson")) >= 2000, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    assert ids(tmp_path / "out.ndjson") == list(range(2000)), "every line once, in order"
