"""Dead letters carry where they came from: the onramp, the time and the config's digest."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon

STAGES = '''
def picky(event, meta):
    if event["id"] % 3 == 0:
        raise ValueError(f"no multiples of three: {event['id']}")
    return event
'''


def _run(tmp_path: Path, write: Any, workers: int, note: str) -> list[dict[str, Any]]:
    write("stages.py", STAGES)
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(30)) + "not json\n")
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: null}}}}
onramps: {{orders: {{type: file, codec: json, config: {{path: in.ndjson}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:picky"}}, {{op: set, set: {{note: "'{note}'"}}}}]}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  dlq: {{type: file, codec: json, with_meta: true, config: {{path: dlq.ndjson}}}}
links: {{orders: [main], orders/err: [dlq], main: [out], main/err: [dlq]}}
""")
    d = Daemon(cfg)
    assert d.wait(60) == 0, d.stderr()
    dlq = [json.loads(x) for x in (tmp_path / "dlq.ndjson").read_text().splitlines()]
    (tmp_path / "dlq.ndjson").unlink()
    (tmp_path / "out.ndjson").unlink()
    return dlq


def test_dead_letters_name_their_onramp_time_and_config(tmp_path: Path, write: Any) -> None:
    before = datetime.now(UTC)
    first = _run(tmp_path, write, 2, "a")
    assert len(first) == 11, first  # ids 0, 3, ... 27 from the stage, and the line that is not JSON
    errors = [e["meta"]["error"] for e in first]
    assert {e["type"] for e in errors} == {"ValueError", "DecodeError"}
    for err in errors:
        assert err["origin"] == "orders"
        assert re.fullmatch(r"[0-9a-f]{16}", err["config"]), err
        at = datetime.fromisoformat(err["at"].replace("Z", "+00:00"))
        assert before <= at <= datetime.now(UTC)
    assert len({e["config"] for e in errors}) == 1
    same = _run(tmp_path, write, 0, "a")  # the same pipeline, on the loop
    changed = _run(tmp_path, write, 0, "b")  # one node's config changed
    assert {e["meta"]["error"]["config"] for e in same} == {errors[0]["config"]}
    assert {e["meta"]["error"]["config"] for e in changed} != {errors[0]["config"]}
