"""Workers run below the daemon's scheduling priority (``daemon.worker_nice``, 5 unless set): the
daemon's process feeds every worker, and while it waits for a core they run out of jobs. A worker
started again after a crash gets the same priority."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support import seccomp
from tests.support.daemon import Daemon, lines_written


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


CONFIG = """
version: 1
daemon: {{workers: 1, metrics: {{listen: null}}{setting}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:touch"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [main], main: [out]}}
"""
STAGES = "def touch(event, meta):\n    event['seen'] = True\n    return event\n"


@pytest.mark.parametrize(("setting", "below"), [("", 5), (", worker_nice: 11", 11), (", worker_nice: 0", 0)])
def test_workers_run_below_the_daemons_priority(tmp_path: Path, setting: str, below: int) -> None:
    (tmp_path / "in.ndjson").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(setting=setting))
    (tmp_path / "stages.py").write_text(STAGES)
    d = Daemon(cfg)
    try:
        for round_ in range(2):  # the worker, then the one started after it was killed
            with (tmp_path / "in.ndjson").open("a") as f:
                f.write(f'{{"id":{round_}}}\n')
            d.wait_for(lambda r=round_: lines_written(tmp_path / "out.ndjson") >= r + 1, timeout=30)  # it ran a job: set up
            pid = d.wait_for(d.worker, timeout=10)
            assert _nice(pid) == min(_nice(d.pid) + below, 19), f"worker {round_}"
            assert _nice(d.pid) == os.getpriority(os.PRIO_PROCESS, 0), "the daemon keeps the priority it was started with"
            if round_ == 0:
                os.kill(pid, signal.SIGKILL)
                d.wait_for(lambda old=pid: (w := d.worker()) is not None and w != old, timeout=30)
    finally:
        assert d.stop() == 0


def test_a_worker_that_may_not_lower_its_priority_runs_at_the_daemons(tmp_path: Path) -> None:
    """A system call filter that refuses setpriority (an older copy of the unit, a container's
    profile): the worker says so and works; it does not die at start, over and over."""
    if not seccomp.available():
        pytest.skip("libseccomp is not installed")
    (tmp_path / "in.ndjson").write_text('{"id":0}\n{"id":1}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(setting=""))
    (tmp_path / "stages.py").write_text(STAGES)
    d = Daemon(cfg, preexec=seccomp.refusing("setpriority"))  # the systemd unit's @resources filter without setpriority given back
    try:
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= 2, timeout=30)
    finally:
        code = d.stop()
    err = d.stderr_path.read_text()
    assert code == 0, err
    assert "cannot lower its priority (daemon.worker_nice: 5)" in err
    assert "respawning" not in err and "Traceback" not in err, err
