"""Logs on stderr: text, JSON for machines, and syslog priority prefixes under journald."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.support.daemon import headrace

CFG = """
version: 1
daemon: {workers: 0, metrics: {listen: null}}
onramps: {src: {type: file, config: {path: in.ndjson}}}
offramps: {out: {type: file, config: {path: out.ndjson}}}
links: {src: [out]}
"""


def test_json_log_format(tmp_path: Path, write: Any) -> None:
    write("in.ndjson", '{"a": 1}\nnot json\n')
    cfg = write("c.yaml", CFG)
    res = headrace("--log-format", "json", "run", str(cfg))
    assert res.returncode == 0
    docs = [json.loads(line) for line in res.stderr.decode().splitlines()]
    assert {"ts", "level", "logger", "msg"} <= set(docs[0])
    assert any(d["level"] == "error" and "unlinked err port of src" in d["msg"] for d in docs)
    # onramp -> offramp with no stage: the records are still validated, the bad one never written
    assert (tmp_path / "out.ndjson").read_text() == '{"a": 1}\n'



def test_journal_priority_prefixes(tmp_path: Path, write: Any) -> None:
    write("in.ndjson", '{"a": 1}\nnot json\n')
    cfg = write("c.yaml", CFG)
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        st = os.fstat(err.fileno())
        import subprocess
        import sys

        rc = subprocess.run([sys.executable, "-m", "headrace", "run", str(cfg)], stderr=err, stdout=subprocess.DEVNULL,
                            env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, check=False).returncode  # fmt: skip
    assert rc == 0
    lines = err_path.read_text().splitlines()
    assert any(line.startswith("<6>headrace.daemon: running") for line in lines), lines
    assert any(line.startswith("<3>headrace.router:") for line in lines), lines


def test_bad_config_exits_78_with_positions(tmp_path: Path, write: Any) -> None:
    cfg = write("c.yaml", CFG.replace("type: file, config: {path: out.ndjson}", "type: fiel"))
    res = headrace("run", str(cfg))
    assert res.returncode == 78
    assert f"{cfg}:5:" in res.stderr.decode() and "unknown offramp 'fiel'" in res.stderr.decode()
