"""``headrace tap``: live events of a port of a running daemon (issue 19, item 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.daemon import Daemon, free_port, headrace, scrape

STAGES = """
def keep(event, meta):
    if event["id"] % 7 == 0:
        raise ValueError("sevens fail")
    return event


def mark(event, meta):
    meta["seen"] = True
    return event
"""


def _daemon(tmp_path: Path, write: Any, workers: int, token: str | None = None) -> tuple[Daemon, int]:
    write("tapstages.py", STAGES)
    write("src.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(100)))
    port = free_port()
    secret = ', token: "${ADMIN_TOKEN}"' if token else ""
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: {workers}, metrics: {{listen: "127.0.0.1:{port}"{secret}}}}}
onramps: {{src: {{type: blaster, config: {{source: src.ndjson, batch: 20}}}}}}
pipelines: {{main: [{{op: python, fn: "tapstages:keep"}}, {{op: python, fn: "tapstages:mark"}}]}}
offramps: {{out: {{type: blackhole}}}}
links: {{src: [main], main: [out]}}
""")
    d = Daemon(cfg, env={"ADMIN_TOKEN": token} if token else None)
    d.wait_for(lambda: _sent(port) > 0, timeout=30)
    return d, port


def _sent(port: int) -> float:
    try:
        return scrape(port).get('headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}', 0.0)
    except OSError:
        return 0.0


def _lines(res: Any) -> list[Any]:
    return [json.loads(x) for x in res.stdout.decode().splitlines()]


def test_tap_shows_sampled_filtered_events_with_meta_and_ends_at_its_limit(tmp_path: Path, write: Any) -> None:
    d, port = _daemon(tmp_path, write, workers=2)
    url = f"127.0.0.1:{port}"
    try:
        res = headrace("tap", url, "src", "--limit", "5", timeout=30)
        assert res.returncode == 0, res.stderr.decode()
        got = _lines(res)
        assert len(got) == 5 and all(set(e) == {"id"} for e in got)
        assert "5 shown of" in res.stderr.decode()
        # the segment's last node (on workers): its out crosses the parent
        res = headrace("tap", url, "main.mark", "--sample", "1/3", "--limit", "4", "--where", "event['id'] % 2 == 0", "--with-meta",
                       timeout=30)  # fmt: skip
        assert res.returncode == 0, res.stderr.decode()
        got = _lines(res)
        assert len(got) == 4 and all(e["event"]["id"] % 2 == 0 and e["meta"] == {"seen": True} for e in got), got
        # a node's err port on workers, and what an offramp is given
        res = headrace("tap", url, "main.keep/err", "--limit", "2", "--with-meta", timeout=30)
        assert res.returncode == 0 and all(e["event"]["id"] % 7 == 0 and e["meta"]["error"]["message"] == "sevens fail" for e in _lines(res))
        res = headrace("tap", url, "out/in", "--limit", "3", "--format", "yaml", timeout=30)
        assert res.returncode == 0 and res.stdout.decode().count("---") == 3 and "id:" in res.stdout.decode()
        # a node inside the worker segment: its out goes straight into main.mark, on a worker; sampled there
        res = headrace("tap", url, "main.keep", "--sample", "1/2", "--limit", "5", "--with-meta", timeout=30)
        assert res.returncode == 0, res.stderr.decode()
        got = _lines(res)
        assert len(got) == 5 and all(e["event"]["id"] % 7 and e["meta"] == {} for e in got), got  # kept, not yet marked
        # what cannot be tapped says why
        res = headrace("tap", url, "nosuch", timeout=30)
        assert res.returncode == 2 and "no component 'nosuch'" in res.stderr.decode()
        res = headrace("tap", url, "src/sideways", timeout=30)
        assert res.returncode == 2 and "has no port 'sideways'" in res.stderr.decode()
        res = headrace("tap", url, "src", "--where", "event[", timeout=30)
        assert res.returncode == 2 and "invalid expression" in res.stderr.decode(), res.stderr.decode()
        res = headrace("tap", url, "src", "--sample", "1/0", timeout=30)
        assert res.returncode == 2 and "--sample '1/0': give 1/N or N" in res.stderr.decode()
    finally:
        d.stop()


def test_on_the_loop_the_same_ports_can_be_tapped(tmp_path: Path, write: Any) -> None:
    d, port = _daemon(tmp_path, write, workers=0)
    try:
        url = f"http://127.0.0.1:{port}"
        res = headrace("tap", url, "main.mark", "--limit", "3", timeout=30)
        assert res.returncode == 0 and len(_lines(res)) == 3, res.stderr.decode()
        res = headrace("tap", url, "main.keep", "--limit", "3", "--with-meta", timeout=30)  # inside a chain on the loop
        assert res.returncode == 0 and [e["meta"] for e in _lines(res)] == [{}, {}, {}], res.stderr.decode()
        assert all(e["event"]["id"] % 7 for e in _lines(res))
        # --record: what was tapped becomes a test case that headrace test runs
        case = tmp_path / "c_recorded_test.yaml"
        res = headrace("tap", url, "main.mark", "--limit", "6", "--record", str(case), timeout=30)
        assert res.returncode == 0 and res.stdout == b"" and "6 event(s) recorded" in res.stderr.decode(), res.stderr.decode()
        text = case.read_text()
        assert text.startswith("# Recorded by `headrace tap main.mark/out --record`") and "seen: true" in text, text
    finally:
        d.stop()
    res = headrace("test", str(tmp_path / "c.yaml"), timeout=60)
    assert res.returncode == 0 and "recorded from main.mark/out" in res.stdout.decode(), res.stdout.decode() + res.stderr.decode()


def test_with_a_token_tap_needs_it_from_the_environment_or_a_file(tmp_path: Path, write: Any) -> None:
    secret = "tap-token-abcdefghijklmnop"
    d, port = _daemon(tmp_path, write, workers=0, token=secret)
    try:
        url = f"http://127.0.0.1:{port}"
        res = headrace("tap", url, "src", "--limit", "2", timeout=30, env={"HEADRACE_TOKEN": ""})
        assert res.returncode == 1 and "needs Authorization: Bearer TOKEN" in res.stderr.decode(), res.stderr.decode()
        res = headrace("tap", url, "src", "--limit", "2", timeout=30, env={"HEADRACE_TOKEN": secret})
        assert res.returncode == 0 and len(_lines(res)) == 2, res.stderr.decode()
        token_file = write("token", secret + "\n")
        res = headrace("tap", url, "src", "--limit", "2", "--token-file", str(token_file), timeout=30, env={"HEADRACE_TOKEN": ""})
        assert res.returncode == 0 and len(_lines(res)) == 2, res.stderr.decode()
    finally:
        d.stop()


def test_tap_says_so_when_no_daemon_answers() -> None:
    res = headrace("tap", f"127.0.0.1:{free_port()}", "src", timeout=30)
    assert res.returncode == 1 and "cannot reach a headrace daemon" in res.stderr.decode()
