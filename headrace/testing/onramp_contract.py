"""The onramp contract suite: what the runtime relies on from every onramp, built-in or plugin.

Call it from a plugin's own tests with the plugin class, a factory of its options (as
written in YAML; called once per instance the suite makes, so it may pick a free port each
time) and a peer, what is on the other side (a file it reads, a client that sends to it, a
server it dials)::

    from headrace.testing import OnrampPeer, onramp_contract

    class Lines(OnrampPeer):
        def __init__(self, path):
            self.path = path

        async def prepare(self, config):  # before start: what a finite onramp reads
            self.path.write_bytes(b"a\\nb\\n")
            return [b"a", b"b"]

    def test_my_onramp_keeps_the_contract(tmp_path):
        onramp_contract(MyOnramp, lambda: {"path": str(tmp_path / "in.txt")}, Lines(tmp_path / "in.txt"))

It raises ``AssertionError`` naming the broken invariant. What it checks:

- the declarations (name, summary, an example that validates, a ``Config`` refusing unknown
  keys, default preprocessors that exist), and that ``check()`` opens no file or socket;
- ``stop()`` is safe without ``start()``, and twice; ``ready`` is False before ``start()``;
- ``start()``, then ``run(sink)``: ``ready`` turns True, and from then on the onramp takes
  what the peer sends (the peer's ``feed`` runs the moment ``ready`` is seen); every record
  is handed over while ready and before ``run`` returns; a finite onramp's ``run`` ends by
  itself, another ends when cancelled; the records handed over are what the peer expects;
- every call on the sink is well formed (metas one dict per record that can be pickled for
  a worker, ``refused`` and ``wire`` that match the records, no ack token without records);
- each ack token comes back once through ``ack`` or ``fail`` (every second hand-over fails,
  completions come out of order), and neither raises;
- an onramp that does not end by itself runs again after ``stop()`` on the same instance
  (``start()``, ``run()``, ``stop()``): the runtime restarts a failed source that way.

The sink is the runtime's own (framing by the onramp's preprocessors, batching, ack
references), so what the suite sees is what a running daemon would.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headrace import registry
from headrace.config.errors import Position
from headrace.config.graph import ComponentSpec
from headrace.contract.config import PluginConfig
from headrace.contract.source import Onramp
from headrace.metrics.defs import Metrics
from headrace.testing.connector import COMPONENT_ID, context, describes_itself, stops_unstarted, touches_nothing, validated
from headrace.testing.onramp_sink import CheckedSink, SinkProbe, runtime_sink

Expected = list[bytes] | int  # exactly these records (in any order), or a count: exactly for a finite onramp, at least otherwise
QUIET = 0.2  # seconds without a record after the expected ones arrived: no more is coming
POLL = 0.001  # seconds between looks at ``ready``: an onramp ready a moment too early is caught


class OnrampPeer:
    """The other side of the onramp under test. Override what applies; every method runs on the suite's event loop."""

    async def prepare(self, config: Any) -> Expected:
        """Before the first ``start()``: make what the onramp reads or dials (a file, a server, records in a
        topic). ``config`` is the validated config model. Returns the records the onramp should hand over for it."""
        return []

    async def feed(self, config: Any, cycle: int) -> Expected:
        """Called the moment the onramp reports ``ready`` (cycle 0; cycle 1 after a restart): send it input.
        Returns the records it should hand over for what was sent (an int: a count, for content the peer cannot
        know, such as a metronome's)."""
        return []

    async def close(self) -> None:
        """After the suite, passed or failed: release what ``prepare`` made."""


