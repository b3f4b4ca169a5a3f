"""JSON Schema of the config (``headrace schema``) and of test files, from the same models that validate them.

The top level comes from ``Config``; each plugin's settings from the plugin's own model,
chosen by ``type`` (onramps, offramps), ``op`` (pipeline nodes) or ``name`` (codecs and
processors with options) through ``if``/``then``: an unknown name is reported at that key
with the allowed names, a setting of the wrong plugin at the setting. Values are described
as they are written (``LaxJsonSchema``), so the schema accepts what ``check`` accepts.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from headrace import registry
from headrace.config.model import Config, OfframpConfig, OnrampConfig
from headrace.config.schema_types import LaxJsonSchema, or_env

SCHEMA_ID = "urn:headrace:config:v1"
TESTS_SCHEMA_ID = "urn:headrace:tests:v1"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
RESERVED_NODE_IDS = ["in", "out", "err"]  # the ports of a pipeline
ID_TEXT = "^[^./]+$"  # ids name components as pipeline.node and ports as component/port

Target = Literal["config", "tests"]


def _plugins() -> dict[registry.Kind, dict[str, Any]]:
    """Every plugin class by kind and name; one that cannot be loaded is left out (``check`` names it)."""
    out: dict[registry.Kind, dict[str, Any]] = {}
    for kind in registry.KINDS:
        out[kind] = {}
        for name in registry.names(kind):
            try:
                out[kind][name] = registry.load(kind, name)
            except Exception:  # a broken third-party plugin must not take the schema down
                continue
    return out


class _Builder:
    def __init__(self) -> None:
        from headrace.testing.cases import Case, CaseFile

        self.plugins = _plugins()
        models: list[type[BaseModel]] = [Config, OnrampConfig, OfframpConfig, Case, CaseFile]
        for classes in self.plugins.values():
            models += [cls.Config for cls in classes.values()]
        unique = list(dict.fromkeys(models))
        refs, doc = models_json_schema([(m, "validation") for m in unique], schema_generator=LaxJsonSchema)
        self.defs: dict[str, Any] = doc.get("$defs", {})
        self.ref = {m: refs[(m, "validation")] for m in unique}

    def resolve(self, model: type[BaseModel]) -> dict[str, Any]:
        ref = self.ref[model]
        return self.defs[ref["$ref"].rsplit("/", 1)[-1]] if "$ref" in ref else ref

    def define(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        self.defs[name] = schema
        return {"$ref": f"#/$defs/{name}"}

    def names(self, kind: registry.Kind, description: str) -> dict[str, Any]:
        return {**or_env({"enum": sorted(self.plugins[kind])}), "description": description}

    def options(self, kind: registry.Kind, name: str, cls: Any, key: str, extra: dict[str, Any]) -> dict[str, Any]:
        """A plugin's settings written beside its ``key`` (an operator's beside ``op``, a codec's beside ``name``)."""
        schema = copy.deepcopy(self.resolve(cls.Config))
        schema["properties"] = {key: {"const": name}, **extra, **schema.get("properties", {})}
        schema["description"] = cls.summary or schema.get("description", "")
        schema.pop("title", None)
        return self.define(f"{kind}.{name}", schema)

    def chosen_by(self, key: str, choices: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """``if key is NAME then SCHEMA`` for each choice: only the chosen plugin's schema applies."""
        return [{"if": {"properties": {key: {"const": name}}, "required": [key]}, "then": then} for name, then in choices.items()]

    def processor(self, kind: registry.Kind, what: str) -> dict[str, Any]:
        """A codec or processor: its name, or ``{name: ..., options}``."""
        named = {name: self.options(kind, name, cls, "name", {}) for name, cls in self.plugins[kind].items()}
        mapping = {"type": "object", "required": ["name"], "properties": {"name": self.names(kind, f"{what} name")},
                   "allOf": self.chosen_by("name", named)}  # fmt: skip
        return self.define(kind, {"if": {"type": "object"}, "then": mapping, "else": self.names(kind, f"{what} name (see `headrace plugins`)")})

    def connector(self, kind: registry.Kind, base: type[BaseModel]) -> dict[str, Any]:
        schema = copy.deepcopy(self.resolve(base))
        props = schema["properties"]
        what = kind[:-1]
        props["type"] = self.names(kind, props["type"].get("description", f"{what} plugin name"))
        props["codec"] = {**self.processor("codecs", "codec"), "description": props["codec"].get("description", "")}
        processors: registry.Kind = "preprocessors" if kind == "onramps" else "postprocessors"
        items = self.processor(processors, processors[:-1])
        props[processors] = {"if": {"type": "null"}, "else": {"type": "array", "items": items}, "description": props[processors].get("description", "")}
        choices = {}
        for name, cls in self.plugins[kind].items():
            settings = self.define(f"{kind}.{name}.config", {**copy.deepcopy(self.resolve(cls.Config)), "title": f"{what} {name} config"})
            choices[name] = {"properties": {"config": {**settings, "description": cls.summary}}}
        schema["allOf"] = self.chosen_by("type", choices)
        schema.pop("title", None)
        return self.define(what, schema)

    def node(self) -> dict[str, Any]:
        ident = {"id": {"type": "string", "pattern": ID_TEXT, "not": {"enum": RESERVED_NODE_IDS},
                        "description": "the node's name (pipeline.ID in metrics, logs, tests and links); "
                                       "default: the function's name (python) or the op, with _2, _3 ... for repeats"}}  # fmt: skip
        choices = {name: self.options("operators", name, cls, "op", ident) for name, cls in self.plugins["operators"].items()}
        schema = {"type": "object", "required": ["op"], "properties": {"op": self.names("operators", "the operator (see `headrace plugins`)")},
                  "allOf": self.chosen_by("op", choices)}  # fmt: skip
        return self.define("node", schema)

    def pipeline(self) -> dict[str, Any]:
        node = self.node()
        targets = {"type": ["string", "array"], "items": {"type": "string"}}
        graph = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "nodes": {"type": "object", "propertyNames": {"pattern": ID_TEXT, "not": {"enum": RESERVED_NODE_IDS}},
                          "additionalProperties": node, "description": "node id -> stage"},
                "links": {"type": "object", "additionalProperties": targets, "description": "node[/port] (or in) -> nodes, out or err"},
            },
        }  # fmt: skip
        schema = {"if": {"type": "array"}, "then": {"items": node}, "else": graph,
                  "description": "a list of stages (a chain), or {nodes, links} (a graph)"}  # fmt: skip
        return self.define("pipeline", schema)

    def config(self) -> dict[str, Any]:
        schema = copy.deepcopy(self.resolve(Config))
        props = schema["properties"]
        props["onramps"]["additionalProperties"] = self.connector("onramps", OnrampConfig)
        props["offramps"]["additionalProperties"] = self.connector("offramps", OfframpConfig)
        props["pipelines"]["additionalProperties"] = self.pipeline()
        props["pipelines"]["propertyNames"] = {"pattern": ID_TEXT}
        props["tests"]["items"] = self.ref[_case()]
        return schema

    def tests(self) -> dict[str, Any]:
        from headrace.testing.cases import CaseFile

        return copy.deepcopy(self.resolve(CaseFile))


def _case() -> type[BaseModel]:
    from headrace.testing.cases import Case

    return Case


def json_schema(target: Target = "config") -> dict[str, Any]:
    """The JSON Schema of a config file, or of a test file (``<config>_test.yaml``)."""
    builder = _Builder()
    body = builder.config() if target == "config" else builder.tests()
    title = "headrace config" if target == "config" else "headrace config tests"
    doc = {"$schema": DRAFT, "$id": SCHEMA_ID if target == "config" else TESTS_SCHEMA_ID, "title": title, **body}
    doc["$defs"] = builder.defs
    return doc
