"""Bounded failure per offramp (issue 16, item 3): ``retry: {max_attempts, max_elapsed}`` sends the
records of a write that keeps failing to the offramp's ``err`` port, with the attempts and the
last error in ``meta.error``, and the source moves on; without it, today's retry-forever."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port


def _run(tmp_path: Path, write: Any, retry: str, n: int = 20) -> tuple[int | None, list[dict[str, Any]], str]:
    dead_port = free_port()  # nothing listens there: every connection is refused
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
offramps:
  out: {{type: tcp, retry: {retry}, config: {{port: {dead_port}}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [out], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    try:
        code = d.wait(60)
    finally:
        d.stop()
    path = tmp_path / "dlq.ndjson"
    dead = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return code, dead, d.stderr()


@pytest.mark.parametrize(("retry", "says"), [("{max_attempts: 3}", "after 3 attempts (retry.max_attempts)"),
                                             ("{max_elapsed: 1s}", "(retry.max_elapsed 1s)")])  # fmt: skip
def test_a_write_that_keeps_failing_goes_to_err_within_the_bound(tmp_path: Path, write: Any, retry: str, says: str) -> None:
    code, dead, err = _run(tmp_path, write, retry)
    assert code == 0, err
    assert sorted(d["event"]["id"] for d in dead) == list(range(20)), err  # every record, once
    for d in dead:
        e = d["meta"]["error"]
        assert e["stage"] == "out" and e["type"] == "GaveUp" and says in e["message"], e
        assert e["attempts"] >= (3 if "attempts" in retry else 2) and "refused" in e["last_error"].lower(), e
    assert "to err" in err


def test_max_backoff_caps_the_wait_between_attempts(tmp_path: Path, write: Any) -> None:
    """9 attempts wait 0.1 + 0.2 + ... + 12.8 s (about 25 s) with the default cap of 30 s; capped at
    100 ms they take about a second."""
    started = time.monotonic()
    code, dead, err = _run(tmp_path, write, "{max_attempts: 9, max_backoff: 100ms}")
    assert code == 0, err
    assert sorted(d["event"]["id"] for d in dead) == list(range(20)), err
    assert all(d["meta"]["error"]["attempts"] == 9 for d in dead)
    assert time.monotonic() - started < 10, "the waits were capped at max_backoff"


def test_a_bad_retry_bound_is_a_config_error(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: stdin}}
offramps: {out: {type: stdout, retry: {max_attempts: 0}}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78 and "max_attempts" in res.stderr.decode() and "c.yaml:4" in res.stderr.decode()


def test_the_offramp_state_shows_retrying_and_its_backoff_until_the_peer_is_back(tmp_path: Path, write: Any) -> None:
    """Without bounds the records wait (today's behaviour); ``headrace_offramp_state`` says
    ``retrying`` with the current backoff while they do, ``/ready`` answers 503 once it has failed
    for ``daemon.unready_after``, and all is ``ok`` (and ready) once the peer took them."""
    from tests.reliability.harness import LineSink, http_status
    from tests.support.daemon import metric

    sink_port, mport = free_port(), free_port()
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(10)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, unready_after: 500ms, metrics: {{listen: "127.0.0.1:{mport}"}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}}}
offramps: {{out: {{type: tcp, config: {{port: {sink_port}}}}}}}
links: {{src: [out]}}
""")
    retrying = 'headrace_offramp_state{offramp="out",state="retrying"}'
    ok = 'headrace_offramp_state{offramp="out",state="ok"}'
    backoff = 'headrace_offramp_backoff_seconds{offramp="out"}'
    sink = LineSink(sink_port)
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: metric(mport, retrying) == 1 and metric(mport, ok, 1) == 0 and metric(mport, backoff) > 0, timeout=30)
        d.wait_for(lambda: http_status(mport, "/ready") == 503, timeout=30)  # failing for longer than unready_after
        sink.start()
        d.wait_for(lambda: len(bytes(sink.data).splitlines()) >= 10, timeout=60)
        d.wait_for(lambda: http_status(mport, "/ready") == 200 and metric(mport, ok) == 1 and metric(mport, backoff, 1) == 0, timeout=30)
        assert sorted(json.loads(x)["id"] for x in bytes(sink.data).decode().splitlines()) == list(range(10))
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.stderr()
    finally:
        d.stop()
        sink.stop()


def test_the_state_is_ok_again_once_no_write_fails() -> None:
    from headrace.config.model import RetryConfig
    from headrace.metrics.defs import Metrics
    from headrace.runtime.retry import RetryState

    metrics = Metrics()
    state = RetryState("out", RetryConfig(max_attempts=4), metrics)

    def value(name: str, *labels: str) -> float:
        return float(metrics[name].labels(*labels)._value.get())

    state.waiting(0.1, first=True)
    state.waiting(0.2, first=True)  # a second write fails too (max_in_flight > 1)
    state.waiting(0.4, first=False)
    assert value("headrace_offramp_state", "out", "retrying") == 1 and value("headrace_offramp_backoff_seconds", "out") == 0.4
    state.settled()
    assert value("headrace_offramp_state", "out", "retrying") == 1  # the other still fails
    state.settled()
    assert value("headrace_offramp_state", "out", "ok") == 1 and value("headrace_offramp_backoff_seconds", "out") == 0
    assert state.give_up(3, 100.0) is None and state.give_up(4, 0.0) == "after 4 attempts (retry.max_attempts)"
