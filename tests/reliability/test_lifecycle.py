"""Rows 23-30: the daemon never lies about its state (issue 12, classes 4, 8, 9, 11, 14).

A component that cannot start fails the start with exit 1 and one line naming it; a reload
that hits the same keeps the running graph and answers failed; a component that dies at run
time is restarted or fails the daemon with exit 1; signals work while starting; a reload
during a drain is refused; a hung ``async def`` stage times out; a config that crashes the
loader is a config error.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.checker import EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import Lines, dead_letters, scrape_or_empty, wait_until, write_config
from tests.support.daemon import Daemon, alive, free_port, headrace
from tests.support.plugins import install

SUCCESS = "stopped: everything in flight was delivered"


@contextmanager
def occupied() -> Iterator[int]:
    """A TCP port this test holds (listening), so the daemon cannot bind it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _errors(d: Daemon) -> list[str]:
    return [ln for ln in d.stderr().splitlines() if "ERROR" in ln]


def _reload(port: int) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/reload", method="POST", data=b"{}",
                                 headers={"Content-Type": "application/json", "X-Headrace": "1"})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=90) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())  # type: ignore[no-any-return]


def _send_tcp(port: int, lines: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"".join(ln + b"\n" for ln in lines))


# -- row 23: a component that cannot start -------------------------------------------------------


def _start_case(case: str, tmp_path: Path, busy: int) -> str:
    out = "offramps: {out: {type: file, config: {path: out.ndjson}}}"
    if case == "tcp onramp port in use":
        return f"onramps: {{src: {{type: tcp, config: {{port: {busy}}}}}}}\n{out}\nlinks: {{src: [out]}}"
    if case == "http onramp port in use":
        return f"onramps: {{src: {{type: http, config: {{port: {busy}}}}}}}\n{out}\nlinks: {{src: [out]}}"
    if case == "udp onramp port in use":
        return f"onramps: {{src: {{type: udp, config: {{port: {busy}}}}}}}\n{out}\nlinks: {{src: [out]}}"
    if case == "missing input file":
        return f"onramps: {{src: {{type: file, config: {{path: nowhere.ndjson}}}}}}\n{out}\nlinks: {{src: [out]}}"
    if case == "kafka broker unreachable":
        (tmp_path / "in.ndjson").write_text('{"id": 1}\n')
        return (f"onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}\n"
                f"offramps: {{out: {{type: kafka, config: {{brokers: ['127.0.0.1:{free_port()}'], topic: t}}}}}}\nlinks: {{src: [out]}}")  # fmt: skip
    if case == "stage setup fails":
        (tmp_path / "in.ndjson").write_text('{"id": 1}\n')
        (tmp_path / "broken.py").write_text("class Stage:\n    def setup(self):\n        raise ConnectionError('db down')\n"
                                            "    def process(self, event, meta):\n        return event\n")  # fmt: skip
        return (f"onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}\n"
                f"pipelines: {{main: [{{op: python, fn: 'broken:Stage'}}]}}\n{out}\nlinks: {{src: [main], main: [out]}}")  # fmt: skip
    raise AssertionError(case)


CAUSES = {
    "tcp onramp port in use": ("onramp src", "address already in use"),
    "http onramp port in use": ("onramp src", "address already in use"),
    "udp onramp port in use": ("onramp src", "address already in use"),
    "missing input file": ("onramp src", "No such file or directory"),
    "kafka broker unreachable": ("offramp out", "did not start within start_timeout (1s)"),
    "stage setup fails": ("worker segments main", "db down"),
}


@pytest.mark.parametrize("case", list(CAUSES))
def test_row23_a_component_that_cannot_start_fails_the_start_naming_it(tmp_path: Path, case: str, figures: Figures) -> None:
    with occupied() as busy:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", busy))  # the same number for UDP, so that the udp case meets a port in use too
        try:
            bound = ", start_timeout: 1s" if case == "kafka broker unreachable" else ""  # the others fail at once
            cfg = write_config(tmp_path, _start_case(case, tmp_path, busy), port=free_port(), workers=1, daemon_extra=bound)
            t0 = time.monotonic()
            d = Daemon(cfg)
            code = d.wait(60)
            took = time.monotonic() - t0
        finally:
            udp.close()
    component, cause = CAUSES[case]
    assert code == 1, d.stderr()
    failures = [ln for ln in _errors(d) if "cannot start:" in ln]
    assert len(failures) == 1, d.stderr()
    assert f"cannot start: {component}" in failures[0] and cause.lower() in failures[0].lower(), failures
    assert SUCCESS not in d.stderr()
    assert d.children() == []
    figures(row=23, case=case, exit_code=code, seconds=round(took, 1))


