"""The file onramp's ``path`` as a glob (issue 16, item 2): every match read, new ones picked up, none read twice."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon, headrace, json_lines


def _lines(prefix: str, n: int, start: int = 0) -> str:
    return "".join(json.dumps({"id": f"{prefix}{i}"}) + "\n" for i in range(start, start + n))


def test_a_glob_read_once_reads_every_match_in_name_order(tmp_path: Path, write: Any) -> None:
    write("in/a.ndjson", _lines("a", 3))
    write("in/b.ndjson", _lines("b", 2) + '{"id": "b-last"}')  # no newline at its end: not joined to c's first line
    write("in/c.ndjson", _lines("c", 2))
    write("in/x.txt", _lines("x", 5))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, codec: json, config: {path: "in/*.ndjson"}}}
offramps: {out: {type: file, codec: json, with_meta: true, config: {path: out.ndjson}}}
links: {src: [out]}
""")
    d = Daemon(cfg)
    assert d.wait(30) == 0, d.stderr()
    got = json_lines(tmp_path / "out.ndjson")
    assert [x["event"]["id"] for x in got] == ["a0", "a1", "a2", "b0", "b1", "b-last", "c0", "c1"]
    assert {x["event"]["id"][0]: Path(x["meta"]["file_path"]).name for x in got} == {"a": "a.ndjson", "b": "b.ndjson", "c": "c.ndjson"}
    assert [x["meta"]["file_line"] for x in got] == [1, 2, 3, 1, 2, 3, 1, 2]


def test_a_followed_glob_picks_up_new_files_follows_rotation_and_resumes(tmp_path: Path, write: Any) -> None:
    logs = tmp_path / "logs"
    write("logs/a.log", _lines("a", 100))
    write("logs/b.log", _lines("b", 100))
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}, state_dir: state}
onramps: {src: {type: file, codec: json, config: {path: "logs/*", follow: true, poll_interval: 20ms, checkpoint_interval: 50ms}}}
offramps: {out: {type: file, codec: json, config: {path: out.ndjson}}}
links: {src: [out]}
""")
    expected: list[str] = [f"a{i}" for i in range(100)] + [f"b{i}" for i in range(100)]

    def ids() -> list[str]:
        return [x["id"] for x in json_lines(tmp_path / "out.ndjson")]

    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(ids()) == 200, timeout=30)
        write("logs/c.log", _lines("c", 50))  # a new match
        expected += [f"c{i}" for i in range(50)]
        d.wait_for(lambda: len(ids()) == 250, timeout=30)
        with open(logs / "a.log", "a") as f:
            f.write(_lines("a", 20, 100))
        os.rename(logs / "a.log", logs / "a.log.1")  # rotation: the new name matches the glob too
        write("logs/a.log", _lines("n", 30))
        expected += [f"a{i}" for i in range(100, 120)] + [f"n{i}" for i in range(30)]
        d.wait_for(lambda: len(ids()) >= 300, timeout=30)
    finally:
        assert d.stop() == 0, d.stderr()
    with open(logs / "b.log", "a") as f:  # while it is down
        f.write(_lines("b", 10, 100))
    expected += [f"b{i}" for i in range(100, 110)]
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(ids()) >= 310, timeout=30)
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0, d.stderr()
    finally:
        d.stop()
    assert sorted(ids()) == sorted(expected), "every line once: the rotated file not read again under its new name"


def test_a_glob_under_a_file_is_a_config_error(tmp_path: Path, write: Any) -> None:
    write("logs", "a file where the pattern's folder should be\n")
    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: file, config: {path: "logs/*.log", follow: true}}}
offramps: {out: {type: blackhole}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78 and "can never be a folder" in res.stderr.decode(), res.stderr.decode()
