"""What the engine runs: one ``Runner`` per onramp, chain of stages (on the loop or on the
workers) and offramp. The engine starts, runs, retires and releases them through this
interface only, whatever they are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headrace.runtime.inbox import Inbox
    from headrace.runtime.router import Router


class Runner:
    name: str = ""  # the component's id (a chain: its first node's)
    inbox: Inbox | None = None  # what it reads (an onramp reads its source instead)
    nodes: tuple[str, ...] = ()  # the stages it runs (a chain)
    segment: Any = None  # a worker segment's spec: what the pool sets up for it

    def __init__(self) -> None:
        self.closes: list[Inbox] = []  # set by the wiring: the inboxes it closes when it ends
        # taps on the out port of a node inside the chain (its out goes straight into the next node): node -> taps
        self.interior: dict[str, list[Any]] = {}

    async def run(self) -> None:
        """Until its input ends (a source ended or was stopped, its inbox closed and drained)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop intake (an onramp); the others end when their inbox closes."""

    def retire(self, routers: dict[str, Router]) -> None:
        """A reload replaced it: it drains into the routing of the graph it belonged to
        (``routers``), closing nothing the new graph shares."""
        self.closes = []

    async def release(self) -> None:
        """After ``run`` ended, or when its start is abandoned: free what its plugin holds."""
