"""Run a pydantic model over a piece of the YAML and turn its errors into positioned issues."""

from __future__ import annotations

import types
from typing import Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from headrace.config.errors import ConfigIssue, did_you_mean
from headrace.config.yamlpos import Path, SourceMap

M = TypeVar("M", bound=BaseModel)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The (nested) model at ``loc``, stepping over the keys of dicts and the indices of lists."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is not None:
            if part not in fields:
                return None
            current = fields[part].annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            return None
        if get_origin(current) in (Union, types.UnionType):  # e.g. ``str | ProcessorRef``: the model member
            current = next((a for a in get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)), current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'expected one of' hints."""
    current = _model_at(model, loc)
    return sorted(current.model_fields) if current is not None else []


def _data_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """``loc`` without pydantic's union-member and validator tags: only the keys and indices present in ``data``."""
    out = []
    for part in loc:
        if (isinstance(data, dict) and part in data) or (isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)):
            data = data[part]
            out.append(part)
    return tuple(out)


def validate_model(model: type[M], data: Any, path: Path, smap: SourceMap, what: str = "",
                   also: tuple[str, ...] = ()) -> tuple[M | None, list[ConfigIssue]]:  # fmt: skip
    """``data`` validated by ``model``, or the issues found, at their positions. ``also``: keys the
    caller took out of ``data`` before (named among the allowed ones in an unknown key's message)."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        issues: list[ConfigIssue] = []
        seen: set[tuple[Any, ...]] = set()
        for err in exc.errors():
            kind = err["type"]
            loc = _data_loc(data, err["loc"][:-1]) + err["loc"][-1:] if kind == "missing" else _data_loc(data, err["loc"])
            full = path + loc
            name = ".".join(str(p) for p in full) or "config"
            parent = what or ".".join(str(p) for p in full[:-1]) or "the top level"
            if kind == "extra_forbidden":
                allowed = sorted({*_allowed(model, loc[:-1]), *(also if len(loc) == 1 else ())})
                key = str(loc[-1]) if loc else name
                hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
                issues.append(ConfigIssue(smap.at(full, key=True), f"unknown key '{key}' in {parent}{did_you_mean(key, allowed)}{hint}"))
            elif kind == "missing":
                issues.append(ConfigIssue(smap.at(full[:-1], key=True), f"missing required key '{loc[-1]}' in {parent}"))
            elif loc not in seen:  # a union reports each member's error at the same place: keep the first
                seen.add(loc)
                msg = err["msg"].removeprefix("Value error, ")
                owner = _model_at(model, loc[:-1])
                field = owner.model_fields.get(loc[-1]) if owner is not None and loc else None
                if kind == "string_pattern_mismatch" and field is not None and field.description:
                    msg = f"{err['input']!r} does not have the expected form ({field.description})"
                elif kind in ("model_type", "dict_type"):
                    msg = "expected a mapping"
                issues.append(ConfigIssue(smap.at(full), f"{name}: {msg}"))
        # one message per position and text
        unique: dict[str, ConfigIssue] = {str(i): i for i in issues}
        return None, list(unique.values())
