"""A followed file is resumed after a restart (issue 16, item 2): every restart of a log shipper
under systemd used to send the whole file again."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port, ids_written, lines_written, metric, scrape

CONFIG = """
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, config: {{path: app.log, follow: true, poll_interval: 20ms, checkpoint_interval: 100ms}}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{src: [out]}}
"""


class Log:
    """The followed file, written by the test: numbered lines, rotation by rename, copytruncate."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "app.log"
        self.next = 0
        self.rotations = 0

    def append(self, n: int) -> None:
        with self.path.open("ab") as f:
            f.write(b"".join(b'{"id": %d, "pad": "%s"}\n' % (i, b"x" * 40) for i in range(self.next, self.next + n)))
        self.next += n

    def rotate(self) -> None:
        self.rotations += 1
        os.rename(self.path, self.path.with_suffix(f".log.{self.rotations}"))
        self.path.touch()

    def truncate(self) -> None:
        """copytruncate: the lines so far are kept elsewhere, the file starts again empty."""
        self.rotations += 1
        self.path.with_suffix(f".log.{self.rotations}").write_bytes(self.path.read_bytes())
        with self.path.open("r+b") as f:
            f.truncate(0)


def out_ids(folder: Path) -> list[int]:
    return ids_written(folder / "out.ndjson")


def has_ids(folder: Path, n: int) -> bool:
    """At least ``n`` distinct ids written; the lines are counted first (parsing up to 100,000 of them every
    50 ms while the daemon writes took a core from it), so they are parsed only once there can be enough."""
    return lines_written(folder / "out.ndjson") >= n and len(set(out_ids(folder))) >= n


def up(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def delivered(port: int) -> float:
    return metric(port, 'headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}')


@pytest.mark.slow
def test_restarts_with_sigterm_and_sigkill_rotation_and_truncation_lose_nothing(tmp_path: Path, write: Any) -> None:
    log = Log(tmp_path)
    log.append(20_000)  # there before the first start: read from its beginning
    # (signal after this phase, what happens to the file while the daemon runs)
    phases: list[tuple[int, str]] = [(signal.SIGTERM, "append"), (signal.SIGKILL, "rotate"), (signal.SIGTERM, "truncate"),
                                     (signal.SIGKILL, "append"), (signal.SIGTERM, "append")]  # fmt: skip
    kill_dups_bound = 0
    for sig, event in phases:
        port = free_port()
        cfg = write("c.yaml", CONFIG.format(port=port))
        d = Daemon(cfg)
        try:
            d.wait_for(lambda p=port: up(p), timeout=30)
            if event == "rotate":
                log.append(5_000)
                log.rotate()
            elif event == "truncate":
                d.wait_for(lambda: has_ids(tmp_path, log.next), timeout=60)  # all of it read before it is cut
                log.truncate()  # what follows stays shorter than what was cut until the onramp noticed (it polls every 20 ms)
            log.append(20_000)
            d.wait_for(lambda: has_ids(tmp_path, log.next), timeout=60)
            if sig == signal.SIGKILL:
                log.append(20_000)  # lines in flight when it is killed
                d.wait_for(lambda p=port: delivered(p) > 0 and has_ids(tmp_path, log.next - 20_000 + 1001), timeout=60)
                kill_dups_bound += 20_000
            d.signal(sig)
            code = d.wait(60)
            assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), d.stderr()
        finally:
            d.stop()
    port = free_port()
    d = Daemon(write("c.yaml", CONFIG.format(port=port)))
    try:
        d.wait_for(lambda: has_ids(tmp_path, log.next), timeout=60)
    finally:
        d.stop()
    got = out_ids(tmp_path)
    assert set(got) == set(range(log.next)), f"missing {sorted(set(range(log.next)) - set(got))[:10]}"
    dups = sum(c - 1 for c in Counter(got).values())
    assert dups <= kill_dups_bound, dups  # only what was in flight at a SIGKILL (a SIGTERM saves its checkpoint)


def test_a_sigterm_restart_sends_nothing_again_and_read_from_end_skips_the_past(tmp_path: Path, write: Any) -> None:
    log = Log(tmp_path)
    log.append(1_000)
    port = free_port()
    cfg = write("c.yaml", CONFIG.format(port=port))
    with_end = CONFIG.format(port=port).replace("checkpoint_interval: 100ms", "checkpoint_interval: 100ms, read_from: end")
    for _ in range(3):
        d = Daemon(cfg)
        try:
            d.wait_for(lambda: len(out_ids(tmp_path)) >= log.next, timeout=30)
            log.append(500)
            d.wait_for(lambda: len(out_ids(tmp_path)) >= log.next, timeout=30)
            d.signal(signal.SIGTERM)
            assert d.wait(30) == 0, d.stderr()
        finally:
            d.stop()
    assert out_ids(tmp_path) == list(range(log.next))  # each line once, in order
    # a file never seen (the state is gone) with read_from: end: only what is written after the start
    import shutil

    shutil.rmtree(tmp_path / "headrace-state")
    (tmp_path / "out.ndjson").unlink()
    write("c.yaml", with_end)
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: (tmp_path / "headrace-state" / "file-onramp" / "src.json").exists(), timeout=30)
        first_new = log.next
        log.append(10)
        d.wait_for(lambda: len(out_ids(tmp_path)) >= 10, timeout=30)
    finally:
        d.stop()
    assert out_ids(tmp_path) == list(range(first_new, first_new + 10))


def test_a_file_rotated_while_the_daemon_was_down_is_finished_first(tmp_path: Path, write: Any) -> None:
    """logrotate ran while the daemon was stopped: the rest of the renamed file (found in the same
    folder by its fingerprint) is read before the new file, each line once."""
    log = Log(tmp_path)
    log.append(300)
    port = free_port()
    cfg = write("c.yaml", CONFIG.format(port=port))
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(out_ids(tmp_path)) >= log.next, timeout=30)
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.stderr()
    finally:
        d.stop()
    log.append(200)  # written after the stop, before the rotation: only in the renamed file
    log.rotate()
    log.append(100)  # the new file
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(out_ids(tmp_path)) >= log.next, timeout=30)
    finally:
        d.stop()
    assert out_ids(tmp_path) == list(range(log.next))
    assert "reading the rest of" in d.stderr() and "app.log.1" in d.stderr()


def test_checkpoints_with_framing_other_than_lines_are_refused_by_check(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    write("a.bin", "")
    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: file, preprocessors: [length-prefixed], config: {path: a.bin, follow: true}}}
offramps: {out: {type: stdout}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    err = res.stderr.decode()
    assert res.returncode == 78 and "checkpoint" in err and "set checkpoint: false" in err and "c.yaml:3" in err, err
    write("c.yaml", cfg.read_text().replace("follow: true", "follow: true, checkpoint: false"))
    assert headrace("check", str(cfg)).returncode == 0
    assert not (tmp_path / "headrace-state").exists()  # check writes nothing
