"""Row 23: the worker pool against what issue 12 found (items 10, 12, 13), through the real daemon.

- Orphans: the daemon SIGKILLed while every worker is stuck in a stage (a Python loop, a C
  call holding the GIL): fork server and workers must be gone within a second.
- Wedges: respawned workers whose ``setup()`` fails, and respawns with no file descriptor
  left (EMFILE): records wait (nothing dead-letters), ``/ready`` says 503, and everything is
  delivered once the cause is gone.
- Recycling: a worker that hit a ``MemoryError``, or grew past ``worker_max_rss``, is
  replaced after its job, blaming no record.
- Any value a stage raises or returns fails that record only.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.checker import EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import (
    Lines,
    cpu_seconds,
    dead_ids,
    dead_letters,
    http_status,
    rss_mb,
    scrape_or_empty,
    status,
    wait_until,
    write_config,
)
from tests.support.daemon import Daemon, alive, free_port

FOLLOWED = """
onramps: {{src: {{type: file, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}}}
pipelines: {{main: [{{op: python, fn: "{fn}"{extra}}}]}}
offramps:
  out: {{type: file, config: {{path: out.ndjson}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], src/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
"""


def append(path: Path, ids: range) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps({"id": i}) + "\n" for i in ids))


def delivered(tmp_path: Path) -> list[Any]:
    return Lines(tmp_path / "out.ndjson").ids


def dead(tmp_path: Path) -> list[dict[str, Any]]:
    return dead_letters(tmp_path / "dlq.ndjson")


# -- orphans (item 12) ---------------------------------------------------------------------------

STUCK = """
import collections, itertools

def python_loop(event, meta):
    while True:
        pass

def c_call(event, meta):
    collections.deque(itertools.count(), maxlen=0)  # one C call that never returns nor releases the GIL
"""


@pytest.mark.slow
@pytest.mark.parametrize("fn", ["python_loop", "c_call"])
def test_row38_workers_die_with_the_daemon_whatever_the_stage_does(tmp_path: Path, fn: str, figures: Figures) -> None:
    (tmp_path / "stuck.py").write_text(STUCK)
    append(tmp_path / "in.ndjson", range(2))  # one record per worker: both get stuck
    port = free_port()
    cfg = write_config(tmp_path, FOLLOWED.format(fn=f"stuck:{fn}", extra=""), port=port)
    d = Daemon(cfg)
    family: set[int] = set()
    try:
        workers = wait_until(lambda: len(status(port).get("worker_pids", [])) == 2 and status(port)["worker_pids"], 30, "two workers", daemon=d)
        family = {*d.children(), *workers}
        assert len(family) >= 3, "the fork server and two workers"
        wait_until(lambda: all(cpu_seconds(p) > 0.5 for p in workers), 30, "both workers spinning in the stage", daemon=d)
        os.kill(d.pid, signal.SIGKILL)
        t0 = time.monotonic()
        d.wait(10)
        wait_until(lambda: not any(alive(p) for p in family), 10, "every process of the daemon gone")
        gone_after = time.monotonic() - t0
    finally:
        for p in family:  # only if the test failed: what the daemon left behind, by PID
            if alive(p):
                os.kill(p, signal.SIGKILL)
    assert gone_after < 1.0, f"the last process of the daemon died {gone_after:.2f}s after it"
    figures(row=38, case=f"orphans, stage stuck in a {fn}", processes=len(family), gone_after_s=round(gone_after, 3))


# -- wedges (item 10) ----------------------------------------------------------------------------

NEEDS_RESOURCE = """
import os, pathlib

class Stage:
    def setup(self):
        if (pathlib.Path(__file__).parent / "resource-gone").exists():
            raise RuntimeError("the resource is gone")

    def process(self, event, meta):
        return event
"""


def _break(tmp_path: Path, port: int, d: Daemon, break_it: Any, n: int) -> None:
    """Deliver ``n`` records, break the pool (``break_it``, then both workers killed), append ``n`` more."""
    src = tmp_path / "in.ndjson"
    append(src, range(n))
    wait_until(lambda: len(delivered(tmp_path)) >= n, 30, "the first records", daemon=d)
    victims = status(port)["worker_pids"]
    break_it()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    append(src, range(n, 2 * n))


@pytest.mark.slow
def test_row38_respawned_workers_that_cannot_set_up_take_no_records(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "needs.py").write_text(NEEDS_RESOURCE)
    n = 200
    port = free_port()
    d = Daemon(write_config(tmp_path, FOLLOWED.format(fn="needs:Stage", extra=""), port=port))
    gone = tmp_path / "resource-gone"
    try:
        wait_until(lambda: http_status(port, "/ready") == 200, 30, "ready", daemon=d)
        _break(tmp_path, port, d, gone.touch, n)
        wait_until(lambda: http_status(port, "/ready") == 503, 10, "/ready to say the pool is broken", daemon=d)
        st = wait_until(lambda: (s := status(port)) and s["workers_down"] == [0, 1] and all(w["error"] for w in s["worker_states"].values()) and s,
                        10, "/status to name the broken workers", daemon=d)  # fmt: skip
        assert "the resource is gone" in st["worker_states"]["0"]["error"]
        assert st["worker_pids"] == [] or all(alive(p) for p in st["worker_pids"])
        wait_until(lambda: sum(v for k, v in scrape_or_empty(port).items() if k.startswith("headrace_worker_start_failures_total")) >= 4,
                   10, "setup retried", daemon=d)  # fmt: skip
        assert dead(tmp_path) == [], "records wait for a worker that can run them"
        assert len(delivered(tmp_path)) == n
        gone.unlink()
        t0 = time.monotonic()
        wait_until(lambda: http_status(port, "/ready") == 200, 15, "ready again", daemon=d)
        recovered = time.monotonic() - t0
        wait_until(lambda: len(delivered(tmp_path)) >= 2 * n, 30, "every record", daemon=d)
        st = status(port)
        assert st["workers_down"] == [] and not any(w["error"] for w in st["worker_states"].values()) and len(st["worker_pids"]) == 2
    finally:
        gone.unlink(missing_ok=True)  # a failed test still lets the drain deliver what waits
        assert d.stop() == 0, d.stderr()
    report = conserve(range(2 * n), delivered(tmp_path), dead_ids(dead(tmp_path)), guarantee=EXACTLY_ONCE, expect_dead=())
    assert report.ok, report.summary()
    assert delivered(tmp_path) == list(range(2 * n)), "order kept"
    figures(row=38, case="setup() fails in respawned workers", lost=len(report.lost), duplicates=report.duplicates, dead_lettered=0,
            ready_again_s=round(recovered, 2))  # fmt: skip


@pytest.mark.slow
def test_row38_respawn_without_file_descriptors_is_retried(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "needs.py").write_text(NEEDS_RESOURCE)
    n = 200
    port = free_port()
    d = Daemon(write_config(tmp_path, FOLLOWED.format(fn="needs:Stage", extra=""), port=port))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = resource.prlimit(d.pid, resource.RLIMIT_NOFILE)[0]

    def no_fds() -> None:  # below the lowest free descriptor: every new one fails with EMFILE (open ones keep working)
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (3, hard))

    try:
        wait_until(lambda: http_status(port, "/ready") == 200, 30, "ready", daemon=d)
        _break(tmp_path, port, d, no_fds, n)
        wait_until(lambda: d.stderr().count("Too many open files") >= 4, 15, "respawns failing with EMFILE, retried", daemon=d)
        assert len(delivered(tmp_path)) == n and dead(tmp_path) == []
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (soft, hard))
        t0 = time.monotonic()
        wait_until(lambda: len(delivered(tmp_path)) >= 2 * n, 30, "every record", daemon=d)
        recovered = time.monotonic() - t0
        st = wait_until(lambda: (s := status(port)) and s["workers_down"] == [] and s, 10, "both workers up", daemon=d)
        assert len(st["worker_pids"]) == 2 and all(alive(p) for p in st["worker_pids"]), st
        assert st["ready"] and [w["state"] for w in st["worker_states"].values()] == ["ready", "ready"]
    finally:
        try:
            resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (soft, hard))
        except ProcessLookupError:
            pass
        assert d.stop() == 0, d.stderr()
    report = conserve(range(2 * n), delivered(tmp_path), dead_ids(dead(tmp_path)), guarantee=EXACTLY_ONCE, expect_dead=())
    assert report.ok, report.summary()
    figures(row=38, case="EMFILE at respawn", lost=len(report.lost), duplicates=report.duplicates, delivering_again_s=round(recovered, 2))


# -- recycling (item 13) -------------------------------------------------------------------------

HUNGRY = """
import os

HOG = []
EXHAUSTED = False  # after a MemoryError this process stays short of memory (a leak, fragmentation)

def stage(event, meta):
    global EXHAUSTED
    i = event["id"]
    if i == 150 or EXHAUSTED:
        EXHAUSTED = True
        bytearray(1 << 60)  # MemoryError
    if i % 25 == 0:
        HOG.append(bytearray(24 << 20))  # kept: the worker grows
    event["pid"] = os.getpid()
    return event
"""


@pytest.mark.slow
def test_row38_workers_are_recycled_after_memory_error_and_over_max_rss(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "hungry.py").write_text(HUNGRY)
    n = 400
    append(tmp_path / "in.ndjson", range(n))
    port = free_port()
    cfg = write_config(tmp_path, FOLLOWED.format(fn="hungry:stage", extra=""), port=port, daemon_extra=", worker_max_rss: 160MiB, batch_size: 16")
    d = Daemon(cfg)
    peak = 0.0
    try:
        def done() -> bool:
            nonlocal peak
            peak = max([peak, *(rss_mb(p) for p in status(port).get("worker_pids", []))])
            return len(delivered(tmp_path)) + len(dead(tmp_path)) >= n

        wait_until(done, 60, "every record", daemon=d)
        m = scrape_or_empty(port)
    finally:
        assert d.stop() == 0, d.stderr()
    recycles = {cause: sum(v for k, v in m.items() if k.startswith("headrace_worker_recycles_total") and f'cause="{cause}"' in k)
                for cause in ("memory_error", "max_rss")}  # fmt: skip
    restarts = sum(v for k, v in m.items() if k.startswith("headrace_worker_restarts_total"))
    entries = dead(tmp_path)
    assert [e["event"]["id"] for e in entries] == [150], "only the record that hit the MemoryError"
    assert entries[0]["meta"]["error"]["type"] == "MemoryError"
    report = conserve(range(n), delivered(tmp_path), dead_ids(entries), guarantee=EXACTLY_ONCE, expect_dead={150})
    assert report.ok, report.summary()
    assert recycles["memory_error"] >= 1 and recycles["max_rss"] >= 1, recycles
    assert restarts == 0, "no worker crashed: each was replaced after answering"
    pids = {e["pid"] for e in Lines(tmp_path / "out.ndjson").events}
    figures(row=38, case="MemoryError and worker_max_rss 160MiB", lost=len(report.lost), duplicates=report.duplicates,
            recycled_memory_error=recycles["memory_error"], recycled_max_rss=recycles["max_rss"], worker_pids_seen=len(pids),
            peak_worker_rss_mb=round(peak))  # fmt: skip


# -- any value a stage gives fails its record only (item 10) -------------------------------------

BAD_VALUES = """
import threading


class Unloadable(Exception):
    def __init__(self, a, b):  # pickles; unpickling calls Unloadable(message): TypeError
        super().__init__(f"{a}/{b}")


class BadText(Exception):
    def __str__(self):
        raise RuntimeError("no text for you")


class Opaque:
    def __repr__(self):
        raise RuntimeError("no repr either")


def stage(event, meta):
    i = event["id"]
    meta["id"] = i
    if i == 3:
        meta["x"] = Unloadable(1, 2)
    elif i == 5:
        meta["lock"] = threading.Lock()
    elif i == 7:
        raise BadText()
    elif i == 9:
        raise SystemExit(3)
    elif i == 11:
        raise KeyboardInterrupt
    elif i == 13:
        return {"id": i, "opaque": Opaque()}
    return event
"""


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["workers", "loop"])
def test_row38_any_value_a_stage_raises_or_returns_fails_its_record_only(tmp_path: Path, placement: str, figures: Figures) -> None:
    (tmp_path / "bad.py").write_text(BAD_VALUES)
    n = 300
    append(tmp_path / "in.ndjson", range(n))
    port = free_port()
    cfg = write_config(tmp_path, FOLLOWED.format(fn="bad:stage", extra=f", placement: {placement}"), port=port)
    bad = {7, 9, 11, 13} | ({3, 5} if placement == "workers" else set())  # on the loop a meta never crosses a process
    d = Daemon(cfg)
    try:
        wait_until(lambda: len(delivered(tmp_path)) + len(dead(tmp_path)) >= n, 60, "every record", daemon=d)
        restarts = status(port).get("worker_restarts", 0)
    finally:
        assert d.stop() == 0, d.stderr()
    entries = dead(tmp_path)
    ids = [e["meta"].get("id", e["event"].get("id") if isinstance(e["event"], dict) else None) for e in entries]
    report = conserve(range(n), delivered(tmp_path), ids, guarantee=EXACTLY_ONCE, expect_dead=bad)
    assert report.ok, report.summary()
    errors = {i: e["meta"]["error"] for i, e in zip(ids, entries, strict=True)}
    assert errors[7]["type"] == "BadText" and "str() raised RuntimeError" in errors[7]["message"]
    assert errors[9]["type"] == "SystemExit" and errors[11]["type"] == "KeyboardInterrupt"
    assert "repr() raised RuntimeError" in json.dumps(entries[ids.index(13)]["event"]) or errors[13]["type"] == "TypeError"
    if placement == "workers":
        assert "cannot be read in the parent" in errors[3]["message"], errors[3]
        assert "cannot be pickled" in errors[5]["message"], errors[5]
    assert restarts == 0, "no worker died for it"
    figures(row=38, case=f"bad values from a stage on the {placement}", records=n, isolated=len(bad), lost=len(report.lost),
            duplicates=report.duplicates, worker_restarts=restarts)  # fmt: skip


LOOP_THEN_WORKERS = """
import threading

def mark(event, meta):
    if event["id"] == 5:
        meta["lock"] = threading.Lock()  # cannot be pickled to reach the worker stage after this one
    return event

def work(event, meta):
    return event
"""


@pytest.mark.slow
def test_row38_a_value_that_cannot_reach_the_workers_fails_its_record_only(tmp_path: Path, figures: Figures) -> None:
    (tmp_path / "handover.py").write_text(LOOP_THEN_WORKERS)
    n = 300
    append(tmp_path / "in.ndjson", range(n))
    port = free_port()
    cfg = write_config(tmp_path, """
onramps: {src: {type: file, config: {path: in.ndjson, follow: true, poll_interval: 20ms}}}
pipelines: {main: [{op: python, fn: "handover:mark", placement: loop}, {op: python, fn: "handover:work"}]}
offramps:
  out: {type: file, config: {path: out.ndjson}}
  dlq: {type: file, config: {path: dlq.ndjson}}
links: {src: [main], src/err: [dlq], main: [out], main/err: [dlq]}
""", port=port)  # fmt: skip
    d = Daemon(cfg)
    try:
        wait_until(lambda: len(delivered(tmp_path)) + len(Lines(tmp_path / "dlq.ndjson").ids) >= n, 60, "every record", daemon=d)
    finally:
        assert d.stop() == 0, d.stderr()
    report = conserve(range(n), delivered(tmp_path), Lines(tmp_path / "dlq.ndjson").ids, guarantee=EXACTLY_ONCE, expect_dead={5})
    assert report.ok, report.summary()
    assert "a value cannot be pickled to go to a worker" in d.stderr()
    figures(row=38, case="a loop stage hands an unpicklable meta to a worker stage", records=n, isolated=1, lost=len(report.lost))


# -- external kills blame no record (item 13) ----------------------------------------------------

PACED = """
import time

def stage(event, meta):
    time.sleep(0.002)
    return event
"""


@pytest.mark.slow
def test_row38_workers_killed_every_100ms_blame_no_record(tmp_path: Path, figures: Figures) -> None:
    """Only a record that kills workers when it runs alone is poison; a kill from outside, even
    of a worker still setting up after the last kill, blames nobody."""
    (tmp_path / "paced.py").write_text(PACED)
    n = 1500
    append(tmp_path / "in.ndjson", range(n))
    port = free_port()
    d = Daemon(write_config(tmp_path, FOLLOWED.format(fn="paced:stage", extra=""), port=port, daemon_extra=", batch_size: 16"))
    kills = 0
    try:
        wait_until(lambda: len(status(port).get("worker_pids", [])) == 2, 30, "two workers", daemon=d)
        deadline = time.monotonic() + 60
        while len(delivered(tmp_path)) + len(dead(tmp_path)) < n and time.monotonic() < deadline and d.proc.poll() is None:
            victims = [p for p in (status(port).get("worker_pids") or []) if alive(p)]
            if victims:
                os.kill(victims[kills % len(victims)], signal.SIGKILL)
                kills += 1
            time.sleep(0.1)
        took = time.monotonic() - (deadline - 60)
        during = len(delivered(tmp_path))
        restarts = status(port)["worker_restarts"]
    finally:
        assert d.stop() == 0, d.stderr()
    report = conserve(range(n), delivered(tmp_path), dead_ids(dead(tmp_path)), guarantee=EXACTLY_ONCE, expect_dead=())
    assert report.ok, report.summary() + f"\n{dead(tmp_path)[:3]}"
    # respawned workers take jobs only once set up: the pool makes progress between kills
    assert took < 60, f"{during} of {n} delivered in 60 s of kills"
    assert delivered(tmp_path) == list(range(n)), "order kept"
    figures(row=38, case="a worker SIGKILLed every 100 ms", records=n, kills=kills, worker_restarts=restarts, lost=len(report.lost),
            duplicates=report.duplicates, blamed=len(dead(tmp_path)), all_delivered_s=round(took, 1))  # fmt: skip
