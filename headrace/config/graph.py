"""The resolved graph: every runtime component with its validated config, and flat edges.

Pipelines are a naming scope, not a runtime thing: their ``in``/``out``/``err`` ports
are resolved away so that edges connect onramps, pipeline nodes and offramps directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from headrace.config.errors import ConfigIssue, Position
from headrace.config.model import DaemonConfig

Kind = Literal["onramp", "node", "offramp"]


@dataclass
class ProcessorSpec:
    name: str
    config: Any


@dataclass
class ComponentSpec:
    id: str  # onramp/offramp id, or "pipeline.node"
    kind: Kind
    plugin: str  # onramp/offramp type, or operator name
    config: Any  # the plugin's validated config model
    raw: Any  # the config as written (after interpolation), for reload diffs
    position: Position
    ports: tuple[str, ...] = ("out", "err")
    pipeline: str | None = None
    codec: str = "json"
    processors: list[ProcessorSpec] = field(default_factory=list)
    ordered: bool = True
    with_meta: bool = False  # an offramp writing each event as {event, meta}
    retry: Any = None  # an offramp's RetryConfig: when a failing write gives up (None: never)
    buffer: Any = None  # an offramp's BufferConfig (None or type memory: its queue only)


Edge = tuple[str, str]  # (component id, port)


@dataclass
class Graph:
    file: Path
    base_dir: Path
    daemon: DaemonConfig
    components: dict[str, ComponentSpec]  # in topological order
    edges: dict[Edge, list[str]]  # (src, port) -> target component ids
    unlinked: list[Edge]  # ports with no target (events there are counted and dropped)
    tests: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    codecs: dict[str, ProcessorSpec] = field(default_factory=dict)  # codec key -> name and options (codecs with options)
    warnings: list[ConfigIssue] = field(default_factory=list)  # what check warns about (ports whose events are dropped)

    def of_kind(self, kind: Kind) -> list[ComponentSpec]:
        return [c for c in self.components.values() if c.kind == kind]

