"""``headrace test`` options through the real command: --name, --junit-xml, folders searched recursively."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from tests.support.daemon import headrace

CONFIG = """\
version: 1
onramps: {in: {type: stdin, codec: json}}
pipelines: {main: [{op: filter, where: "event['v'] >= 0"}]}
offramps: {out: {type: stdout, codec: json}}
links: {in: [main], main: [out]}
"""
TESTS = """\
tests:
  - name: negative values are dropped
    inject: [{at: in, events: [{v: 1}, {v: -1}]}]
    expect: [{at: out, events: [{v: 1}]}]
  - name: zero passes
    inject: [{at: in, events: [{v: 0}]}]
    expect: [{at: out, count: 1}]
  - name: a wrong expectation
    inject: [{at: in, events: [{v: 2}]}]
    expect: [{at: out, count: 2}]
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_name_selects_tests_by_text_or_pattern(tmp_path: Path) -> None:
    write(tmp_path, "c.yaml", CONFIG)
    write(tmp_path, "c_test.yaml", TESTS)
    r = headrace("test", "c.yaml", "--name", "zero", "--name", "negative*", cwd=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert out.splitlines() == [
        "c.yaml: 3 test(s) from c_test.yaml (2 selected by --name)",
        "PASS  negative values are dropped",
        "PASS  zero passes",
        "2 passed, 0 failed",
    ]
    r = headrace("test", "c.yaml", "--name", "nothing like it", cwd=tmp_path)
    assert r.returncode == 1 and "no test name matches 'nothing like it'" in r.stderr.decode()


def test_junit_xml(tmp_path: Path) -> None:
    write(tmp_path, "c.yaml", CONFIG)
    write(tmp_path, "c_test.yaml", TESTS)
    write(tmp_path, "bad.yaml", CONFIG.replace("op: filter", "op: filtr") + "tests: [{name: x, inject: [{at: in, events: [1]}], expect: [{at: out, count: 1}]}]\n")
    r = headrace("test", "c.yaml", "bad.yaml", "--junit-xml", "reports/junit.xml", cwd=tmp_path)
    assert r.returncode == 78  # an invalid config outranks a failed test
    root = ET.parse(tmp_path / "reports" / "junit.xml").getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("4", "1", "1")
    good, bad = root.findall("testsuite")
    assert (good.get("name"), good.get("tests"), good.get("failures")) == ("c.yaml", "3", "1")
    cases = good.findall("testcase")
    assert [c.get("name") for c in cases] == ["negative values are dropped", "zero passes", "a wrong expectation"]
    assert all(c.get("classname") == "c.yaml" and c.get("file") == "c_test.yaml" for c in cases)
    assert [c.get("line") for c in cases] == ["2", "5", "8"]
    failure = cases[2].find("failure")
    assert failure is not None and failure.get("message") == "expect[0] at out: expected 2 event(s), got 1"
    assert cases[0].find("failure") is None
    (error,) = bad.iter("error")
    assert "unknown operator 'filtr'" in (error.text or "")


def test_a_folder_is_searched_recursively(tmp_path: Path) -> None:
    write(tmp_path, "pipelines/a/c.yaml", CONFIG)
    write(tmp_path, "pipelines/a/c_test.yaml", TESTS.split("  - name: a wrong")[0])
    write(tmp_path, "pipelines/b/inline.yaml", CONFIG + TESTS.split("  - name: zero")[0].replace("tests:\n", "tests:\n"))
    write(tmp_path, "pipelines/b/no_tests.yaml", CONFIG)  # not a test target: left out, not "no tests"
    write(tmp_path, "pipelines/.hidden/h.yaml", CONFIG)
    write(tmp_path, "pipelines/.hidden/h_test.yaml", TESTS)
    write(tmp_path, "pipelines/notes.yaml", "just: yaml\n")
    r = headrace("test", "pipelines", cwd=tmp_path)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "pipelines/a/c.yaml: 2 test(s) from c_test.yaml" in out
    assert "pipelines/b/inline.yaml: 1 test(s) from the config" in out
    assert out.splitlines()[-1] == "total: 3 passed, 0 failed in 2 config(s)"
    assert "h.yaml" not in out and "no_tests" not in out + r.stderr.decode()
    r = headrace("test", "pipelines/b", "--name", "nothing", cwd=tmp_path)
    assert r.returncode == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = headrace("test", "empty", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.decode() == "no config with tests under empty\n"
