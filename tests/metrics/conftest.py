"""Daemons shared by the metrics tests (each started once per module, stopped by PID).

- ``counted``: a known input through python + filter stages on 2 workers, read by a
  ``follow: true`` file onramp so the daemon stays up after the last record; the
  fixture waits until the offramps counted everything, so the counts are final.
- ``ticking``: a metronome every 10 ms through a worker stage, for rates.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port, scrape

STAGES = '''
def check(event, meta):
    if event.get("boom"):
        raise ValueError("boom on " + str(event["id"]))
    if event.get("none"):
        return None
    return event
'''


def compact(value: Any) -> str:
    """JSON as the daemon's codec writes it (no spaces), so encoded sizes are known."""
    return json.dumps(value, separators=(",", ":"))


def http(port: int, path: str) -> tuple[int, Any]:
    """(status code, decoded JSON body) of a GET on the admin endpoint."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(daemon: Daemon, predicate: Any, timeout: float = 60) -> Any:
    def safe() -> Any:
        try:
            return predicate()
        except (OSError, KeyError):
            return None

    return daemon.wait_for(safe, timeout=timeout, interval=0.1)


@dataclass
class Counted:
    daemon: Daemon
    port: int
    folder: Path
    good: list[str]  # records that reach the out offramp
    malformed: list[str]  # not JSON: decode failures, to the onramp's err port
    raising: list[str]  # the python stage raises: to its err port
    filtered: list[str]  # the filter drops them
    dropped: list[str]  # the python stage returns None
    file_bytes: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.good) + len(self.malformed) + len(self.raising) + len(self.filtered) + len(self.dropped)


def counted_input() -> tuple[list[str], list[str], list[str], list[str], list[str], list[str]]:
    """Every kind of record interleaved, so each worker chunk holds some of each."""
    good, malformed, raising, filtered, dropped, lines = [], [], [], [], [], []
    for i in range(1200):
        if i % 97 == 5:
            rec = f"not json {i}"
            malformed.append(rec)
        elif i % 41 == 7:
            rec = compact({"id": i, "boom": True})
            raising.append(rec)
        elif i % 13 == 3:
            rec = compact({"id": i, "drop": True})
            filtered.append(rec)
        elif i % 29 == 11:
            rec = compact({"id": i, "none": True})
            dropped.append(rec)
        else:
            rec = compact({"id": i, "msg": "x" * (i % 50)})
            good.append(rec)
        lines.append(rec)
    return good, malformed, raising, filtered, dropped, lines


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Counted]:
    folder = tmp_path_factory.mktemp("counted")
    (folder / "stages.py").write_text(STAGES)
    good, malformed, raising, filtered, dropped, lines = counted_input()
    data = "".join(line + "\n" for line in lines)
    (folder / "in.ndjson").write_text(data)
    port = free_port()
    cfg = folder / "counted.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, codec: json, config: {{path: in.ndjson, follow: true, poll_interval: 50ms}}}}}}
pipelines:
  main:
    - {{op: python, fn: "stages:check"}}
    - {{op: filter, where: "not event.get('drop')"}}
offramps:
  out: {{type: file, codec: json, config: {{path: out.ndjson}}}}
  dlq: {{type: file, codec: json, buffer: {{type: disk}}, config: {{path: dlq.ndjson}}}}  # a disk buffer: its metrics are exposed too
links: {{src: [main], main: [out], main/err: [dlq], src/err: [dlq]}}
""")
    d = Daemon(cfg)
    c = Counted(d, port, folder, good, malformed, raising, filtered, dropped, file_bytes=len(data.encode()))
    try:
        out = 'headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}'
        dlq = 'headrace_component_sent_events_total{component_id="dlq",component_kind="offramp",port="out"}'
        want = len(malformed) + len(raising)
        # offramps count last: once they have everything, every upstream count is final
        wait_until(d, lambda: (m := scrape(port)).get(out) == len(good) and m.get(dlq) == want)
        time.sleep(0.2)
        c.metrics = scrape(port)
        yield c
    finally:
        d.stop()


@dataclass
class Ticking:
    daemon: Daemon
    port: int
    folder: Path


@pytest.fixture(scope="module")
def ticking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ticking]:
    folder = tmp_path_factory.mktemp("ticking")
    (folder / "stages.py").write_text(STAGES)
    port = free_port()
    cfg = folder / "ticking.yaml"
    cfg.write_text(f"""
version: 1
daemon: {{workers: 2, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{tick: {{type: metronome, config: {{interval: 10ms}}}}}}
pipelines: {{main: [{{op: python, fn: "stages:check"}}]}}
offramps: {{out: {{type: file, codec: json, config: {{path: out.ndjson}}}}}}
links: {{tick: [main], main: [out]}}
""")
    d = Daemon(cfg)
    try:
        wait_until(d, lambda: http(port, "/ready")[0] == 200)
        yield Ticking(d, port, folder)
    finally:
        d.stop()