def test_row23_unknown_kafka_client_option_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: 1\nonramps: {src: {type: kafka, config: {brokers: [127.0.0.1:1], topics: [t], group_id: g,\n"
                   "  client: {max_pol_records: 5, enable_auto_commit: true}}}}\n"
                   "offramps: {out: {type: stdout}}\nlinks: {src: [out]}\n")  # fmt: skip
    res = headrace("check", str(cfg))
    assert res.returncode == 78, res.stderr
    err = res.stderr.decode()
    assert "'max_pol_records' is not an option of AIOKafkaConsumer" in err and "max_poll_records" in err, err
    assert "'enable_auto_commit' is set by headrace" in err, err


# -- row 24: a reload whose components cannot start ----------------------------------------------

RELOAD_BASE = """
onramps:
  src: {{type: file, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}
  {extra}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{src: [out]{links}}}
"""


def test_row24_a_reload_that_cannot_start_keeps_the_running_graph(tmp_path: Path, figures: Figures) -> None:
    admin = free_port()
    own = free_port()
    (tmp_path / "in.ndjson").write_text("")
    base = RELOAD_BASE.format(extra=f"net: {{type: tcp, config: {{port: {own}}}}}", links=", net: [out]")
    cfg = write_config(tmp_path, base, port=admin, workers=0)
    d = Daemon(cfg)
    sent: list[int] = []

    def feed(ids: range) -> None:
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write("".join(json.dumps({"id": i}) + "\n" for i in ids))
        sent.extend(ids)

    try:
        wait_until(lambda: "running c.yaml" in d.stderr(), 30, "the daemon to run", daemon=d)
        feed(range(0, 100))
        _send_tcp(own, [json.dumps({"id": i}).encode() for i in range(1000, 1010)])
        sent.extend(range(1000, 1010))
        wait_until(lambda: len(Lines(tmp_path / "out.ndjson").ids) == 110, 20, "110 records", daemon=d)
        with occupied() as busy:
            # an added onramp on a port in use: nothing running changes
            cfg.write_text(cfg.read_text().replace("\n  net:", f"\n  web: {{type: tcp, config: {{port: {busy}}}}}\n  net:")
                           .replace("net: [out]", "net: [out], web: [out]"))  # fmt: skip
            added = _reload(admin)
            assert added["ok"] is False and "onramp web" in added["errors"][0] and "in use" in added["errors"][0], added
            feed(range(100, 200))
            _send_tcp(own, [json.dumps({"id": i}).encode() for i in range(1010, 1020)])
            sent.extend(range(1010, 1020))
            wait_until(lambda: len(Lines(tmp_path / "out.ndjson").ids) == 220, 20, "220 records after the failed reload", daemon=d)
            # a changed onramp moved to a port in use: its predecessor stops first, so the old graph is put back
            moved = RELOAD_BASE.format(extra=f"net: {{type: tcp, config: {{port: {busy}}}}}", links=", net: [out]")
            write_config(tmp_path, moved, port=admin, workers=0)
            changed = _reload(admin)
            assert changed["ok"] is False and "onramp net" in changed["errors"][0], changed
        feed(range(200, 300))
        _send_tcp(own, [json.dumps({"id": i}).encode() for i in range(1020, 1030)])  # the old port serves again
        sent.extend(range(1020, 1030))
        wait_until(lambda: len(Lines(tmp_path / "out.ndjson").ids) == 330, 20, "330 records after the rollback", daemon=d)
        assert "putting the previous config back" in d.stderr()
    finally:
        code = d.stop()
    assert code == 0, d.stderr()
    report = conserve(sent, Lines(tmp_path / "out.ndjson").ids, guarantee=EXACTLY_ONCE)
    assert report.ok, report.summary()
    figures(row=24, reloads=2, answered_failed=2, lost=len(report.lost), duplicates=report.duplicates, exit_code=code)


# -- row 25: a component that dies at run time ---------------------------------------------------

FLAKY = '''
import asyncio, os
from headrace.contract.config import PluginConfig
from headrace.contract.source import Onramp

class Config(PluginConfig):
    records: int = 20
    fail_restart: bool = False

class Flaky(Onramp):
    """Sends its records, then fails; started again it sends the next ones (or cannot start)."""
    name = "flaky"
    Config = Config

    def __init__(self, config, context):
        super().__init__(config, context)
        self.round = 0

    async def start(self):
        if self.round and self.config.fail_restart:
            raise ConnectionError("the source is gone for good")
        self.ready = True

    async def run(self, sink):
        base = self.round * 1000
        self.round += 1
        await sink.records([b'{"id": %d}' % (base + i) for i in range(self.config.records)])
        if self.round == 1:
            raise OSError("connection reset by the source")
        await asyncio.Event().wait()
'''


@pytest.mark.parametrize("restartable", [True, False], ids=["restarted", "cannot-restart"])
def test_row25_a_source_that_dies_is_restarted_or_fails_the_daemon(tmp_path: Path, restartable: bool, figures: Figures) -> None:
    env = install(tmp_path / "plugins", "flaky_plugin", {"flaky_source": FLAKY}, {"headrace.onramps": {"flaky": "flaky_source:Flaky"}})
    cfg = write_config(tmp_path, f"""
onramps: {{src: {{type: flaky, config: {{fail_restart: {str(not restartable).lower()}}}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
""", port=None, workers=0, daemon_extra="" if restartable else ", start_timeout: 1s")  # fmt: skip
    d = Daemon(cfg, env=env)
    t0 = time.monotonic()
    if restartable:
        wait_until(lambda: len(Lines(tmp_path / "out.ndjson").ids) == 40, 20, "both rounds delivered", daemon=d)
        assert "onramp src failed: OSError: connection reset by the source; restarting it" in d.stderr()
        code = d.stop()
        assert code == 0 and SUCCESS in d.stderr(), d.stderr()
    else:
        code = d.wait(30)
        assert code == 1, d.stderr()
        assert "component src failed" in d.stderr() and "the source is gone for good" in d.stderr(), d.stderr()
        assert SUCCESS not in d.stderr()
    ids = Lines(tmp_path / "out.ndjson").ids
    assert sorted(ids) == sorted([*range(20), *([*range(1000, 1020)] if restartable else [])]), ids
    figures(row=25, case="restarted" if restartable else "cannot restart", exit_code=code, delivered=len(ids),
            seconds=round(time.monotonic() - t0, 1))  # fmt: skip


# -- row 26: whatever a codec, preprocessor or postprocessor raises concerns one record ----------

BRITTLE = '''
import orjson
from headrace.contract.codec import Codec
from headrace.contract.framing import Postprocessor, Preprocessor

class Brittle(Codec):
    """JSON, except that it raises a KeyError on records holding "boom" and cannot encode "bang"."""
    name = "brittle"

    def decode(self, data):
        if b"boom" in bytes(data):
            raise KeyError("boom")
        return orjson.loads(data)

    def encode(self, value):
        if "bang" in str(value):
            raise LookupError("bang")
        return orjson.dumps(value)

class Shaky(Preprocessor):
    """Lines, except that a chunk holding "crash" makes it raise."""
    name = "shaky"

    def __init__(self, config=None):
        super().__init__(config)
        self.buf = b""

    def feed(self, chunk, out, rejected):
        if b"crash" in chunk:
            raise RuntimeError("shaky preprocessor crashed")
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\\n")
        out.extend(ln for ln in lines if ln)

    def finish(self, out, rejected):
        if self.buf:
            out.append(self.buf)
        self.buf = b""

class Picky(Postprocessor):
    """Lines, except that a record holding "zap" makes it raise."""
    name = "picky"

    def process(self, records):
        if any(b"zap" in r for r in records):
            raise ValueError("picky postprocessor refuses zap")
        return [r + b"\\n" for r in records]
'''


def _id_of(event: Any) -> Any:
    """The id of a dead-lettered event: a value, its JSON text, or the text of a value no codec could write."""
    if isinstance(event, dict):
        return event["id"]
    text = event.split('"id": ', 1)[1] if '"id": ' in event else event.split("'id': ", 1)[1]
    return int(text.split(",")[0].split("}")[0])


@pytest.mark.parametrize("path", ["loop", "workers", "direct"])
def test_row26_a_codec_or_processor_that_raises_sends_one_record_to_err(tmp_path: Path, path: str, figures: Figures) -> None:
    env = install(tmp_path / "plugins", "brittle_plugins", {"brittle": BRITTLE}, {
        "headrace.codecs": {"brittle": "brittle:Brittle"}, "headrace.preprocessors": {"shaky": "brittle:Shaky"},
        "headrace.postprocessors": {"picky": "brittle:Picky"}})  # fmt: skip
    (tmp_path / "stage.py").write_text("def touch(event, meta):\n    event['seen'] = 1\n    return event\n")
    good = [{"id": i} for i in range(200)]
    bad = [{"id": 1000, "x": "boom"}, {"id": 1001, "x": "bang"}, {"id": 1002, "x": "zap"}]
    lines = [json.dumps(e) for e in good[:100]] + [json.dumps(e) for e in bad] + [json.dumps(e) for e in good[100:]]
    (tmp_path / "in.ndjson").write_text("\n".join(lines) + "\n")
    stage = {"loop": "{op: python, fn: 'stage:touch', placement: loop}", "workers": "{op: python, fn: 'stage:touch'}"}.get(path)
    pipeline = f"pipelines: {{main: [{stage}]}}\n" if stage else ""
    into = "main" if stage else "out"
    errs = ", main/err: [dlq]" if stage else ""
    cfg = write_config(tmp_path, f"""
onramps: {{src: {{type: file, codec: brittle, config: {{path: in.ndjson}}}}}}
{pipeline}offramps:
  out: {{type: file, codec: brittle, postprocessors: [picky], config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [{into}], src/err: [dlq]{errs}{", main: [out]" if stage else ""}, out/err: [dlq]}}
""", port=None, workers=1 if path == "workers" else 0)  # fmt: skip
    d = Daemon(cfg, env=env)
    code = d.wait(60)
    assert code == 0 and SUCCESS in d.stderr(), d.stderr()
    dead = dead_letters(tmp_path / "dlq.ndjson")
    reasons = {_id_of(e["event"]): f"{e['meta']['error']['type']}: {e['meta']['error']['message']}" for e in dead}
    # "bang" fails only when encoded: a record that reaches the offramp unmodified leaves as its bytes
    expect = {1000, 1002} if path == "direct" else {1000, 1001, 1002}
    assert set(reasons) == expect, dead
    assert "KeyError" in reasons[1000] and "picky postprocessor refuses zap" in reasons[1002], reasons
    assert path == "direct" or "LookupError" in reasons[1001], reasons
    report = conserve([e["id"] for e in good + bad], Lines(tmp_path / "out.ndjson").ids, list(reasons), guarantee=EXACTLY_ONCE,
                      expect_dead=expect)  # fmt: skip
    assert report.ok, report.summary()
    figures(row=26, path=path, delivered=report.found["out"], dead_lettered=report.dead, lost=len(report.lost), exit_code=code)


def test_row26_a_preprocessor_that_raises_rejects_its_chunk_and_starts_afresh(tmp_path: Path) -> None:
    env = install(tmp_path / "plugins", "brittle_plugins", {"brittle": BRITTLE}, {"headrace.preprocessors": {"shaky": "brittle:Shaky"}})
    port = free_port()
    cfg = write_config(tmp_path, f"""
onramps: {{src: {{type: tcp, preprocessors: [shaky], config: {{port: {port}}}}}}}
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [out], src/err: [dlq]}}
""", port=None, workers=0)  # fmt: skip
    d = Daemon(cfg, env=env)
    try:
        wait_until(lambda: "running c.yaml" in d.stderr(), 30, "the daemon to run", daemon=d)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b'{"id": 1}\n{"id": 2}\n')
            wait_until(lambda: len(Lines(tmp_path / "out.ndjson").ids) == 2, 10, "2 records", daemon=d)
            s.sendall(b'{"crash": 1}\n')
            wait_until(lambda: dead_letters(tmp_path / "dlq.ndjson"), 10, "the rejected chunk", daemon=d)
            s.sendall(b'{"id": 3}\n')
            wait_until(lambda: len(Lines(tmp_path / "out.ndjson").ids) == 3, 10, "the record after the crash", daemon=d)
    finally:
        assert d.stop() == 0, d.stderr()
    [entry] = dead_letters(tmp_path / "dlq.ndjson")
    assert "shaky preprocessor crashed" in entry["meta"]["error"]["message"], entry


# -- row 27: SIGHUP during a drain ---------------------------------------------------------------


def test_row27_a_reload_during_a_drain_is_refused(tmp_path: Path, figures: Figures) -> None:
    # one event at a time, 50 ms each, in batches of 10: the drain of 100 events takes seconds
    (tmp_path / "slow.py").write_text("import asyncio\n\nasync def work(event, meta):\n    await asyncio.sleep(0.05)\n    return event\n")
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(100)))
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson, follow: true}}}
pipelines: {main: [{op: python, fn: "slow:work", concurrency: 1}]}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
""", port=None, workers=0, daemon_extra=", batch_size: 10")  # fmt: skip
    d = Daemon(cfg)
    wait_until(lambda: len(Lines(tmp_path / "out.ndjson").ids) > 0, 30, "the first records", daemon=d)
    extra = free_port()
    cfg.write_text(cfg.read_text().replace("onramps: {src:", f"onramps: {{web: {{type: tcp, config: {{port: {extra}}}}}, src:")
                   .replace("links: {src: [main]", "links: {web: [main], src: [main]"))  # fmt: skip
    d.signal(signal.SIGTERM)
    wait_until(lambda: "draining" in d.stderr(), 10, "the drain to begin", daemon=d)
    d.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused: the daemon is draining" in d.stderr(), 10, "the refusal")
    with socket.socket() as probe:
        refused = probe.connect_ex(("127.0.0.1", extra)) != 0
    code = d.wait(60)
    assert code == 0 and SUCCESS in d.stderr(), d.stderr()
    assert refused, "the new config's onramp was started during the drain"
    assert "reloaded in" not in d.stderr()
    delivered = Lines(tmp_path / "out.ndjson").ids
    assert sorted(delivered) == list(range(100)), delivered
    figures(row=27, delivered=len(delivered), lost=100 - len(delivered), exit_code=code)


# -- row 28: signals while starting; a bounded wait for a dependency -----------------------------


def test_row28_sigterm_while_waiting_for_a_broker_stops_at_once(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "in.ndjson").write_text('{"id": 1}\n')
    cfg = write_config(tmp_path, f"""
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
offramps: {{out: {{type: kafka, config: {{brokers: ['127.0.0.1:{free_port()}'], topic: t}}}}}}
links: {{src: [out]}}
""", port=None, workers=0)  # fmt: skip
    d = Daemon(cfg)
    wait_until(lambda: "cannot connect" in d.stderr(), 30, "the offramp to wait for its broker", daemon=d)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.wait(10)
    took = time.monotonic() - t0
    assert code == 0, d.stderr()  # nothing was read yet: nothing is lost
    assert took < 3, took
    assert "stop requested while starting" in d.stderr()
    assert d.children() == []
    figures(row=28, case="SIGTERM while the broker is unreachable", exit_code=code, seconds_to_exit=round(took, 2))


def test_row28_a_dependency_is_awaited_for_start_timeout_and_said_so(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "in.ndjson").write_text('{"id": 1}\n')
    cfg = write_config(tmp_path, f"""
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
offramps: {{out: {{type: kafka, config: {{brokers: ['127.0.0.1:{free_port()}'], topic: t}}}}}}
links: {{src: [out]}}
""", port=None, workers=0, daemon_extra=", start_timeout: 6s")  # fmt: skip
    t0 = time.monotonic()
    d = Daemon(cfg)
    code = d.wait(60)
    took = time.monotonic() - t0
    assert code == 1, d.stderr()
    assert "waiting for offramp out to start" in d.stderr(), d.stderr()
    assert "cannot start: offramp out: did not start within start_timeout (6s)" in d.stderr(), d.stderr()
    assert 6 <= took < 20, took
    figures(row=28, case="broker unreachable, start_timeout 6s", exit_code=code, seconds_to_exit=round(took, 1))


# -- row 29: a hung await ------------------------------------------------------------------------

HANG = '''
import asyncio

async def lookup(event, meta):
    if event["id"] == 13:
        await asyncio.Event().wait()   # a request that never answers
    await asyncio.sleep(0.001)
    return event
'''


def test_row29_a_hung_async_stage_times_out_to_err(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "enrich.py").write_text(HANG)
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(100)))
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson}}}
pipelines: {main: [{op: python, fn: "enrich:lookup", timeout: 500ms}]}
offramps:
  out: {type: file, config: {path: out.ndjson}}
  dlq: {type: file, with_meta: true, config: {path: dlq.ndjson}}
links: {src: [main], main: [out], main/err: [dlq]}
""", port=None, workers=0)  # fmt: skip
    t0 = time.monotonic()
    d = Daemon(cfg)
    code = d.wait(30)
    assert code == 0, d.stderr()
    [dead] = dead_letters(tmp_path / "dlq.ndjson")
    assert dead["event"]["id"] == 13 and dead["meta"]["error"]["type"] == "TimeoutError", dead
    assert "within its timeout (0.5s)" in dead["meta"]["error"]["message"]
    report = conserve(range(100), Lines(tmp_path / "out.ndjson").ids, [13], guarantee=EXACTLY_ONCE, expect_dead={13})
    assert report.ok, report.summary()
    figures(row=29, delivered=report.found["out"], dead_lettered=1, lost=len(report.lost), seconds=round(time.monotonic() - t0, 1))


