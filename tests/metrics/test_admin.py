"""Where /metrics renders: on the loop while renders are cheap, in a thread once one was not."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp
import pytest

from headrace.daemon import admin
from headrace.metrics.defs import Metrics
from tests.support.daemon import free_port


def test_cheap_renders_stay_on_the_loop_and_a_costly_one_moves_the_next_to_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    real = admin.generate_latest
    threads: list[str] = []
    cost = {"s": 0.0}

    def render(registry: Any) -> bytes:
        threads.append(threading.current_thread().name)
        end = time.thread_time() + cost["s"]
        while time.thread_time() < end:  # CPU, as the server measures it
            pass
        return real(registry)

    monkeypatch.setattr(admin, "generate_latest", render)

    async def scenario() -> list[bytes]:
        metrics = Metrics()
        metrics["headrace_worker_jobs_total"].labels("0").inc(7)
        server = admin.AdminServer(f"127.0.0.1:{free_port()}", metrics, lambda: True, dict, lambda: asyncio.sleep(0, {"ok": True}))
        await server.start()
        bodies = []
        try:
            async with aiohttp.ClientSession() as http:
                for spend in (0.0, admin.INLINE_RENDER_S * 3, 0.0, 0.0):
                    cost["s"] = spend
                    async with http.get(f"http://{server.host}:{server.port}/metrics") as resp:
                        assert resp.status == 200
                        bodies.append(await resp.read())
        finally:
            await server.stop()
        return bodies

    bodies = asyncio.run(scenario())
    main = threading.main_thread().name
    # 1st cheap: inline; 2nd inline too (the server cannot know in advance) but costly;
    # so the 3rd goes to a thread; it was cheap, so the 4th is back on the loop
    assert threads[0] == main and threads[1] == main
    assert threads[2] != main
    assert threads[3] == main
    assert all(b'headrace_worker_jobs_total{worker="0"} 7.0' in body for body in bodies)
