"""Durations ("250ms", "20s", "1m") and sizes ("64KiB", "16MiB") as pydantic types."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

# the forms a string may take (unanchored, for the JSON Schema too)
DURATION_TEXT = r"\s*([0-9]+(?:\.[0-9]+)?)\s*(us|ms|s|m|h)?\s*"
SIZE_TEXT = r"\s*([0-9]+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*"
_DUR = re.compile(f"^{DURATION_TEXT}$")
_DUR_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(f"^{SIZE_TEXT}$")
_SIZE_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms, 20s or 1m")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DUR.match(value)
        if m:
            return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError("expected a duration such as 250ms, 20s or 1m")


def parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4096, 64KiB or 16MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # 4096.0: JSON (and so the schema) cannot tell it from 4096
        return int(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError("expected a size such as 4096, 64KiB or 16MiB")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, json_schema_extra={"examples": ["250ms", "20s"]})]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0, json_schema_extra={"examples": ["64KiB", "16MiB"]})]
