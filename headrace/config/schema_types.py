"""JSON Schema of config values as they are written, not as they are after validation.

``check`` takes a value through ``${VAR}`` interpolation and pydantic's lax mode, so it
accepts more than pydantic's own JSON Schema says: ``"64"`` and ``"${BATCH:-64}"`` where a
number goes, ``yes``/``off`` where a boolean goes, ``"250ms"`` or ``0.25`` for a duration.
``LaxJsonSchema`` generates schemas that accept those forms too, and states the bounds that
pydantic leaks under its own names (``ge``) as JSON Schema's (``minimum``).

Alternatives are written as ``if``/``then``/``else`` on the JSON type rather than ``anyOf``,
so that a wrong value gets one message about the form it was written in ("'many' does not
match ...", "'fiel' is not one of ...") instead of "not valid under any of the given schemas".
"""

from __future__ import annotations

import functools
from typing import Any, cast

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from headrace.config.yamlpos import ENV_REFERENCE
from headrace.contract.units import DURATION_TEXT, SIZE_TEXT, parse_duration, parse_size

ENV = ENV_REFERENCE.pattern  # a string holding a ${VAR} reference may become anything: its value is checked at load
# the strings pydantic's lax mode turns into a number or a boolean
INT_TEXT = r"\s*[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?\s*"
_DIGITS = r"[0-9]+(?:_[0-9]+)*"
FLOAT_TEXT = (rf"\s*[+-]?(?:(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?[0-9]+)?"
              r"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?|[nN][aA][nN])\s*")  # fmt: skip
BOOL_TEXT = r"[01tTfFyYnN]|[tT][rR][uU][eE]|[fF][aA][lL][sS][eE]|[yY][eE][sS]|[nN][oO]|[oO][nN]|[oO][fF][fF]"
ZERO_TEXT = r"\s*0*(?:\.0*)?\s*[a-zA-Z]*\s*"  # a duration or size of zero, in any unit

# constraints pydantic could not push into the type they constrain: it checks them in a
# function-after validator and copies them into the schema under its own names
_BOUNDS = {"ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"}


def text_or(number: JsonSchemaValue, text: str, *, positive: bool = False) -> JsonSchemaValue:
    """``number`` for JSON values; for strings, the ``text`` forms (not zero when ``positive``) or a ${VAR} reference."""
    form = f"(?!{ZERO_TEXT}$)(?:{text})" if positive else f"(?:{text})"
    return {"if": {"type": "string"}, "then": {"pattern": f"^{form}$|{ENV}"}, "else": number}


def or_env(schema: JsonSchemaValue) -> JsonSchemaValue:
    """``schema``, or any string holding a ${VAR} reference."""
    return {"if": {"type": "string", "pattern": ENV}, "then": {}, "else": schema}


def _positive(number: JsonSchemaValue) -> bool:
    return bool(number.get("minimum", 0) > 0 or ("exclusiveMinimum" in number and number["exclusiveMinimum"] >= 0))


def _push_bounds(schema: core_schema.CoreSchema, bounds: dict[str, Any]) -> core_schema.CoreSchema:
    """``schema`` with ``bounds`` moved into the number, string or list it wraps (through before-validators)."""
    if schema["type"] == "function-before":
        return {**schema, "schema": _push_bounds(schema["schema"], bounds)}
    if schema["type"] in ("int", "float", "str", "list", "dict"):
        merged: dict[str, Any] = dict(schema)
        for key, value in bounds.items():  # both hold: keep the stricter
            old = merged.get(key)
            merged[key] = value if old is None else (max if key in ("ge", "gt", "min_length") else min)(old, value)
        return cast(core_schema.CoreSchema, merged)
    return schema


class LaxJsonSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema generator, for values as ``check`` accepts them."""

    def generate_inner(self, schema: Any) -> JsonSchemaValue:
        metadata = schema.get("metadata") or {}
        updates = metadata.get("pydantic_js_updates")
        if updates and _BOUNDS & set(updates):  # pushed into the type by function_after_schema instead
            kept = {k: v for k, v in updates.items() if k not in _BOUNDS}
            schema = {**schema, "metadata": {**metadata, "pydantic_js_updates": kept}}
        return super().generate_inner(schema)

    def int_schema(self, schema: core_schema.IntSchema) -> JsonSchemaValue:
        return text_or(super().int_schema(schema), INT_TEXT)

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        return text_or(super().float_schema(schema), FLOAT_TEXT)

    def bool_schema(self, schema: core_schema.BoolSchema) -> JsonSchemaValue:
        return text_or({"enum": [True, False, 0, 1]}, BOOL_TEXT)

    def str_schema(self, schema: core_schema.StringSchema) -> JsonSchemaValue:
        plain = super().str_schema(schema)
        return plain if set(plain) == {"type"} else or_env(plain)  # a pattern or a length holds only after interpolation

    def literal_schema(self, schema: core_schema.LiteralSchema) -> JsonSchemaValue:
        plain = super().literal_schema(schema)
        # interpolation makes strings: a ${VAR} can only stand for a literal that is a string
        return or_env(plain) if all(isinstance(v, str) for v in schema["expected"]) else plain

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return {"if": {"type": "null"}, "else": self.generate_inner(schema["schema"])}

    def union_schema(self, schema: core_schema.UnionSchema) -> JsonSchemaValue:
        members = [self.generate_inner(c[0] if isinstance(c, tuple) else c) for c in schema["choices"]]
        types = [m.get("type") for m in members]
        merged: dict[str, Any] = {}
        for m in members:
            merged.update({k: v for k, v in m.items() if k != "type"})
        distinct = all(isinstance(t, str) for t in types) and len(set(types)) == len(types)
        if distinct and len(merged) == sum(len(m) - 1 for m in members):  # one JSON type each, keywords apart: one schema
            return {"type": types, **merged}
        return super().union_schema(schema)

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        fn = schema["function"]["function"]
        inner = schema["schema"]
        if fn is parse_duration and inner["type"] == "float":
            number = GenerateJsonSchema.float_schema(self, cast(core_schema.FloatSchema, inner))
            return text_or(number, DURATION_TEXT, positive=_positive(number))
        if fn is parse_size and inner["type"] == "int":
            number = GenerateJsonSchema.int_schema(self, cast(core_schema.IntSchema, inner))
            return text_or(number, SIZE_TEXT, positive=_positive(number))
        return super().function_before_schema(schema)

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        fn = schema["function"]["function"]
        if isinstance(fn, functools.partial) and fn.func.__module__.startswith("pydantic") and fn.keywords and set(fn.keywords) <= _BOUNDS:
            return self.generate_inner(_push_bounds(schema["schema"], dict(fn.keywords)))
        return super().function_after_schema(schema)
