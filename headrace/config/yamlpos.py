"""Safe YAML loading that remembers where every key and value came from.

The YAML is composed into nodes with the safe loader, then turned into plain Python
values while a side table maps each path (tuple of keys/indices) to its position.
Validation errors are then reported at the exact key that caused them.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from headrace.config.errors import ConfigError, ConfigIssue, Position

Path = tuple[str | int, ...]

MAX_NODES = 200_000
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # ${VAR} or ${VAR:-default}
_ENV = ENV_REFERENCE


class SourceMap:
    """Positions of values (and of the keys naming them) in one YAML file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[Path, Position] = {}
        self.keys: dict[Path, Position] = {}

    def at(self, path: Path, *, key: bool = False) -> Position:
        """The best position for ``path``: the key if asked and known, else the nearest ancestor."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), Position(self.file, 1, 1))


def _pos(file: str, mark: yaml.Mark) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default raises KeyError."""
    environ = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise KeyError(name)
            return default
        return value

    return _ENV.sub(sub, text)


def _unquoted_reference(text: str, mark: yaml.Mark) -> str | None:
    """What to write instead, when the parser stopped at the ``{`` of an unquoted ``${VAR}`` in a flow collection."""
    lines = text.splitlines()
    if mark.line >= len(lines):
        return None
    line, col = lines[mark.line], mark.column
    if not (0 < col < len(line) and line[col - 1 : col + 1] == "${"):
        return None
    start = col - 1
    while start > 0 and line[start - 1] not in " ,[{":
        start -= 1
    end, depth = col - 1, 0
    while end < len(line) and (depth > 0 or line[end] not in ",]}"):
        depth += {"{": 1, "}": -1}.get(line[end], 0)
        end += 1
    value = line[start:end].rstrip()
    return (f"{value} must be quoted inside {{...}} or [...] (a flow collection, where {{ and }} are YAML syntax): "
            f'write "{value}"')  # fmt: skip


def load_yaml(text: str, file: str, env: dict[str, str] | None = None) -> tuple[Any, SourceMap]:
    smap = SourceMap(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = _pos(file, mark) if mark else Position(file, 1, 1)
        hint = _unquoted_reference(text, mark) if mark else None
        if hint is not None:
            raise ConfigError([ConfigIssue(pos, hint)]) from None
        where = exc.context_mark
        context = f" ({exc.context} at line {where.line + 1}, column {where.column + 1})" if exc.context and where and where != mark else ""
        raise ConfigError([ConfigIssue(pos, f"invalid YAML: {exc.problem or exc}{context}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(Position(file, 1, 1), f"invalid YAML: {exc}")]) from None
    if root is None:
        return {}, smap
    issues: list[ConfigIssue] = []
    constructor = yaml.SafeLoader("")

    budget = [MAX_NODES]

    def build(node: yaml.Node, path: Path) -> Any:
        budget[0] -= 1
        if budget[0] < 0:  # aliases are expanded on use: a "billion laughs" file stops here
            raise ConfigError([ConfigIssue(_pos(file, node.start_mark), f"config too large: more than {MAX_NODES} values after expanding aliases")])
        smap.values[path] = _pos(file, node.start_mark)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            issues.append(ConfigIssue(_pos(file, node.start_mark), f"invalid YAML: unsupported tag '{node.tag}'"))
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    issues.append(ConfigIssue(_pos(file, knode.start_mark), "YAML merge keys (<<) are not supported"))
                    continue
                key = build(knode, (*path, "<key>"))
                if not isinstance(key, (str, int)):
                    issues.append(ConfigIssue(_pos(file, knode.start_mark), "keys must be strings"))
                    continue
                skey = str(key)
                if skey in out:
                    issues.append(ConfigIssue(_pos(file, knode.start_mark), f"duplicate key '{skey}'"))
                    continue
                smap.keys[(*path, skey)] = _pos(file, knode.start_mark)
                out[skey] = build(vnode, (*path, skey))
            smap.values.pop((*path, "<key>"), None)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(child, (*path, i)) for i, child in enumerate(node.value)]
        try:
            value = constructor.construct_object(node, deep=True)
        except Exception as exc:  # unknown tag (!!python/object), bad !!int, impossible date: an issue, not a crash
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else None
            problem = problem or f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}"
            issues.append(ConfigIssue(_pos(file, node.start_mark), f"invalid YAML: {problem}"))
            return None
        if isinstance(value, str) and "${" in value:
            try:
                value = interpolate(value, env)
            except KeyError as missing:
                issues.append(
                    ConfigIssue(
                        _pos(file, node.start_mark),
                        f"environment variable {missing.args[0]} is not set (use ${{{missing.args[0]}:-default}})",
                    )
                )
        return value

    data = build(root, ())
    if issues:
        raise ConfigError(issues)
    return data, smap
