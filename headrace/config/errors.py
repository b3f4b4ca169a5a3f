"""Config errors carry their source position so every message reads ``file:line:col: message``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Position:
    file: str
    line: int  # 1-based
    col: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class ConfigIssue:
    position: Position
    message: str

    def __str__(self) -> str:
        return f"{self.position}: {self.message}"


@dataclass
class ConfigError(Exception):
    """One or more problems found in a config; raised before anything starts. Issues are in
    the order of the file (by line, then column), files in the order they were first named."""

    issues: list[ConfigIssue] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.issues = in_file_order(self.issues)

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


def in_file_order(issues: Iterable[ConfigIssue]) -> list[ConfigIssue]:
    listed = list(issues)
    files = {f: i for i, f in enumerate(dict.fromkeys(i.position.file for i in listed))}
    return sorted(listed, key=lambda i: (files[i.position.file], i.position.line, i.position.col))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``: did you mean 'x'?`` when one of ``choices`` is close to ``word`` (a typo), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f": did you mean '{close[0]}'?" if close and close[0] != word else ""
