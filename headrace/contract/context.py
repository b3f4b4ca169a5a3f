"""What a plugin may know about its surroundings, and the services the runtime gives it.

Services are typed fields, not a string-keyed bag: ``metrics`` (the daemon's metric
registry, to count what only the plugin sees), ``request_stop`` (a finite sink asking the
daemon to stop, like ``blackhole``'s ``stop_after``), ``downstream_full`` (a stage asking
whether the queue after its chain is full, like ``backpressure``). Each has a harmless
default, so a plugin built in a unit test needs only an id and a folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class MetricRegistry(Protocol):
    """The daemon's metrics by name (``registry["headrace_..."]`` is a prometheus_client metric)."""

    def __getitem__(self, name: str) -> Any: ...


def _nothing() -> None:
    return None


def _never_full() -> bool:
    return False


@dataclass
class PluginContext:
    """What a plugin may know about its surroundings."""

    component_id: str
    base_dir: Path  # folder of the config file; relative paths resolve here
    max_event_depth: int = 1024
    metrics: MetricRegistry | None = None  # None in unit tests and `headrace check`: count nothing
    request_stop: Callable[[], None] = field(default=_nothing)  # ask the daemon to drain and stop
    downstream_full: Callable[[], bool] = field(default=_never_full)  # for stages: the queue after this chain is full
    state_dir: Path | None = None  # where a plugin may keep state across restarts (daemon.state_dir); None: keep nothing
    framing: tuple[str, ...] = ()  # names of the component's preprocessors (an onramp) or postprocessors (an offramp), in order

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p
