"""YAML documents, safe loader only: no Python objects, one document per record.

Encoding writes one line (flow style, line breaks in strings escaped), so the lines
framing works; ``bytes`` (a Kafka key or header value in meta) are written as
``!!binary`` (base64) and read back as ``bytes``. Aliases are followed with a budget: a "billion laughs" record, or one
nested deeper than ``max_event_depth``, is rejected instead of expanded.

libyaml's composer recurses in C and overflows the stack (a crash, not an exception) on
deep nesting, so a record with many structural characters is parsed by the pure-Python
loader, whose recursion limit turns that into an error.
"""

from __future__ import annotations

import base64
from typing import Any

import yaml

from headrace.contract.codec import Codec, DecodeError

_FastLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_FAST = 1000  # records with at most this many of "[{-?:" nest at most this deep: safe for libyaml
_STRUCTURAL = (b"[", b"{", b"-", b"?", b":")  # every level of nesting needs one of them
_BaseDumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
MAX_NODES = 1_000_000  # values reachable from one document, aliases counted each time they are used
_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")


class _OneLineDumper(_BaseDumper):  # type: ignore[misc]
    pass


def _str(dumper: Any, data: str) -> Any:
    style = '"' if any(c in data for c in _BREAKS) else None  # double quotes escape line breaks
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _bytes(dumper: Any, data: bytes) -> Any:
    return dumper.represent_scalar("tag:yaml.org,2002:binary", base64.b64encode(data).decode("ascii"), style='"')


_OneLineDumper.add_representer(str, _str)
_OneLineDumper.add_representer(bytes, _bytes)


def _check_size(value: Any, max_depth: int) -> None:
    budget = MAX_NODES
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise DecodeError(f"document expands to more than {MAX_NODES} values (aliases)")
        if isinstance(v, (dict, list, set, tuple)):
            if depth > max_depth:
                raise DecodeError(f"nested deeper than {max_depth}")
            items = v.items() if isinstance(v, dict) else ((None, x) for x in v)
            for k, x in items:
                stack.append((x, depth + 1))
                if isinstance(k, (tuple, frozenset)):
                    stack.append((k, depth + 1))


class YamlCodec(Codec):
    name = "yaml"
    summary = "one YAML document per record (safe loader); several documents, tags of Python objects, alias bombs go to err"

    def decode(self, data: bytes) -> Any:
        try:
            fast = sum(data.count(c) for c in _STRUCTURAL) <= _SAFE_FAST
            value = yaml.load(data, Loader=_FastLoader if fast else yaml.SafeLoader)  # safe loaders: no Python objects
        except yaml.YAMLError as exc:
            raise DecodeError(f"invalid YAML: {' '.join(str(exc).split())}") from None
        except (RecursionError, ValueError, TypeError, OverflowError) as exc:  # constructors of odd scalars, deep nesting
            raise DecodeError(f"invalid YAML: {type(exc).__name__}: {exc}") from None
        _check_size(value, self.max_depth)
        return value

    def encode(self, value: Any) -> bytes:
        text: str = yaml.dump(value, Dumper=_OneLineDumper, default_flow_style=True, width=2**30, allow_unicode=True, sort_keys=False)
        if text.endswith("\n...\n"):  # the pure-Python emitter ends a bare scalar document explicitly
            text = text[:-5]
        return text.rstrip("\n").encode("utf-8")