async def _until(predicate: Callable[[], bool], timeout: float, failure: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, failure
        await asyncio.sleep(POLL)


def _compare(what: str, got: list[bytes], expected: Expected, finite: bool) -> None:
    if isinstance(expected, int):
        if finite:
            assert len(got) == expected, f"{what}: handed over {len(got)} records, expected {expected}"
        else:
            assert len(got) >= expected, f"{what}: handed over {len(got)} records, expected at least {expected}"
        return
    missing, extra = Counter(expected) - Counter(got), Counter(got) - Counter(expected)
    assert not missing and not extra, (f"{what}: the records handed over differ from what the peer sent: missing "
                                       f"{list(missing.elements())[:3]}, extra {list(extra.elements())[:3]}")  # fmt: skip


def _plus(a: Expected, b: Expected) -> Expected:
    if isinstance(a, int) or isinstance(b, int):
        return (a if isinstance(a, int) else len(a)) + (b if isinstance(b, int) else len(b))
    return a + b


async def _cycle(what: str, plugin: Onramp, peer: OnrampPeer, config: PluginConfig, sink: CheckedSink, expected: Expected, cycle: int,
                 timeout: float) -> None:  # fmt: skip
    probe = sink.probe
    probe.out, probe.handed, probe.settled = [], 0, []
    try:
        await asyncio.wait_for(plugin.start(), timeout)
    except TimeoutError:
        raise AssertionError(f"{what}: start() did not return within {timeout:g}s") from None
    probe.running = True
    run = asyncio.ensure_future(plugin.run(sink))
    await _until(lambda: plugin.ready or run.done(), timeout, f"{what}: ready did not become True within {timeout:g}s of run()")
    assert plugin.ready, f"{what}: run() ended without ready becoming True ({run.exception() if not run.cancelled() else 'cancelled'!r})"
    try:
        fed = await asyncio.wait_for(peer.feed(config, cycle), timeout)  # at once: ready means it takes input now
    except AssertionError:  # the peer's own checks
        raise
    except Exception as exc:
        raise AssertionError(f"{what}: ready was True, but its peer could not send to it: {exc!r}") from exc
    expected = _plus(expected, fed)
    want = expected if isinstance(expected, int) else len(expected)
    if plugin.finite:
        done, _ = await asyncio.wait({run}, timeout=timeout)
        assert done, f"{what}: a finite onramp's run() must end by itself; it ran for {timeout:g}s ({len(probe.out)} records)"
    else:
        await _until(lambda: len(probe.out) >= want or run.done(), timeout,
                     f"{what}: handed over {len(probe.out)} of {want} records within {timeout:g}s")  # fmt: skip
        await asyncio.sleep(QUIET)
        assert not run.done(), f"{what}: run() of an onramp that is not finite returned by itself ({run.exception() if not run.cancelled() else ''!r})"
        run.cancel()
        done, _ = await asyncio.wait({run}, timeout=timeout)
        assert done, f"{what}: run() did not end within {timeout:g}s of being cancelled"
    if not run.cancelled() and run.exception() is not None:
        raise AssertionError(f"{what}: run() raised {run.exception()!r}") from run.exception()
    probe.running = False
    await sink.runner.end_of_stream()  # what the runtime does after run(): a partial last record is flushed
    probe.raise_problems(what)
    _compare(what, probe.out, expected, plugin.finite)
    await _until(lambda: len(probe.settled) >= probe.handed, timeout,
                 f"{what}: {probe.handed - len(probe.settled)} of {probe.handed} ack tokens never came back")  # fmt: skip
    await asyncio.sleep(0.05)  # a token that would come back twice
    assert len(probe.settled) == probe.handed, f"{what}: {len(probe.settled)} acks/fails for {probe.handed} tokens"
    probe.raise_problems(what)
    await asyncio.wait_for(plugin.stop(), timeout)
    await asyncio.wait_for(plugin.stop(), timeout)  # twice: the runtime may stop an onramp that stopped itself


async def check_onramp(onramp_cls: type[Onramp], config: Callable[[], dict[str, Any]], peer: OnrampPeer | None = None, *,
                       base_dir: Path | None = None, preprocessors: list[str] | None = None, fail_every: int = 2,
                       timeout: float = 10.0) -> None:  # fmt: skip
    """The suite as a coroutine (``onramp_contract`` runs it in a loop of its own); see the module's doc.

    ``preprocessors``: names framing the onramp's streams (default: its ``default_preprocessors``);
    ``fail_every``: every so many hand-overs are failed rather than acked (0: none).
    """
    what = f"onramp {onramp_cls.__name__}"
    peer = peer or OnrampPeer()
    describes_itself(onramp_cls, "onramps", config(), onramp_cls.default_preprocessors)
    metrics = Metrics()
    services = metrics
    unstarted = onramp_cls(validated(onramp_cls, config), context(base_dir, services))
    assert unstarted.ready is False, f"{what}: ready must be False before start()"
    assert isinstance(unstarted.finite, bool), f"{what}: finite must be a bool"
    with touches_nothing(f"{what}: check()"):
        unstarted.check()
    await stops_unstarted(what, unstarted.stop, timeout)
    cfg = validated(onramp_cls, config)
    plugin = onramp_cls(cfg, context(base_dir, services))
    with touches_nothing(f"{what}: check()"):
        plugin.check()  # before the peer made anything: a config is checked where its files may not exist
    names = onramp_cls.default_preprocessors if preprocessors is None else tuple(preprocessors)
    pre = [registry.load("preprocessors", n)() for n in names]
    spec = ComponentSpec(COMPONENT_ID, "onramp", onramp_cls.name, cfg, {}, Position("contract", 1, 1), codec="binary")
    probe = SinkProbe(plugin)
    try:
        expected = await peer.prepare(cfg)
        await _cycle(what, plugin, peer, cfg, runtime_sink(probe, spec, pre, fail_every, metrics), expected, 0, timeout)
        if not plugin.finite:  # the runtime restarts a failed source: stop(), start(), run() on the same instance
            await _cycle(f"{what} (after a restart)", plugin, peer, cfg, runtime_sink(probe, spec, pre, fail_every, metrics), [], 1, timeout)
    finally:
        try:
            await asyncio.wait_for(plugin.stop(), timeout)
        finally:
            await peer.close()


def onramp_contract(onramp_cls: type[Onramp], config: Callable[[], dict[str, Any]], peer: OnrampPeer | None = None, *,
                    base_dir: Path | None = None, preprocessors: list[str] | None = None, fail_every: int = 2,
                    timeout: float = 10.0) -> None:  # fmt: skip
    """Assert the onramp contract for ``onramp_cls`` (see the module's doc); runs its own event loop.

    ``config`` makes the onramp's options as written in YAML (called for each instance);
    ``peer`` is the other side (default: none, for an onramp that makes its records itself);
    ``base_dir`` is the folder relative paths resolve against (default: the cwd).
    """
    asyncio.run(check_onramp(onramp_cls, config, peer, base_dir=base_dir, preprocessors=preprocessors, fail_every=fail_every,
                             timeout=timeout))  # fmt: skip
