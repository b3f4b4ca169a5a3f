"""Bounded failure per offramp (issue 16, item 3): ``retry: {max_attempts, max_elapsed}`` sends the
records of a write that keeps failing to the offramp's ``err`` port, with the attempts and the
last error in ``meta.error``, and the source moves on; without it, today's retry-forever."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port


def _run(tmp_path: Path, write: Any, retry: str, n: int = 20) -> tuple[int | None, list[dict[str, Any]], str]:
    dead_port = free_port()  # nothing listens there: every connection is refused
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: null}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson}}}}}}
offramps:
  out: {{type: tcp, retry: {retry}, config: {{port: {dead_port}}}}}
  dlq: {{type: file, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{src: [out], out/err: [dlq]}}
""")
    d = Daemon(cfg)
    try:
        code = d.wait(60)
    finally:
        d.stop()
    path = tmp_path / "dlq.ndjson"
    dead = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return code, dead, d.stderr()


@pytest.mark.parametrize(("retry", "says"), [("{max_attempts: 3}", "after 3 attempts (retry.max_attempts)"),
                                             ("{max_elapsed: 1s}", "(retry.max_elapsed 1s)")])  # fmt: skip
def test_a_write_that_keeps_failing_goes_to_err_within_the_bound(tmp_path: Path, write: Any, retry: str, says: str) -> None:
    code, dead, err = _run(tmp_path, write, retry)
    assert code == 0, err
    assert sorted(d["event"]["id"] for d in dead) == list(range(20)), err  # every record, once
    for d in dead:
        e = d["meta"]["error"]
        assert e["stage"] == "out" and e["type"] == "GaveUp" and says in e["message"], e
        assert e["attempts"] >= (3 if "attempts" in retry else 2) and "refused" in e["last_error"].lower(), e
    assert "to err" in err


def test_a_bad_retry_bound_is_a_config_error(tmp_path: Path, write: Any) -> None:
    from tests.support.daemon import headrace

    cfg = write("c.yaml", """
version: 1
onramps: {src: {type: stdin}}
offramps: {out: {type: stdout, retry: {max_attempts: 0}}}
links: {src: [out]}
""")
    res = headrace("check", str(cfg))
    assert res.returncode == 78 and "max_attempts" in res.stderr.decode() and "c.yaml:4" in res.stderr.decode()
