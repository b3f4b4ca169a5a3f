"""Socket onramps report ready (``/ready``) only once a client can connect: not a few milliseconds before."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headrace import registry
from headrace.contract.context import PluginContext
from tests.support.daemon import Daemon, free_port


def _ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2).status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_ready_means_every_socket_onramp_accepts_connections(tmp_path: Path, write: Any) -> None:
    refused = []
    for attempt in range(4):  # the window was a few ms after start: poll /ready as fast as possible, connect at once
        tport, hport, mport = free_port(), free_port(), free_port()
        sock = tmp_path / f"in{attempt}.sock"
        cfg = write(f"c{attempt}.yaml", f"""
version: 1
daemon: {{workers: 0, metrics: {{listen: "127.0.0.1:{mport}"}}}}
onramps:
  tcp: {{type: tcp, config: {{port: {tport}}}}}
  http: {{type: http, config: {{port: {hport}}}}}
  unix: {{type: unix, config: {{path: {sock.name}}}}}
offramps: {{out: {{type: file, config: {{path: out.ndjson}}}}}}
links: {{tcp: [out], http: [out], unix: [out]}}
""")
        d = Daemon(cfg)
        try:
            deadline = time.monotonic() + 30
            while not _ready(mport):
                assert time.monotonic() < deadline and d.proc.poll() is None, d.stderr()
            for family, address in ((socket.AF_INET, ("127.0.0.1", tport)), (socket.AF_INET, ("127.0.0.1", hport)),
                                    (socket.AF_UNIX, str(sock))):  # fmt: skip
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    try:
                        s.connect(address)
                    except OSError as exc:
                        refused.append((attempt, address, exc))
        finally:
            assert d.stop() == 0, d.stderr()
    assert not refused, refused


class NullSink:
    """Enough of the runtime's sink for an onramp to start listening."""

    async def chunk(self, data: bytes, meta: dict[str, Any] | None = None) -> None: ...

    async def end_of_stream(self, meta: dict[str, Any] | None = None) -> None: ...

    async def records(self, payloads: list[bytes], metas: list[dict[str, Any]] | None = None, ack: Any = None, group: Any = None) -> None: ...

    async def reject(self, rejected: list[tuple[bytes, str]], meta: dict[str, Any] | None = None) -> None: ...

    def stream(self) -> NullSink:
        return self

    def frame(self, data: bytes) -> Iterator[tuple[list[bytes], list[tuple[bytes, str]]]]:
        yield [], []


@pytest.mark.parametrize("name", ["tcp", "unix", "http", "udp"])
def test_a_socket_onramp_is_not_ready_before_it_listens(tmp_path: Path, name: str) -> None:
    options: dict[str, Any] = {"path": "in.sock"} if name == "unix" else {"port": free_port()}
    cls = registry.load("onramps", name)
    onramp = cls(cls.Config(**options), PluginContext("src", tmp_path))

    async def scenario() -> tuple[bool, bool]:
        await onramp.start()  # what the runtime calls first; then run, which listens
        before = onramp.ready
        task = asyncio.create_task(onramp.run(NullSink()))
        try:
            for _ in range(500):
                if onramp.ready:
                    break
                await asyncio.sleep(0.01)
            return before, onramp.ready
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await onramp.stop()

    assert asyncio.run(scenario()) == (False, True)
