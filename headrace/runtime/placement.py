"""Placement: which nodes run together as one chain, and where each chain runs.

A maximal run of nodes ``A -> B`` where A's ``out`` goes only to B, B's only input is
A's ``out``, and both may run on workers becomes one chain (one worker segment: decode
-> stages -> encode inside the worker). Loop stages (async, stateful) are chains of
their own, run on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from headrace.config.graph import Graph
from headrace.contract.stage import Operator


@dataclass
class Chain:
    nodes: list[str]
    on_workers: bool

    @property
    def id(self) -> str:
        return self.nodes[0]


def plan_chains(graph: Graph, operators: dict[str, Operator], workers: int) -> list[Chain]:
    def worker_ok(cid: str) -> bool:
        return workers > 0 and operators[cid].placement in ("workers", "any") and not operators[cid].is_async

    inputs: dict[str, list[tuple[str, str]]] = {}
    for (src, port), targets in graph.edges.items():
        for t in targets:
            inputs.setdefault(t, []).append((src, port))
    chains: list[Chain] = []
    placed: set[str] = set()
    for cid, comp in graph.components.items():
        if comp.kind != "node" or cid in placed:
            continue
        on_workers = worker_ok(cid)
        nodes = [cid]
        placed.add(cid)
        cur = cid
        while True:
            targets = graph.edges.get((cur, "out"), [])
            if len(targets) != 1:
                break
            nxt = targets[0]
            if graph.components[nxt].kind != "node" or nxt in placed or inputs.get(nxt) != [(cur, "out")]:
                break
            if worker_ok(nxt) != on_workers or (not on_workers and (operators[nxt].is_async or operators[cur].is_async)):
                break
            nodes.append(nxt)
            placed.add(nxt)
            cur = nxt
        chains.append(Chain(nodes, on_workers))
    return chains
