"""After a known input, the counters equal the known counts (counted in 2 workers)."""

from __future__ import annotations

from tests.metrics.conftest import Counted, http


def key(name: str, **labels: str) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def received(cid: str, kind: str) -> str:
    return key("headrace_component_received_events_total", component_id=cid, component_kind=kind)


def sent(cid: str, kind: str, port: str) -> str:
    return key("headrace_component_sent_events_total", component_id=cid, component_kind=kind, port=port)


def test_events_per_component_and_port(counted: Counted) -> None:
    m, c = counted.metrics, counted
    n_good, n_bad, n_raise = len(c.good), len(c.malformed), len(c.raising)
    n_filtered = len(c.filtered)
    expected = {
        received("src", "onramp"): c.total,
        sent("src", "onramp", "out"): c.total,
        sent("src", "onramp", "err"): n_bad,  # decode failures go to the err port of the onramp they came from
        # the first node of a worker chain receives the records before they are decoded (in the worker)
        received("main.check", "node"): c.total,
        sent("main.check", "node", "out"): n_good + n_filtered,
        sent("main.check", "node", "err"): n_raise,
        received("main.filter", "node"): n_good + n_filtered,
        sent("main.filter", "node", "out"): n_good,
        received("out", "offramp"): n_good,
        sent("out", "offramp", "out"): n_good,
        received("dlq", "offramp"): n_bad + n_raise,
        sent("dlq", "offramp", "out"): n_bad + n_raise,
    }
    got = {k: m.get(k) for k in expected}
    assert got == expected
    # no other port carried anything
    ports = {k for k in m if k.startswith("headrace_component_sent_events_total{")}
    assert ports == {k for k in expected if k.startswith("headrace_component_sent_events_total{")}


def test_errors_and_discards_by_type(counted: Counted) -> None:
    m, c = counted.metrics, counted
    errors = {k: v for k, v in m.items() if k.startswith("headrace_component_errors_total{")}
    assert errors == {
        key("headrace_component_errors_total", component_id="main.check", component_kind="node", error_type="stage_exception"): len(c.raising),
        # records that do not decode count at the onramp they came from (they leave through its err port)
        key("headrace_component_errors_total", component_id="src", component_kind="onramp", error_type="decode"): len(c.malformed),
    }
    discarded = {k: v for k, v in m.items() if k.startswith("headrace_component_discarded_events_total{")}
    assert discarded == {
        key("headrace_component_discarded_events_total", component_id="main.check", reason="dropped"): len(c.dropped),
        key("headrace_component_discarded_events_total", component_id="main.filter", reason="filtered"): len(c.filtered),
    }


def test_bytes_in_at_the_onramp_and_out_at_the_offramps(counted: Counted) -> None:
    m, c = counted.metrics, counted
    records = [*c.good, *c.malformed, *c.raising, *c.filtered, *c.dropped]
    # the onramp reads the file's bytes, and sends the framed records (without newlines)
    assert m[key("headrace_component_received_bytes_total", component_id="src", component_kind="onramp")] == c.file_bytes
    assert m[key("headrace_component_sent_bytes_total", component_id="src", component_kind="onramp")] == sum(len(r) for r in records)
    # an offramp counts the encoded records it wrote (the lines postprocessor adds one newline each)
    out_bytes = m[key("headrace_component_sent_bytes_total", component_id="out", component_kind="offramp")]
    assert out_bytes == sum(len(r) for r in c.good)
    assert m[key("headrace_component_received_bytes_total", component_id="out", component_kind="offramp")] == out_bytes
    assert out_bytes == (c.folder / "out.ndjson").stat().st_size - len(c.good)
    dlq_bytes = m[key("headrace_component_sent_bytes_total", component_id="dlq", component_kind="offramp")]
    assert dlq_bytes == (c.folder / "dlq.ndjson").stat().st_size - len(c.malformed) - len(c.raising)


def test_latency_observed_at_each_offramp(counted: Counted) -> None:
    m = counted.metrics
    for offramp in ("out", "dlq"):
        count = m[key("headrace_event_latency_seconds_count", offramp=offramp)]
        assert count > 0
        assert m[key("headrace_event_latency_seconds_bucket", le="+Inf", offramp=offramp)] == count


def test_status_totals_agree_with_the_scrape(counted: Counted) -> None:
    code, st = http(counted.port, "/status")
    assert code == 200
    comps = st["components"]
    assert comps["src"]["totals"]["events_in"] == counted.total
    assert comps["main.check"]["totals"]["error_types"] == {"stage_exception": len(counted.raising)}
    assert comps["src"]["totals"]["error_types"] == {"decode": len(counted.malformed)}
    assert comps["main.filter"]["totals"]["discard_reasons"] == {"filtered": len(counted.filtered)}
    assert comps["out"]["totals"]["events_out"] == len(counted.good)
    assert comps["dlq"]["totals"]["events_in"] == len(counted.malformed) + len(counted.raising)
    assert st["chains"] == [{"nodes": ["main.check", "main.filter"], "placement": "workers"}]
    assert st["workers"] == 2 and set(st["worker_busy"]) == set(st["worker_occupied"]) == {"0", "1"}
