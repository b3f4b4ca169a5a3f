from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.plugins.peers import LoopThread


@pytest.fixture
def peer_loop() -> Iterator[LoopThread]:
    """An asyncio loop in a thread for the test's own servers and clients."""
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
