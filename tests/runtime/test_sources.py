"""The file onramp: plain, gzip and xz by content; follow like tail -F across rotation."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, json_lines

ROOT = Path(__file__).resolve().parents[2]


def lines(path: Path) -> list[Any]:
    return json_lines(path)


@pytest.mark.parametrize("compress", ["plain", "gzip", "xz"])
def test_file_onramp_reads_compressed_by_content(tmp_path: Path, write: Any, compress: str) -> None:
    body = "".join(json.dumps({"id": i}) + "\n" for i in range(1000)).encode()
    data = {"plain": body, "gzip": gzip.compress(body), "xz": lzma.compress(body)}[compress]
    write("in.data", data)  # no telling extension: detected by the magic bytes
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.data, read_size: 1000}}}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [out]}
""")
    d = Daemon(cfg)
    assert d.wait(30) == 0, d.stderr()
    assert [e["id"] for e in lines(tmp_path / "out.ndjson")] == list(range(1000))


def test_follow_reads_appends_and_survives_rotation(tmp_path: Path, write: Any) -> None:
    log = write("app.log", '{"id": 0}\n{"id": 1}\n')
    cfg = write("c.yaml", """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: app.log, follow: true, poll_interval: 20ms}}}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [out]}
""")
    out = tmp_path / "out.ndjson"
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: len(lines(out)) == 2)
        with open(log, "a") as f:
            f.write('{"id": 2}\n{"id"')  # a partial line waits for its end
        d.wait_for(lambda: len(lines(out)) == 3)
        with open(log, "a") as f:
            f.write(': 3}\n')
        d.wait_for(lambda: len(lines(out)) == 4)
        os.rename(log, tmp_path / "app.log.1")  # rotate like logrotate: the new file starts empty
        log.write_text('{"id": 4}\n')
        d.wait_for(lambda: len(lines(out)) == 5)
    finally:
        d.signal(signal.SIGTERM)
        assert d.wait(20) == 0, d.stderr()
    assert [e["id"] for e in lines(out)] == [0, 1, 2, 3, 4]


def test_quickstart_runs_and_drains_on_ctrl_c(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("out", "__pycache__", "plugin"))
    cfg = tmp_path / "examples" / "quickstart.yaml"
    from tests.support.daemon import free_port

    port = free_port()
    d = Daemon(cfg, env={"HEADRACE_METRICS_PORT": str(port)})
    errors = tmp_path / "examples" / "quickstart" / "out" / "errors.ndjson"
    d.wait_for(lambda: len(d.stdout().splitlines()) >= 3 and len(lines(errors)) >= 2, timeout=30)
    d.signal(signal.SIGINT)
    assert d.wait(20) == 0, d.stderr()
    printed = [json.loads(x) for x in d.stdout().splitlines()]
    assert [e["msg"] for e in printed] == ["GET /users 200 12ms", "slow query 950ms", "POST /orders 201 31ms"]
    assert {e["severity"] for e in printed} == {"info", "warning"}
    assert [e["msg"] for e in lines(errors)] == ["connection reset by peer", "out of memory"]
    assert '"event":"this line is not JSON"' in d.stderr()
