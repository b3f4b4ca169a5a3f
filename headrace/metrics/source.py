"""What the status document, the sampler and ``headrace top``'s rates read of a running daemon:
a typed view, so that none of them reaches into the daemon's insides by attribute name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from headrace.config.graph import Graph
    from headrace.metrics.defs import Metrics


class PoolView(Protocol):
    """The worker pool, as observed."""

    size: int
    restarts: int

    def pids(self) -> list[int]: ...

    def down(self) -> list[int]: ...

    def states(self) -> dict[int, dict[str, Any]]: ...

    def busy(self) -> list[int]: ...

    def occupied(self) -> list[int]: ...


class DaemonView(Protocol):
    """A running daemon, as observed."""

    metrics: Metrics
    graph: Graph | None
    config_path: Path

    @property
    def workers(self) -> PoolView | None: ...

    def is_ready(self) -> bool: ...

    def loop_lag_p99(self) -> float: ...

    def placements(self) -> list[tuple[list[str], str]]:
        """Per chain of nodes run as one unit: its nodes and where it runs (``workers`` or ``loop``)."""
        ...
