"""The environment ``check`` interpolates ``${VAR}`` from: this shell's, files of ``KEY=value``
lines (``--env-file``), or what a systemd unit gives its service (``--unit``).

Under systemd a config may use variables only the service gets (``${STATE_DIRECTORY}`` from
``StateDirectory=``, secrets from ``EnvironmentFile=``). ``--unit FILE`` reads the unit and
its drop-ins (``FILE.d/*.conf``) the way systemd would: ``Environment=``, ``EnvironmentFile=``
(a ``-`` prefix: optional) and the directory settings, so the config is checked with the
variables the service will see, not with those of the shell ``check`` runs in.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from headrace.config.errors import ConfigIssue, Position

# StateDirectory=headrace -> STATE_DIRECTORY=/var/lib/headrace (system units; several names are joined by ':')
DIRECTORIES = {
    "StateDirectory": ("STATE_DIRECTORY", "/var/lib"),
    "RuntimeDirectory": ("RUNTIME_DIRECTORY", "/run"),
    "CacheDirectory": ("CACHE_DIRECTORY", "/var/cache"),
    "LogsDirectory": ("LOGS_DIRECTORY", "/var/log"),
    "ConfigurationDirectory": ("CONFIGURATION_DIRECTORY", "/etc"),
}


@dataclass
class Environment:
    """Variables, and what could not be read for them (``errors`` fail a check, ``warnings`` are shown)."""

    variables: dict[str, str] = field(default_factory=dict)
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return inner.replace('\\"', '"').replace("\\\\", "\\") if value[0] == '"' else inner
    return value


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) with backslash continuations joined, blank lines and comments dropped."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw.strip()
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line, pending = pending + line, ""
        if line and line[0] not in "#;":
            out.append((start, line))
    return out


def read_env_file(path: Path, env: Environment, where: Position | None = None, optional: bool = False) -> None:
    """Add the ``KEY=value`` lines of ``path`` (systemd's ``EnvironmentFile=`` format) to ``env``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        at = where or Position(str(path), 1, 1)
        if optional and isinstance(exc, FileNotFoundError):  # systemd skips it silently too
            return
        if optional:  # e.g. a root-only secrets file: the service gets its variables, this check does not
            env.warnings.append(ConfigIssue(at, f"optional environment file {path} not read ({exc}): the variables it sets are unset here"))
        else:
            env.errors.append(ConfigIssue(at, f"cannot read environment file {path}: {exc}"))
        return
    for number, line in _logical_lines(text):
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or not key.replace("_", "a").isalnum() or key[0].isdigit():
            env.errors.append(ConfigIssue(Position(str(path), number, 1), f"expected KEY=value, got {line!r}"))
            continue
        env.variables[key] = _unquote(value.strip())


def _unit_files(unit: Path) -> list[Path]:
    dropins = unit.with_name(unit.name + ".d")
    return [unit, *sorted(dropins.glob("*.conf"))] if dropins.is_dir() else [unit]


def read_unit(unit: Path, env: Environment) -> None:
    """Add what ``unit`` (and its drop-ins) sets in its service's environment to ``env``."""
    settings: list[tuple[Position, str, str]] = []
    for path in _unit_files(unit):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            env.errors.append(ConfigIssue(Position(str(path), 1, 1), f"cannot read unit file: {exc}"))
            return
        section = ""
        for number, line in _logical_lines(text):
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif section == "Service" and "=" in line:
                key, _, value = line.partition("=")
                settings.append((Position(str(path), number, 1), key.strip(), value.strip()))
    files: list[tuple[Position, str]] = []
    dirs: dict[str, list[str]] = {}
    for where, key, value in settings:
        if key == "Environment":
            if not value:  # an empty assignment resets the list
                env.variables.clear()
            for item in shlex.split(value):
                name, _, val = item.partition("=")
                env.variables[name] = val
        elif key == "EnvironmentFile":
            files = [] if not value else [*files, (where, value)]
        elif key in DIRECTORIES:
            dirs[key] = [] if not value else [*dirs.get(key, []), *(name.split(":")[0] for name in value.split())]
    for key, names in dirs.items():
        variable, root = DIRECTORIES[key]
        if names:
            env.variables[variable] = ":".join(f"{root}/{name}" for name in names)
    for where, value in files:  # read after Environment=, whose values they override (as systemd does)
        optional = value.startswith("-")
        read_env_file(Path(value.removeprefix("-")), env, where, optional)
