"""A source that fails at run time is not ready while it restarts: ``/ready`` (``Engine.ready``
reads each onramp's ``ready``) answers 503 until the restarted source is ready again (was: it kept
the ``ready`` of the source that had failed), and after ``release`` it is not ready either."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from headrace.config.load import load_text
from headrace.contract.context import PluginContext
from headrace.contract.source import Onramp
from headrace.metrics.defs import Metrics
from headrace.runtime.onramp import OnrampRunner
from headrace.runtime.router import Router
from headrace.runtime.stats import ComponentStats


class Flaky(Onramp):
    """Fails once while running; its second start waits until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__(None, PluginContext("src", Path(".")))
        self.starts = 0
        self.go_on = asyncio.Event()
        self.stops = 0

    async def start(self) -> None:
        self.starts += 1
        if self.starts > 1:
            await self.go_on.wait()
        self.ready = True

    async def run(self, sink: Any) -> None:
        if self.starts == 1:
            raise ConnectionError("the source went away")
        await asyncio.Event().wait()  # runs until cancelled

    async def stop(self) -> None:
        self.stops += 1  # like most plugins, it does not touch ``ready`` itself


def test_a_restarting_source_is_not_ready(tmp_path: Path) -> None:
    async def main() -> None:
        g = load_text("""
version: 1
onramps: {src: {type: stdin}}
offramps: {out: {type: stdout}}
links: {src: [out]}
""", tmp_path / "c.yaml")  # fmt: skip
        plugin = Flaky()
        runner = OnrampRunner(g.components["src"], plugin, [], Router(ComponentStats(Metrics(), "src", "onramp"), {}), 16)
        task = asyncio.ensure_future(runner.run())
        deadline = asyncio.get_running_loop().time() + 10
        while plugin.starts < 2:
            assert asyncio.get_running_loop().time() < deadline, "the failed source is started again"
            await asyncio.sleep(0.01)
        assert plugin.stops == 1 and not plugin.ready, "not ready while it restarts"
        plugin.go_on.set()
        while not plugin.ready:
            assert asyncio.get_running_loop().time() < deadline, "ready again once restarted"
            await asyncio.sleep(0.01)
        runner.stop()
        await asyncio.wait_for(task, 10)
        await runner.release()
        assert not plugin.ready, "not ready once released"

    asyncio.run(main())
