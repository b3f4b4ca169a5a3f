"""JSON Schema of the config: the top-level model plus every plugin's own config model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model

from headrace import registry
from headrace.config.model import Config, OfframpConfig, OnrampConfig, Strict


def _variants(kind: registry.Kind, base: type[Strict], key: str) -> list[Any]:
    out = []
    for name in registry.names(kind):
        try:
            cls = registry.load(kind, name)
        except registry.UnknownPlugin:
            continue
        fields: dict[str, Any] = {key: (Literal[name], Field(description=cls.summary))}
        if kind == "operators":
            for fname, f in cls.Config.model_fields.items():
                fields[fname] = (f.annotation, f)
            fields["id"] = (str | None, Field(None, description="node id in a list pipeline"))
        else:
            fields["config"] = (cls.Config, Field(default_factory=dict))
        out.append(create_model(f"{kind}_{name}", __base__=base, **fields))
    return out


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    defs = schema.setdefault("$defs", {})

    def union(kind: registry.Kind, base: type[Strict], key: str) -> list[dict[str, Any]]:
        refs = []
        for model in _variants(kind, base, key):
            sub = model.model_json_schema(ref_template="#/$defs/{model}")
            defs.update(sub.pop("$defs", {}))
            defs[model.__name__] = sub
            refs.append({"$ref": f"#/$defs/{model.__name__}"})
        return refs

    props = schema["properties"]
    props["onramps"]["additionalProperties"] = {"anyOf": union("onramps", OnrampConfig, "type")}
    props["offramps"]["additionalProperties"] = {"anyOf": union("offramps", OfframpConfig, "type")}
    nodes = {"anyOf": union("operators", Strict, "op")}
    props["pipelines"]["additionalProperties"] = {
        "anyOf": [
            {"type": "array", "items": nodes},
            {"type": "object", "properties": {"nodes": {"type": "object", "additionalProperties": nodes},
                                              "links": {"type": "object"}}, "additionalProperties": False},
        ]
    }  # fmt: skip
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "headrace config"
    return schema
