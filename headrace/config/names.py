"""Names of the stages of a list pipeline, stable when stages are inserted, removed or moved.

A stage is named by its ``id:``, else after what it runs: a python stage after its
function (``fn: "stages:classify"`` -> ``classify``), any other after its operator
(``filter``). Only a name used twice gets a suffix (``filter``, ``filter_2``, ...), so
inserting a different stage renames none of the others; explicit ids are served first.
"""

from __future__ import annotations

from typing import Any

RESERVED = ("in", "out", "err")  # the ports of a pipeline


def usable(name: str) -> bool:
    """Whether ``name`` can name a node: ids become ``pipeline.node`` and links ``node/port``."""
    return bool(name) and "." not in name and "/" not in name and name not in RESERVED


def _base(item: Any) -> str:
    if not isinstance(item, dict):
        return "node"
    op, fn = item.get("op"), item.get("fn")
    if op == "python" and isinstance(fn, str) and usable(fn.rpartition(":")[2]):
        return fn.rpartition(":")[2]
    return str(op) if isinstance(op, str) and usable(op) else "node"


def list_node_ids(items: list[Any]) -> tuple[list[str | None], list[tuple[int, str]]]:
    """Each stage's name (None for one whose ``id:`` is refused), and ``(index, why)`` for each refused ``id:``."""
    ids: list[str | None] = [None] * len(items)
    problems: list[tuple[int, str]] = []
    explicit: set[str] = set()
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and "id" in item):
            continue
        nid = str(item["id"])
        if nid in explicit:
            problems.append((i, f"duplicate node id '{nid}'"))
        elif not usable(nid):
            problems.append((i, f"node id '{nid}' is reserved or contains '.' or '/'"))
        else:
            explicit.add(nid)
            ids[i] = nid
    taken = explicit | set(RESERVED)
    for i, item in enumerate(items):
        if isinstance(item, dict) and "id" in item:
            continue
        base = name = _base(item)
        n = 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        ids[i] = name
    return ids, problems


REFERENCE = """\
## a pipeline (`pipelines.<id>:`)

A pipeline is a list of stages (a chain: `in` -> first -> ... -> last -> `out`), or a
graph: `{nodes: {<node id>: <stage>, ...}, links: {<node>[/<port>] or in: [<node>, out, err, ...]}}`.
A stage is a mapping with `op:` (the operator, see Components) and the operator's settings
beside it (`{op: filter, where: "..."}`). In a list, `id:` names the stage; in a graph, its
key does. Every node has the ports `out` and `err`; some have more (a route's names,
`overflow`). In a list pipeline those extra ports are the pipeline's (`main/errors`).

| key | where | what |
| --- | --- | --- |
| `op` | every stage | the operator: `python`, `filter`, `route`, ... (`headrace plugins`) |
| `id` | a stage in a list | its name; default: the function's name for `op: python` (`fn: "stages:classify"` -> `classify`), else the operator (`filter`); a name used twice gets `_2`, `_3` ... in order. No `.` or `/`; not `in`, `out` or `err` |

Nodes are `<pipeline>.<name>` in metrics (`component_id`), logs, `meta.error.stage`, the
last-resort files, `/status`, `headrace graph` and config tests (`at: main.classify/out`).
Because a default name comes from what the stage runs, not from its position, inserting
or removing a stage renames none of the others; give `id:` to stages that run the same
thing (two `filter`s), or to keep a name when you change the function.
"""
