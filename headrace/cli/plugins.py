"""``headrace plugins``: the onramps, offramps, codecs, processors and operators installed, or one plugin's settings."""

from __future__ import annotations

import json
import sys
from typing import Any

from headrace import registry
from headrace.config.errors import did_you_mean

EX_NO_PLUGIN = 1


def _load(kind: registry.Kind, name: str) -> tuple[Any, str]:
    """The plugin class (None when it cannot be loaded) and its summary, or why it cannot be loaded."""
    try:
        cls = registry.load(kind, name)
    except Exception as exc:  # a broken third-party plugin must not hide the others
        return None, f"(cannot load: {exc.__cause__ or exc})"
    return cls, getattr(cls, "summary", "")


def listing() -> list[dict[str, Any]]:
    out = []
    for kind in registry.KINDS:
        for name in registry.names(kind):
            cls, summary = _load(kind, name)
            out.append({"kind": kind, "name": name, "summary": summary, "origin": registry.origin(kind, name), "loads": cls is not None})
    return out


def settings(cls: Any) -> list[dict[str, Any]]:
    from headrace.docs import default_text, type_text

    model = getattr(cls, "Config", None)
    if model is None:
        return []
    return [{"key": key, "type": type_text(f), "required": f.is_required(), "default": default_text(f), "description": f.description or ""}
            for key, f in model.model_fields.items()]  # fmt: skip


def details(kind: registry.Kind, name: str) -> dict[str, Any]:
    from pydantic import BaseModel

    from headrace.config.schema_types import LaxJsonSchema
    from headrace.docs import WHERE, module_doc

    cls, summary = _load(kind, name)
    doc: dict[str, Any] = {"kind": kind, "name": name, "origin": registry.origin(kind, name), "summary": summary}
    if cls is None:
        return doc
    model = getattr(cls, "Config", None)
    doc.update(description=module_doc(cls), written_in=WHERE[kind], settings=settings(cls), example=getattr(cls, "example", ""))
    if isinstance(model, type) and issubclass(model, BaseModel):
        doc["schema"] = model.model_json_schema(schema_generator=LaxJsonSchema)
    for attr in ("default_preprocessors", "default_postprocessors"):
        if hasattr(cls, attr):
            doc[attr] = list(getattr(cls, attr))
    return doc


def matches(query: str) -> list[tuple[registry.Kind, str]]:
    """The plugins a query names: ``NAME`` (any kind) or ``KIND/NAME`` (``onramp/file`` or ``onramps/file``)."""
    kind_part, _, name = query.rpartition("/")
    kinds = [k for k in registry.KINDS if not kind_part or kind_part in (k, k[:-1])]
    return [(k, name) for k in kinds if name in registry.names(k)]


def _print_details(doc: dict[str, Any]) -> None:
    kind = doc["kind"][:-1]
    print(f"{kind} {doc['name']}  [{doc['origin']}]")
    print(doc["summary"])
    if "settings" not in doc:
        return
    if doc["description"]:
        print()
        print(doc["description"])
    print()
    rows = doc["settings"]
    if not rows:
        print(f"Settings ({doc['written_in']}): none")
    else:
        print(f"Settings ({doc['written_in']}):")
        width = max(len(r["key"]) for r in rows)
        for r in rows:
            default = "required" if r["required"] else f"default {r['default']}"
            print(f"  {r['key']:<{width}}  {r['type']}; {default}")
            if r["description"]:
                print(f"  {'':<{width}}  {r['description']}")
    for attr in ("default_preprocessors", "default_postprocessors"):
        if attr in doc:
            print(f"{attr.replace('_', ' ').capitalize()}: {', '.join(doc[attr]) or 'none'}")
    if doc["example"]:
        print(f"Example: {doc['example']}")


def run_plugins(query: str | None, fmt: str) -> int:
    if query is None:
        rows = listing()
        if fmt == "json":
            print(json.dumps(rows, indent=2))
            return 0
        for kind in registry.KINDS:
            print(f"{kind}:")
            for r in (r for r in rows if r["kind"] == kind):
                print(f"  {r['name']:<14} {r['summary']}  [{r['origin']}]")
        return 0
    found = matches(query)
    if not found:
        every = sorted({n for k in registry.KINDS for n in registry.names(k)})
        print(f"no plugin named '{query}'{did_you_mean(query.rpartition('/')[2], every)} (see `headrace plugins`)", file=sys.stderr)
        return EX_NO_PLUGIN
    docs = [details(kind, name) for kind, name in found]
    if fmt == "json":
        print(json.dumps(docs, indent=2, default=str))  # a list: a name may be an onramp and an offramp
        return 0
    for i, doc in enumerate(docs):
        if i:
            print()
        _print_details(doc)
    return 0
