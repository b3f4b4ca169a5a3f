"""Config unit tests: their typed model, where they come from, and what their ``at`` names.

Tests live in the config's top-level ``tests:`` list, or in ``<config>_test.yaml`` /
``<config>_<anything>_test.yaml`` beside the config (a mapping with one key, ``tests``).
Every problem is reported as ``file:line:col: message`` before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from headrace.config.errors import ConfigError, ConfigIssue, Position, did_you_mean
from headrace.config.graph import Graph
from headrace.config.validate import validate_model
from headrace.config.yamlpos import SourceMap, load_yaml
from headrace.contract.expr import ExpressionError, compile_expr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Injection(_Strict):
    at: str = Field(description="an onramp (records go through its codec), a pipeline (its in port) or a node, pipeline.node")
    events: list[Any] | None = Field(None, description="event values, one batch")
    raw: str | list[str] | None = Field(None, description="onramps only: data as read, framed by the preprocessors and decoded later")
    meta: dict[str, Any] = Field(default_factory=dict, description="meta of every injected event")

    @model_validator(mode="after")
    def _one(self) -> Injection:
        if (self.events is None) == (self.raw is None):
            raise ValueError("give either events or raw")
        return self


class Expectation(_Strict):
    at: str = Field(description="an offramp (what it writes) or offramp/err, or component/port: pipeline/port, pipeline.node/port, onramp/err "
                    "(port default out)")
    events: list[Any] | None = Field(None, description="exactly these event values, in order")
    count: int | None = Field(None, ge=0, description="exactly this many events")
    where: str | None = Field(None, description="expression over event and meta that must hold for every event")

    @model_validator(mode="after")
    def _some(self) -> Expectation:
        if self.events is None and self.count is None and self.where is None:
            raise ValueError("give events, count or where")
        return self


class Case(_Strict):
    name: str = Field(min_length=1, description="what the test shows")
    inject: list[Injection] = Field(min_length=1, description="batches injected in order")
    expect: list[Expectation] = Field(min_length=1, description="what must have arrived once everything drained")


class CaseFile(_Strict):
    tests: list[Case] = Field(description="the tests")


Kind = Literal["onramp", "pipeline", "node", "offramp"]


@dataclass(frozen=True)
class Point:
    """A resolved ``at``: the component kind and id, and the port (None for an offramp or an injection)."""

    kind: Kind
    id: str
    port: str | None = None

    def __str__(self) -> str:
        return self.id if self.port is None else f"{self.id}/{self.port}"


@dataclass
class LoadedCase:
    case: Case
    position: Position
    injections: list[Point]
    expectations: list[Point]


def case_files(config: Path) -> list[Path]:
    """The test files that belong to ``config``: ``<stem>_test.yaml`` and ``<stem>_*_test.yaml`` beside it."""
    stem = config.stem
    found = {*config.parent.glob(f"{stem}_test.yaml"), *config.parent.glob(f"{stem}_*_test.yaml")}
    return sorted(p for p in found if p.is_file())


def pipeline_ports(graph: Graph) -> dict[str, set[str]]:
    """Each pipeline's output ports: out, err, and the named ports its list stages expose."""
    pipes = graph.raw.get("pipelines") or {}
    ports: dict[str, set[str]] = {p: {"out", "err"} for p in pipes}
    for comp in graph.of_kind("node"):
        if comp.pipeline in ports and isinstance(pipes[comp.pipeline], list):
            ports[comp.pipeline].update(comp.ports[2:])
    return ports


