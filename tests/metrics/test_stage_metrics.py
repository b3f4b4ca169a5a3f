"""Metrics from stages (``headrace.metric``): updates on workers and on the loop reach ``/metrics``
summed over processes, with the stage's component_id; ``/status`` lists them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, free_port, scrape

STAGES = '''
import headrace

ORDERS = {k: headrace.metric.counter("orders_total", labels={"kind": k}, help="orders seen") for k in ("even", "odd")}
SIZE = headrace.metric.histogram("order_size", buckets=(10, 100))
LAST = headrace.metric.gauge("last_id")


def count(event, meta):
    ORDERS["even" if event["id"] % 2 == 0 else "odd"].inc()
    SIZE.observe(event["id"] % 150)
    return event


async def tally(event, meta):
    headrace.metric.counter("seen_on_loop_total").inc(2)
    headrace.metric.gauge("inflight").inc()
    headrace.metric.gauge("inflight").dec()
    return event
'''


def test_counts_from_two_workers_and_the_loop_add_up(tmp_path: Path, write: Any) -> None:
    n = 3000
    write("metricstages.py", STAGES)
    write("in.ndjson", "".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    port = free_port()
    cfg = write("c.yaml", f"""
version: 1
daemon: {{workers: 2, batch_size: 50, metrics: {{listen: "127.0.0.1:{port}"}}}}
onramps: {{src: {{type: file, config: {{path: in.ndjson, follow: true, poll_interval: 20ms}}}}}}
pipelines: {{main: [{{op: python, fn: "metricstages:count"}}, {{op: python, fn: "metricstages:tally"}}]}}
offramps: {{out: {{type: blackhole}}}}
links: {{src: [main], main: [out]}}
""")
    sent = 'headrace_component_sent_events_total{component_id="out",component_kind="offramp",port="out"}'
    d = Daemon(cfg)
    try:
        d.wait_for(lambda: _get(port).get(sent, 0) >= n, timeout=60)
        m = scrape(port)
        from tests.reliability.harness import status

        listed = status(port)["stage_metrics"]
    finally:
        d.stop()
    assert m['orders_total{component_id="main.count",kind="even"}'] == n / 2
    assert m['orders_total{component_id="main.count",kind="odd"}'] == n / 2
    assert m['order_size_count{component_id="main.count"}'] == n
    below_10 = sum(1 for i in range(n) if i % 150 <= 10)
    assert m['order_size_bucket{component_id="main.count",le="10"}'] == below_10
    assert m['order_size_bucket{component_id="main.count",le="+Inf"}'] == n
    assert m['order_size_sum{component_id="main.count"}'] == sum(i % 150 for i in range(n))
    assert m['seen_on_loop_total{component_id="main.tally"}'] == 2 * n
    assert m['inflight{component_id="main.tally"}'] == 0
    assert listed["orders_total"] == {"type": "counter", "labels": ["component_id", "kind"], "help": "orders seen"}
    assert set(listed) == {"orders_total", "order_size", "last_id", "seen_on_loop_total", "inflight"}


def _get(port: int) -> dict[str, float]:
    try:
        return scrape(port)
    except OSError:
        return {}


@pytest.mark.parametrize(("call", "error"), [
    ("headrace.metric.counter('headrace_x')", "not starting with headrace_"),
    ("headrace.metric.counter('a b')", "use [a-zA-Z_:]"),
    ("headrace.metric.counter('c', labels={'component_id': 1})", "label name 'component_id' is not allowed"),
    ("(headrace.metric.counter('twice'), headrace.metric.gauge('twice'))", "was declared as a counter"),
    ("headrace.metric.counter('up').inc(-1)", "can only go up"),
])  # fmt: skip
def test_bad_declarations_fail_loudly(call: str, error: str) -> None:
    import headrace

    with pytest.raises(ValueError, match=error.replace("[", r"\[")):
        eval(call, {"headrace": headrace})
