"""Large buffers freed and made again (worker jobs, answers, fetches) must not cost a page fault per
4 KiB each time: glibc's malloc keeps them when told (headrace/runtime/heap.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from headrace.runtime.heap import keep_freed_buffers
from tests.support.daemon import Daemon, lines_written

JOBS = '''
import io, random, resource, sys
from headrace.runtime.heap import keep_freed_buffers
if sys.argv[1] == "keep":
    assert keep_freed_buffers()
rng = random.Random(1)
parts = [b"x" * 640] * 4000
def job():  # a message read in pieces, joined, answered: buffers of 1-3 MiB, sizes that vary
    buf = io.BytesIO()
    blob = b"".join(parts[: rng.randint(1500, 4000)])
    for k in range(0, len(blob), 262144):
        buf.write(blob[k : k + 262144])
    msg = buf.getvalue()
    return len(b"".join(parts[: len(msg) // 1280]) + msg[:100])
for _ in range(20):
    job()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    job()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", JOBS, mode], capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout)


def test_freed_buffers_are_kept_for_the_next_ones() -> None:
    kept, default = _faults("keep"), _faults("default")
    assert kept < 1000, kept  # each buffer made again in memory the process already has
    assert default > 50 * max(kept, 100), default  # glibc's default: mapped and zeroed again each time


def test_the_operators_own_malloc_settings_are_left_alone() -> None:
    assert keep_freed_buffers({"MALLOC_TRIM_THRESHOLD_": "131072"}) is False
    assert keep_freed_buffers({"MALLOC_MMAP_THRESHOLD_": "131072"}) is False


def _minflt(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


@pytest.mark.parametrize("limit", ["", "worker_max_rss: 4GiB", "memory: {high: 95%, max: 99%}"])
def test_a_worker_moving_many_jobs_takes_few_page_faults(tmp_path: Path, limit: str) -> None:
    """200k records of 640 bytes through a worker: jobs of a few MiB, each read, split and answered.
    Under a memory limit the worker hands freed memory back as glibc does by itself: what it kept
    would count in its resident size (recycled after each job over ``worker_max_rss``; a
    ``daemon.memory`` budget that the queues' draining never meets again). Through the socket: a
    worker reading its jobs from the daemon's memory allocates less per job (724 faults against
    1.4k here), too close to tell the two heaps apart reliably."""
    (tmp_path / "in.ndjson").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 1, metrics: {{listen: null}}, job_transport: socket{", " + limit if limit else ""}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:touch"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{src: [main], main: [out]}}
""")
    (tmp_path / "stages.py").write_text("def touch(event, meta):\n    return event if event.get('id', 0) >= 0 else None\n")
    n = 200_000
    d = Daemon(cfg)
    try:
        worker = d.wait_for(d.worker, timeout=30)
        time.sleep(0.5)  # set up: what it maps while importing is not the point
        before = _minflt(worker)
        pad = "x" * 600
        with (tmp_path / "in.ndjson").open("a") as f:
            f.write("".join(f'{{"id":{i},"pad":"{pad}"}}\n' for i in range(n)))
        d.wait_for(lambda: lines_written(tmp_path / "out.ndjson") >= n, timeout=120, interval=0.1)
        faults = _minflt(worker) - before
        if limit:
            assert faults > 3_500, faults  # glibc's own way (5.6-8.8k here; 12-21k when a job was read through a BytesIO)
        else:
            assert faults < 3_500, faults  # the heap grows to its peak once (about 2k faults here)
    finally:
        d.stop()
