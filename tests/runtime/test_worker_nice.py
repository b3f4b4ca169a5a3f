"""Workers run below the daemon's scheduling priority (``daemon.worker_nice``, 5 unless set): the
daemon's process feeds every worker, and while it waits for a core they run out of jobs. A worker
started again after a crash gets the same priority."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, lines_written


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


@pytest.mark.parametrize(("setting", "below"), [("", 5), (", worker_nice: 11", 11), (", worker_nice: 0", 0)])
def test_workers_run_below_the_daemons_priority(tmp_path: Path, setting: str, below: int) -> None:
    (tmp_path / "in.ndjson").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 1, metrics: {{listen: null}}{setting}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:touch"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [main], main: [out]}}
""")
    (tmp_path / "stages.py").write_text("def touch(event, meta):\n    event['seen'] = True\n    return event\n")
    d = Daemon(cfg)
    try:

        def worker() -> int | None:  # the fork server's child
            return next((p for p in d.children() if _parent(p) not in (d.pid, None)), None)

        for round_ in range(2):  # the worker, then the one started after it was killed
            with (tmp_path / "in.ndjson").open("a") as f:
                f.write(f'{{"id":{round_}}}\n')
            d.wait_for(lambda r=round_: lines_written(tmp_path / "out.ndjson") >= r + 1, timeout=30)  # it ran a job: set up
            pid = d.wait_for(worker, timeout=10)
            assert _nice(pid) == min(_nice(d.pid) + below, 19), f"worker {round_}"
            assert _nice(d.pid) == os.getpriority(os.PRIO_PROCESS, 0), "the daemon keeps the priority it was started with"
            if round_ == 0:
                os.kill(pid, signal.SIGKILL)
                d.wait_for(lambda old=pid: (w := worker()) is not None and w != old, timeout=30)
    finally:
        assert d.stop() == 0
