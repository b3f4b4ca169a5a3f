"""Results of ``headrace test`` and their JUnit XML (``--junit-xml``), the format CI systems read.

One ``<testsuite>`` per config, one ``<testcase>`` per test (``classname`` is the config,
``file``/``line`` where the test is written); a failed test carries a ``<failure>`` with
the report printed on the terminal, an invalid config an ``<error>`` with its messages.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from headrace.config.errors import Position


@dataclass
class CaseResult:
    name: str
    position: Position
    failures: list[str]  # empty: passed
    seconds: float


@dataclass
class SuiteResult:
    config: str  # as given
    cases: list[CaseResult] = field(default_factory=list)
    error: str | None = None  # the config or a test file is invalid
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cases if c.failures)

    @property
    def passed(self) -> int:
        return len(self.cases) - self.failed


def _suite(suite: SuiteResult) -> ET.Element:
    errors = 1 if suite.error else 0
    element = ET.Element("testsuite", name=suite.config, tests=str(len(suite.cases) + errors), failures=str(suite.failed),
                         errors=str(errors), skipped="0", time=f"{suite.seconds:.3f}")  # fmt: skip
    if suite.error is not None:
        case = ET.SubElement(element, "testcase", classname=suite.config, name="(config)", file=suite.config, time="0")
        ET.SubElement(case, "error", message="the config or a test file is invalid", type="ConfigError").text = suite.error
    for c in suite.cases:
        case = ET.SubElement(element, "testcase", classname=suite.config, name=c.name, file=c.position.file,
                             line=str(c.position.line), time=f"{c.seconds:.3f}")  # fmt: skip
        if c.failures:
            ET.SubElement(case, "failure", message=c.failures[0], type="AssertionError").text = "\n".join(c.failures)
    return element


def junit_xml(suites: list[SuiteResult]) -> bytes:
    root = ET.Element("testsuites", name="headrace test", tests=str(sum(len(s.cases) + (1 if s.error else 0) for s in suites)),
                      failures=str(sum(s.failed for s in suites)), errors=str(sum(1 for s in suites if s.error)),
                      time=f"{sum(s.seconds for s in suites):.3f}")  # fmt: skip
    root.extend(_suite(s) for s in suites)
    ET.indent(root)
    text: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return text + b"\n"


def write_junit(path: str, suites: list[SuiteResult]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(junit_xml(suites))
