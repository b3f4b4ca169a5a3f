"""Rows 19 and 20: a file offramp's path template cannot write outside its root; the admin
endpoints listen on 127.0.0.1 by default and idle connections do not stall scrapes."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.reliability.checker import EXACTLY_ONCE, conserve
from tests.reliability.conftest import Figures
from tests.reliability.harness import Lines, dead_letters, http_status, wait_until, write_config
from tests.support.daemon import Daemon, free_port

TAG = '''
def tag(event, meta):
    meta["tenant"] = event["tenant"]
    return event
'''

# tenant -> why it must not be written where it names
HOSTILE = {
    "../escape": "a parent step",
    "..": "the parent itself",
    "/abs": "an absolute path",
    "/tmp": "an absolute path",
    "a\x00b": "a NUL byte",
    "~root": "a home folder",
    "a/../../escape": "a path with separators",
    "evil": "a planted symlink to a folder outside the root",
    "trap": "a planted symlink as the file itself",
}
FINE = ("a", "b-1", "%Y", "x y")


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


@pytest.mark.parametrize("root", [None, "out"], ids=["default-root", "explicit-root"])
def test_row19_file_offramp_path_template_stays_inside_its_root(tmp_path: Path, root: str | None, figures: Figures) -> None:
    (tmp_path / "tenant.py").write_text(TAG)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.ndjson").write_text("untouched\n")
    out = tmp_path / "out"
    (out / "trap").mkdir(parents=True)
    os.symlink(outside, out / "evil")  # a folder inside the root that leads out of it
    os.symlink(outside / "target.ndjson", out / "trap" / "events.ndjson")  # the file itself is a symlink
    events = [{"id": i, "tenant": t} for i, t in enumerate([*FINE, *HOSTILE] * 3)]
    (tmp_path / "in.ndjson").write_text("".join(json.dumps(e) + "\n" for e in events))
    root_opt = f", root: {root}" if root else ""
    cfg = write_config(tmp_path, f"""
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
pipelines: {{main: [{{op: python, fn: "tenant:tag"}}]}}
offramps:
  out: {{type: file, config: {{path: "out/{{meta.tenant}}/events.ndjson"{root_opt}}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [main], src/err: [dlq], main: [out], main/err: [dlq], out/err: [dlq]}}
""", port=None, workers=0)  # fmt: skip
    before = _tree(tmp_path) - {"c.stdout", "c.stderr"}
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    assert (outside / "target.ndjson").read_text() == "untouched\n"
    assert sorted(p.name for p in outside.iterdir()) == ["target.ndjson"], "something was written outside the root"
    new = _tree(tmp_path) - before - {"c.stdout", "c.stderr", "dlq.ndjson"}
    stray = sorted(p for p in new if not p.startswith("out/") or p.startswith("out/evil/"))
    assert not stray, f"files written outside out/: {stray}"
    written = {p for p in new if p.startswith("out/")}
    assert written == {f"out/{t}/events.ndjson" for t in FINE}, written
    found = [e["id"] for t in FINE for e in Lines(out / t / "events.ndjson").events]
    dead = dead_letters(tmp_path / "dlq.ndjson")
    hostile_ids = {e["id"] for e in events if e["tenant"] in HOSTILE}
    report = conserve([e["id"] for e in events], found, [e["event"]["id"] for e in dead], guarantee=EXACTLY_ONCE, expect_dead=hostile_ids)
    assert report.ok, report.summary()
    assert all(e["meta"]["error"]["stage"] == "out" and e["meta"]["error"]["message"] for e in dead)
    figures(row=19, root=root or "default", refused=report.dead, written=report.found["out"], outside_writes=len(stray), lost=len(report.lost))


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state that ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with open(f"/proc/net/{table}") as f:
            for line in list(f)[1:]:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                addr_hex, port_hex = local.split(":")
                raw = bytes.fromhex(addr_hex)
                if family == socket.AF_INET:
                    addr = socket.inet_ntop(family, raw[::-1])
                else:
                    addr = socket.inet_ntop(family, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
                found.append((addr, int(port_hex, 16)))
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_row20a_metrics_listen_on_loopback_by_default(tmp_path: Path, figures: Figures) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("""version: 1
onramps: {tick: {type: metronome, config: {interval: 50ms}}}
offramps: {out: {type: blackhole}}
links: {tick: [out]}
""")
    deadline = time.monotonic() + 15
    while not _port_free(9898):  # another daemon of a test run in parallel may hold the default port for a moment
        if time.monotonic() > deadline:
            pytest.skip("the default metrics port 9898 stayed busy (another process holds it)")
        time.sleep(0.5)
    d = Daemon(cfg)
    try:
        wait_until(lambda: http_status(9898, "/health") == 200 or d.proc.poll() is not None, 30, "the default admin endpoint")
        if d.proc.poll() is not None and "cannot listen" in d.stderr():
            pytest.skip("the default metrics port 9898 was taken by another process meanwhile")
        sockets = _listening(d.pid)
    finally:
        assert d.stop() == 0, d.stderr()
    assert sockets == [("127.0.0.1", 9898)], sockets
    figures(row=20, case="default listen", listening=f"{sockets[0][0]}:{sockets[0][1]}")


def test_row20b_idle_connections_do_not_stall_scrapes(tmp_path: Path, figures: Figures) -> None:
    port = free_port()
    cfg = write_config(tmp_path, """
onramps: {tick: {type: metronome, config: {interval: 10ms}}}
offramps: {out: {type: blackhole}}
links: {tick: [out]}
""", port=port, workers=0)  # fmt: skip
    d = Daemon(cfg)
    conns: list[socket.socket] = []
    latencies: list[float] = []
    try:
        wait_until(lambda: http_status(port, "/health") == 200, 30, "the admin endpoint", daemon=d)
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:  # half of them start a request and never finish it
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            conns.append(s)
        for _ in range(20):
            t0 = time.monotonic()
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            latencies.append(time.monotonic() - t0)
            assert b"headrace_build_info" in body
            time.sleep(0.05)
        assert http_status(port, "/ready") == 200
    finally:
        for s in conns:
            s.close()
        assert d.stop() == 0, d.stderr()
    assert max(latencies) < 1.0, latencies
    figures(row=20, case="100 idle connections", scrape_max_s=round(max(latencies), 3), scrapes=len(latencies))
