"""Shared fixtures: the real Kafka broker fixtures and helpers to run the real daemon."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.daemon import LIVE, kill_leftovers
from tests.support.fixtures import *  # noqa: F403

# Property tests draw the same examples on every run ("ci", the default: a CI run that passes today
# passes tomorrow); HEADRACE_HYPOTHESIS=explore draws new ones each run, to look for new failures
# (make each one found a plain test, then fix it).
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HEADRACE_HYPOTHESIS", "ci"))

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "tremor-json-throughput" / "data.json.xz"


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    """write(name, text) -> path inside the test's folder."""

    def _write(name: str, text: str | bytes) -> Path:
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return p

    return _write


@pytest.fixture(autouse=True)
def _no_daemon_outlives_its_test() -> Iterator[None]:
    """A test that fails before stopping its daemons must not leave them loading the machine."""
    owned = frozenset(id(d) for d in LIVE)  # started by module or session fixtures: theirs to stop
    yield
    kill_leftovers(keep=owned)
