"""Signals at bad times: while the daemon still loads its config and starts its workers."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon

# The stage module announces that it is being imported, then takes a while: the daemon
# imports it while loading the config, before the event loop runs.
SLOW_IMPORT = '''
import pathlib, time
pathlib.Path("importing").write_text("1")
time.sleep(1.5)

def work(event, meta):
    return event
'''

CONFIG = """
version: 1
daemon: {workers: 1, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.ndjson, follow: true}}}
pipelines: {main: [{op: python, fn: "slow:work"}]}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [main], main: [out]}
"""


def _start(write: Any, tmp_path: Path) -> Daemon:
    write("slow.py", SLOW_IMPORT)
    write("in.ndjson", '{"id": 1}\n{"id": 2}\n')
    d = Daemon(write("c.yaml", CONFIG))
    deadline = time.monotonic() + 30
    while not (tmp_path / "importing").exists():
        assert d.proc.poll() is None and time.monotonic() < deadline, d.stderr()
        time.sleep(0.01)
    return d


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_while_starting_drains_and_exits_0(tmp_path: Path, write: Any, sig: int) -> None:
    d = _start(write, tmp_path)
    d.signal(sig)
    assert d.wait(30) == 0, d.stderr()
    assert "draining" in d.stderr() and "stopped: everything in flight was delivered" in d.stderr(), d.stderr()
    assert d.children() == []


def test_sighup_while_starting_reloads_instead_of_killing(tmp_path: Path, write: Any) -> None:
    d = _start(write, tmp_path)
    d.signal(signal.SIGHUP)
    try:
        d.wait_for(lambda: "reloaded in" in d.stderr(), timeout=30)
        d.wait_for(lambda: (tmp_path / "out.ndjson").exists() and len((tmp_path / "out.ndjson").read_text().splitlines()) == 2, timeout=30)
    finally:
        d.signal(signal.SIGTERM)
    assert d.wait(30) == 0, d.stderr()