class _Resolver:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.kinds = {c.id: c.kind for c in graph.components.values()}
        self.pipes = pipeline_ports(graph)

    def injection(self, at: str) -> Point | str:
        kind = self.kinds.get(at)
        if kind == "onramp" or kind == "node":
            return Point(kind, at)
        if at in self.pipes:
            return Point("pipeline", at)
        known = self.known(("onramp", "node"))
        return f"cannot inject at '{at}'{did_you_mean(at, known)}: not an onramp, pipeline or node (known: {', '.join(known)})"

    def expectation(self, at: str) -> Point | str:
        cid, _, port = at.partition("/")
        kind = self.kinds.get(cid)
        if kind == "offramp":  # what it writes, or its err port (records it refused or could not encode)
            if port in ("", "err"):
                return Point("offramp", cid, port or None)
            return f"offramp '{cid}' has one port, err: expect at '{cid}' (what it writes) or '{cid}/err'"
        if kind == "onramp" or kind == "node":
            ports = self.graph.components[cid].ports or ("out", "err")
            if (port or "out") not in ports:
                return f"{kind} '{cid}' has no port '{port}'{did_you_mean(port, ports)} (ports: {', '.join(ports)})"
            return Point(kind, cid, port or "out")
        if cid in self.pipes:
            if (port or "out") not in self.pipes[cid]:
                names = sorted(self.pipes[cid])
                return f"pipeline '{cid}' has no port '{port}'{did_you_mean(port, names)} (ports: {', '.join(names)})"
            return Point("pipeline", cid, port or "out")
        known = self.known(("offramp", "node", "onramp"))
        return f"nothing to observe at '{at}'{did_you_mean(cid, known)} (known: {', '.join(known)})"

    def known(self, kinds: tuple[str, ...]) -> list[str]:
        return sorted([c for c, k in self.kinds.items() if k in kinds] + list(self.pipes))


def _cases(data: Any, path: tuple[str | int, ...], smap: SourceMap, resolver: _Resolver) -> tuple[list[LoadedCase], list[ConfigIssue]]:
    parsed, issues = validate_model(CaseFile, {"tests": data}, path[:-1], smap)
    if parsed is None:
        return [], issues
    out: list[LoadedCase] = []
    for i, case in enumerate(parsed.tests):
        cpath = (*path, i)
        injections: list[Point] = []
        for j, inj in enumerate(case.inject):
            point = resolver.injection(inj.at)
            if isinstance(point, str):
                issues.append(ConfigIssue(smap.at((*cpath, "inject", j, "at")), point))
            elif inj.raw is not None and point.kind != "onramp":
                issues.append(ConfigIssue(smap.at((*cpath, "inject", j, "raw"), key=True), "raw data can only be injected at an onramp"))
            else:
                injections.append(point)
        expectations: list[Point] = []
        for j, exp in enumerate(case.expect):
            point = resolver.expectation(exp.at)
            if isinstance(point, str):
                issues.append(ConfigIssue(smap.at((*cpath, "expect", j, "at")), point))
            else:
                expectations.append(point)
            if exp.where is not None:
                try:
                    compile_expr(exp.where)
                except ExpressionError as exc:
                    issues.append(ConfigIssue(smap.at((*cpath, "expect", j, "where")), f"where: {exc}"))
        out.append(LoadedCase(case, smap.at((*cpath, "name")), injections, expectations))
    return out, issues


def load_cases(graph: Graph, shown_dir: Path | None = None) -> list[LoadedCase]:
    """Every test of the config, checked against its graph; raises ConfigError with positions.
    ``shown_dir``: the config's folder as the user named it (messages name files under it)."""
    resolver = _Resolver(graph)
    cases: list[LoadedCase] = []
    issues: list[ConfigIssue] = []

    def shown(file: Path) -> str:
        return str(file if shown_dir is None else shown_dir / file.name)

    if graph.tests:
        _, smap = load_yaml(graph.file.read_text(encoding="utf-8"), shown(graph.file))
        found, problems = _cases(graph.tests, ("tests",), smap, resolver)
        cases += found
        issues += problems
    for file in case_files(graph.file):
        try:
            data, smap = load_yaml(file.read_text(encoding="utf-8"), shown(file))
        except ConfigError as exc:
            issues += exc.issues
            continue
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(ConfigIssue(Position(shown(file), 1, 1), f"cannot read test file: {exc}"))
            continue
        if not isinstance(data, dict) or set(data) != {"tests"}:
            issues.append(ConfigIssue(smap.at(()), "a test file is a mapping with one key, tests: a list of tests"))
            continue
        found, problems = _cases(data["tests"], ("tests",), smap, resolver)
        cases += found
        issues += problems
    seen: dict[str, Position] = {}
    for lc in cases:
        if lc.case.name in seen:
            issues.append(ConfigIssue(lc.position, f"duplicate test name '{lc.case.name}' (first at {seen[lc.case.name]})"))
        seen.setdefault(lc.case.name, lc.position)
    if issues:
        raise ConfigError(issues)
    return cases


