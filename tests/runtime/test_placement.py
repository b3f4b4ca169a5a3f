"""Placement (``plan_chains``): which nodes run together as one chain, and where each chain runs.
Pure logic: a config is loaded and planned, nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from headrace import registry
from headrace.config.graph import Graph
from headrace.config.load import load_text
from headrace.contract.context import PluginContext
from headrace.contract.stage import Operator
from headrace.runtime.placement import plan_chains

STAGES = """
def cpu(event, meta):
    return event

async def io(event, meta):
    return event
"""

CPU = '{op: python, fn: "stages:cpu"}'
IO = '{op: python, fn: "stages:io"}'


def plan(tmp_path: Path, pipelines: str, workers: int = 2, links: str = "src: [main], main: [out]") -> list[tuple[list[str], bool]]:
    (tmp_path / "stages.py").write_text(STAGES)
    graph = load_text(f"""
version: 1
onramps: {{src: {{type: stdin}}}}
pipelines:
{pipelines}
offramps: {{out: {{type: stdout}}}}
links: {{{links}}}
""", tmp_path / "c.yaml")  # fmt: skip
    return [(ch.nodes, ch.on_workers) for ch in plan_chains(graph, operators(graph), workers)]


def operators(graph: Graph) -> dict[str, Operator]:
    return {c.id: registry.load("operators", c.plugin)(c.id, c.config, PluginContext(c.id, graph.base_dir)) for c in graph.of_kind("node")}


def test_a_linear_pipeline_of_cpu_stages_is_one_worker_segment(tmp_path: Path) -> None:
    got = plan(tmp_path, f"  main: [{CPU}, {{op: filter, where: 'True'}}, {{op: set, set: {{x: '1'}}}}, {CPU}]")
    assert got == [(["main.cpu", "main.filter", "main.set", "main.cpu_2"], True)]


def test_without_workers_the_same_chain_runs_on_the_loop(tmp_path: Path) -> None:
    got = plan(tmp_path, f"  main: [{CPU}, {{op: filter, where: 'True'}}, {CPU}]", workers=0)
    assert got == [(["main.cpu", "main.filter", "main.cpu_2"], False)]


def test_a_loop_stage_splits_the_chain_around_it(tmp_path: Path) -> None:
    got = plan(tmp_path, f"  main: [{CPU}, {CPU}, {{op: batch, count: 10}}, {{op: dedupe, key: \"event['id']\"}}, {CPU}]")
    assert got == [(["main.cpu", "main.cpu_2"], True), (["main.batch", "main.dedupe"], False), (["main.cpu_3"], True)]


def test_an_async_stage_is_a_loop_chain_of_its_own(tmp_path: Path) -> None:
    """Loop stages chain together, but never with an async one: its events are in flight while the next batch comes."""
    got = plan(tmp_path, f"  main: [{{op: batch, count: 10}}, {IO}, {IO}, {{op: sample, rate: 2}}, {CPU}]")
    assert got == [(["main.batch"], False), (["main.io"], False), (["main.io_2"], False), (["main.sample"], False),
                   (["main.cpu"], True)]  # fmt: skip


def test_placement_loop_keeps_a_cpu_stage_off_the_workers(tmp_path: Path) -> None:
    got = plan(tmp_path, f'  main: [{CPU}, {{op: python, fn: "stages:cpu", placement: loop}}, {CPU}]')
    assert got == [(["main.cpu"], True), (["main.cpu_2"], False), (["main.cpu_3"], True)]


GRAPH = """  main:
    nodes:
      a: {op: python, fn: "stages:cpu"}
      b: {op: python, fn: "stages:cpu"}
      c: {op: python, fn: "stages:cpu"}
      d: {op: python, fn: "stages:cpu"}
    links: {in: [a], %s}
"""


@pytest.mark.parametrize(("links", "chains"), [
    pytest.param("a: [b], b: [c], c: [d], d: [out]", [["main.a", "main.b", "main.c", "main.d"]], id="a line"),
    pytest.param("a: [b, c], b: [d], c: [out], d: [out]", [["main.a"], ["main.b", "main.d"], ["main.c"]], id="fan-out ends a chain"),
    pytest.param("a: [b, c], b: [d], c: [d], d: [out]", [["main.a"], ["main.b"], ["main.c"], ["main.d"]], id="fan-in starts one"),
    pytest.param("a: [b], a/err: [c], b: [out], c: [d], d: [out]", [["main.a", "main.b"], ["main.c", "main.d"]],
                 id="an err port is no chain link"),
    pytest.param("a: [b], b: [c, d], c: [out], d: [out]", [["main.a", "main.b"], ["main.c"], ["main.d"]], id="fan-out after a line"),
])  # fmt: skip
def test_chains_follow_single_out_links_only(tmp_path: Path, links: str, chains: list[list[str]]) -> None:
    got = plan(tmp_path, GRAPH % links)
    assert sorted(nodes for nodes, _ in got) == sorted(chains)
    assert all(on_workers for _, on_workers in got)


def test_a_pipeline_feeding_another_continues_the_chain(tmp_path: Path) -> None:
    """Pipelines are inlined: the chain runs across the link between them when nothing else joins it."""
    got = plan(tmp_path, f"  main: [{CPU}]\n  next: [{CPU}]", links="src: [main], main: [next], next: [out]")
    assert got == [(["main.cpu", "next.cpu"], True)]
    got = plan(tmp_path, f"  main: [{CPU}]\n  next: [{CPU}]", links="src: [main, next], main: [next], next: [out]")
    assert sorted(nodes for nodes, _ in got) == [["main.cpu"], ["next.cpu"]], "next has two inputs"


def test_a_route_stage_ends_the_chain_its_ports_feed(tmp_path: Path) -> None:
    got = plan(tmp_path, """  main:
    nodes:
      r: {op: route, routes: {a: "event['x'] == 1"}}
      s: {op: python, fn: "stages:cpu"}
    links: {in: [r], r/a: [s], s: [out]}
""")  # fmt: skip
    assert sorted(nodes for nodes, _ in got) == [["main.r"], ["main.s"]]
