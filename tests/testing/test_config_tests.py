"""``headrace test CONFIG`` through the real command: passing, failing, invalid tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.daemon import headrace

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
version: 1
onramps: {in: {type: stdin, codec: json}}
pipelines:
  main:
    - {op: filter, where: "event['v'] >= 0"}
    - {op: window, size: 2, aggregates: {total: {fn: sum, field: "event['v']"}}}
offramps: {out: {type: stdout, codec: json}}
links: {in: [main], main: [out]}
tests:
  - name: negative values are filtered before the sums
    inject: [{at: in, events: [{v: 1}, {v: -5}, {v: 2}, {v: 3}]}]
    expect:
      - {at: main.filter/out, count: 3}
      - {at: out, count: 2, where: "event['total'] == 3 and meta['window_events'] in (1, 2)"}
"""


def test_quickstart_tests_pass() -> None:
    res = headrace("test", str(ROOT / "examples" / "quickstart.yaml"))
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    assert out.count("PASS  ") == 3 and "FAIL" not in out
    assert "3 passed, 0 failed" in out


def test_inline_tests_pass(write: Any) -> None:
    cfg = write("c.yaml", CONFIG)
    res = headrace("test", str(cfg))
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert "PASS  negative values are filtered before the sums" in res.stdout.decode()


def test_a_failing_test_prints_a_diff_and_exits_1(write: Any) -> None:
    cfg = write("c.yaml", CONFIG)
    write(
        "c_test.yaml",
        """
tests:
  - name: wrong totals
    inject:
      - at: main
        events: [{v: 1}, {v: 2}, {v: 10}]
    expect:
      - at: out
        events: [{group: null, total: 3}, {group: null, total: 11}]
  - name: right count
    inject: [{at: in, raw: "{\\"v\\": 1}\\nnot json\\n"}]
    expect:
      - {at: in/err, events: ["not json"]}
      - {at: out, count: 1}
""",
    )
    res = headrace("test", str(cfg))
    out = res.stdout.decode()
    assert res.returncode == 1, out + res.stderr.decode()
    assert "PASS  negative values are filtered before the sums" in out and "PASS  right count" in out
    assert f"FAIL  wrong totals  ({cfg.parent / 'c_test.yaml'}:3:11)" in out
    assert "expect[0] at out: events differ (2 expected, 2 arrived):" in out
    assert "--- expected" in out and "+++ actual" in out
    assert '-    "total": 11' in out and '+    "total": 10,' in out  # the second window holds only the 10
    assert '+    "window_start": ' in out
    assert "2 passed, 1 failed" in out


def test_where_and_count_failures_name_the_events(write: Any) -> None:
    cfg = write("c.yaml", CONFIG)
    write(
        "c_more_test.yaml",
        """
tests:
  - name: impossible
    inject: [{at: in, events: [{v: 4}, {v: 5}]}]
    expect: [{at: out, count: 3, where: "event['total'] < 0"}]
""",
    )
    res = headrace("test", str(cfg))
    out = res.stdout.decode()
    assert res.returncode == 1
    assert "expect[0] at out: expected 3 event(s), got 1" in out
    assert "where \"event['total'] < 0\" does not hold for 1 of 1 event(s):" in out
    assert 'false for event {"group": null, "total": 9' in out


def test_invalid_tests_exit_78_with_positions(write: Any) -> None:
    cfg = write("c.yaml", CONFIG)
    write(
        "c_test.yaml",
        """
tests:
  - name: broken
    inject:
      - {at: nowhere, events: [1]}
      - {at: main.filter, raw: "x"}
    expect:
      - {at: main/nope, count: 1}
      - {at: out, where: "event['v'] +"}
  - name: empty
    inject: [{at: in}]
    expect: [{at: out, count: -1}]
""",
    )
    res = headrace("test", str(cfg))
    err = res.stderr.decode()
    assert res.returncode == 78, res.stdout.decode() + err
    test_file = cfg.parent / "c_test.yaml"
    assert f"{test_file}:11:14: tests.1.inject.0: give either events or raw" in err
    assert f"{test_file}:12:31: tests.1.expect.0.count: Input should be greater than or equal to 0" in err
    cfg2 = write("d.yaml", CONFIG)
    write(
        "d_test.yaml",
        """
tests:
  - name: broken
    inject:
      - {at: nowhere, events: [1]}
      - {at: main.filter, raw: "x"}
    expect:
      - {at: main/nope, count: 1}
      - {at: out, where: "event['v'] +"}
""",
    )
    res = headrace("test", str(cfg2))
    err = res.stderr.decode()
    assert res.returncode == 78, err
    test_file = cfg2.parent / "d_test.yaml"
    assert f"{test_file}:5:14: cannot inject at 'nowhere'" in err
    assert f"{test_file}:6:27: raw data can only be injected at an onramp" in err
    assert f"{test_file}:8:14: pipeline 'main' has no port 'nope' (ports: err, out)" in err
    assert f"{test_file}:9:26: where: invalid expression" in err


def test_bad_config_exits_78_and_no_tests_exits_1(write: Any) -> None:
    cfg = write("c.yaml", CONFIG.replace("op: filter", "op: filtre"))
    res = headrace("test", str(cfg))
    assert res.returncode == 78 and "unknown operator 'filtre'" in res.stderr.decode()
    bare = write("bare.yaml", CONFIG.split("tests:")[0])
    res = headrace("test", str(bare))
    assert res.returncode == 1 and "no tests" in res.stderr.decode()


ENCODING = """
version: 1
onramps: {in: {type: stdin, codec: json}}
offramps:
  out: {type: stdout, codec: csv}
  dlq: {type: stdout, codec: json, with_meta: true}
links: {in: [out], out/err: [dlq]}
tests:
  - name: what the offramp's codec cannot write goes to its err port, as in run
    inject:
      - {at: in, events: [{a: 1}, [x, 2]], meta: {kafka_key: !!binary "/wA=", kafka_headers: {h: !!binary "aGk="}}}
    expect:
      - {at: out, events: [[x, 2]]}
      - {at: dlq, count: 1, where: "event == {'a': 1} and 'needs a header' in meta['error']['message']"}
"""


def test_offramps_encode_as_in_run(write: Any) -> None:
    """Issue 12 item 1: `headrace test` captured what reached an offramp without encoding it, so an
    event its codec cannot write passed the test and was refused in `headrace run`."""
    cfg = write("c.yaml", ENCODING)
    res = headrace("test", str(cfg))
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_an_offramps_err_port_can_be_observed(write: Any) -> None:
    unlinked = ENCODING.replace("  dlq: {type: stdout, codec: json, with_meta: true}\n", "").replace(", out/err: [dlq]", "")
    cfg = write("c.yaml", unlinked.replace("{at: dlq, count: 1,", "{at: out/err, count: 1,"))
    res = headrace("test", str(cfg))
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    res = headrace("test", str(write("d.yaml", ENCODING.replace("{at: dlq, count: 1,", "{at: dlq/out, count: 1,"))))
    assert res.returncode == 78 and "offramp 'dlq' has one port, err" in res.stderr.decode()