REFERENCE = """\
# Config tests reference (`tests:`)

Generated from `headrace/testing/cases.py` (`make docs`). `headrace test` runs them
([cli.md](../cli.md#headrace-test)); `headrace schema --for tests` is their JSON Schema.

Tests live in the config's top-level `tests:` list, or in files beside the config named
`<config>_test.yaml` or `<config>_<anything>_test.yaml` (a mapping with one key, `tests`).
Each test builds the config's graph in the process, with no onramp or offramp started:
its `inject` batches go in where they say, the graph drains (the end of input flushes
windows and batches), then each `expect` is checked against what arrived at its point.
Python stages run as in `run`, and what reaches an offramp is encoded by its codec, so a
record the codec cannot write goes to the offramp's `err` port as it would in `run`.

```yaml
# quickstart_test.yaml, beside quickstart.yaml
tests:
  - name: errors are routed to the errors offramp
    inject:
      - at: logs                     # an onramp: events go through its codec
        events: [{level: error, host: db-1.example, msg: "connection reset"}]
      - at: logs                     # raw data, framed by its preprocessors and decoded
        raw: "not JSON\\n"
    expect:
      - at: errors                   # an offramp: what it writes
        count: 1
        where: "meta['class'] == 'error'"
      - at: logs/err                 # a port: component/port
        events: ["not JSON"]
```

## Where `at` points

| in | `at` | what it is |
| --- | --- | --- |
| `inject` | `ONRAMP` | events (or `raw` data) as read by the onramp, through its codec (and preprocessors for `raw`) |
| `inject` | `PIPELINE` | events into the pipeline's `in` |
| `inject` | `PIPELINE.NODE` | events into one node |
| `expect` | `OFFRAMP` | what the offramp writes (encoded by its codec, then decoded for the comparison) |
| `expect` | `OFFRAMP/err` | what the offramp refused (its codec could not encode it) |
| `expect` | `PIPELINE[/PORT]`, `PIPELINE.NODE[/PORT]`, `ONRAMP[/PORT]` | what leaves that port (default `out`): `err`, a route's names, `overflow` ... |

Nodes are named as in metrics and logs: the `id:` of a stage, or its function's name
(python) or operator ([config reference](config.md#a-pipeline-pipelinesid)). `headrace graph` draws them.

## A test file

@CASE_FILE@
## A test (`tests: [...]`)

@CASE@
## An injection (`inject: [...]`)

@INJECTION@
## An expectation (`expect: [...]`)

@EXPECTATION@
An expectation holds when all of `events`, `count` and `where` that it gives hold. A failed
`events` prints a diff of the pretty JSON; a failed `where` names the first events it does
not hold for. `headrace test` exits 0 when every test passed, 1 when one failed (or none
ran), 78 when the config or a test file is invalid (with `file:line:col` messages).
"""


def reference_markdown() -> str:
    """docs/reference/tests.md: the format of config tests, from the models above."""
    from headrace.docs import model_table

    text = REFERENCE
    for mark, model in (("@CASE_FILE@", CaseFile), ("@CASE@", Case), ("@INJECTION@", Injection), ("@EXPECTATION@", Expectation)):
        text = text.replace(mark, model_table(model))
    return text