# -- row 30: configs that crash the loader; a second SIGTERM -------------------------------------


def test_row30_a_config_nested_too_deep_is_a_config_error_for_check_and_reload(tmp_path: Path, figures: Figures) -> None:
    deep = "version: 1\nonramps: " + "[" * 5000 + "]" * 5000 + "\n"
    bad = tmp_path / "deep.yaml"
    bad.write_text(deep)
    res = headrace("check", str(bad))
    assert res.returncode == 78 and "nested too deeply" in res.stderr.decode() and "Traceback" not in res.stderr.decode(), res.stderr
    res = headrace("check", str(write_config(tmp_path, "onramps: {src: {type: stdin}}\nofframps: {o: {type: stdout}}\nlinks: {src: [o]}",
                                             port=None, workers=1000000, name="many.yaml")))  # fmt: skip
    assert res.returncode == 78 and "daemon.workers: expected auto or a number from 0 to 1024" in res.stderr.decode(), res.stderr
    (tmp_path / "in.ndjson").write_text("")
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson, follow: true, poll_interval: 50ms}}}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [out]}
""", port=None, workers=0)  # fmt: skip
    good = cfg.read_text()
    d = Daemon(cfg)
    try:
        wait_until(lambda: "running c.yaml" in d.stderr(), 30, "the daemon to run", daemon=d)
        cfg.write_text(deep)
        d.signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected" in d.stderr(), 20, "the reload to be rejected", daemon=d)
        with open(tmp_path / "in.ndjson", "a") as f:
            f.write('{"id": 1}\n')
        wait_until(lambda: Lines(tmp_path / "out.ndjson").ids == [1], 10, "a record after the rejected reload", daemon=d)
    finally:
        cfg.write_text(good)
        code = d.stop()
    assert code == 0, d.stderr()
    figures(row=30, case="config nested 5000 deep", check_exit=78, reload="rejected", daemon_exit=code)


def test_row30_a_second_sigterm_exits_at_once_even_with_a_busy_worker(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "busy.py").write_text("import time\n\ndef work(event, meta):\n    time.sleep(30)\n    return event\n")
    (tmp_path / "in.ndjson").write_text('{"id": 1}\n')
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson, follow: true}}}
pipelines: {main: [{op: python, fn: "busy:work"}]}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
""", port=free_port(), workers=1)  # fmt: skip
    port = int(cfg.read_text().split('listen: "127.0.0.1:')[1].split('"')[0])
    d = Daemon(cfg)
    wait_until(lambda: "running c.yaml" in d.stderr(), 30, "the daemon to run", daemon=d)
    kids = d.children()
    wait_until(lambda: scrape_or_empty(port).get('headrace_component_received_events_total{component_id="src",component_kind="onramp"}'),
               10, "the record to be read (it then sleeps 30 s in the worker)", daemon=d)  # fmt: skip
    d.signal(signal.SIGTERM)
    wait_until(lambda: "draining" in d.stderr(), 10, "the drain", daemon=d)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    code = d.wait(10)
    took = time.monotonic() - t0
    assert code == 1, d.stderr()
    assert took < 2.0, took
    wait_until(lambda: not any(alive(p) for p in kids), 3, "the workers to be gone")
    figures(row=30, case="second SIGTERM, worker busy for 30 s", exit_code=code, seconds_to_exit=round(took, 2))
