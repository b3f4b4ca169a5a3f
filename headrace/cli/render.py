"""Text renderings of a graph: Graphviz dot and Mermaid."""

from __future__ import annotations

from headrace.config.graph import Graph


def _label(g: Graph, cid: str) -> str:
    c = g.components[cid]
    name = cid.split(".", 1)[1] if c.pipeline else cid
    return f"{name}\\n({c.plugin})" if c.kind != "node" else f"{name}\\n[{c.plugin}]"


def to_dot(g: Graph) -> str:
    lines = ["digraph headrace {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    pipelines: dict[str, list[str]] = {}
    for cid, c in g.components.items():
        if c.kind == "node":
            pipelines.setdefault(c.pipeline or "", []).append(cid)
        else:
            shape = "cds" if c.kind == "onramp" else "box3d"
            lines.append(f'  "{cid}" [label="{_label(g, cid)}", shape={shape}];')
    for pipe, nodes in pipelines.items():
        lines.append(f'  subgraph "cluster_{pipe}" {{')
        lines.append(f'    label="pipeline {pipe}";')
        for cid in nodes:
            lines.append(f'    "{cid}" [label="{_label(g, cid)}", shape=box, style=rounded];')
        lines.append("  }")
    for (src, port), targets in g.edges.items():
        for t in targets:
            attrs = f' [label="{port}"{", color=red, style=dashed" if port == "err" else ""}]' if port != "out" else ""
            lines.append(f'  "{src}" -> "{t}"{attrs};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(g: Graph) -> str:
    ids = {cid: f"n{i}" for i, cid in enumerate(g.components)}
    lines = ["flowchart LR"]
    pipelines: dict[str, list[str]] = {}
    for cid, c in g.components.items():
        label = _label(g, cid).replace("\\n", "<br/>")
        if c.kind == "node":
            pipelines.setdefault(c.pipeline or "", []).append(cid)
        elif c.kind == "onramp":
            lines.append(f'  {ids[cid]}[/"{label}"/]')
        else:
            lines.append(f'  {ids[cid]}[["{label}"]]')
    for pipe, nodes in pipelines.items():
        lines.append(f'  subgraph {pipe}["pipeline {pipe}"]')
        for cid in nodes:
            lines.append(f'    {ids[cid]}("{_label(g, cid).replace(chr(92) + "n", "<br/>")}")')
        lines.append("  end")
    for (src, port), targets in g.edges.items():
        for t in targets:
            arrow = f"-.->|{port}|" if port == "err" else (f"-->|{port}|" if port != "out" else "-->")
            lines.append(f"  {ids[src]} {arrow} {ids[t]}")
    return "\n".join(lines) + "\n"
