"""The offramp contract suite: what the runtime relies on from every offramp, built-in or plugin.

Call it from a plugin's own tests with the plugin class, a factory of its options (as
written in YAML; called once per instance the suite makes) and a peer, what is on the other
side (a server it writes to, a folder it writes in)::

    from headrace.testing import OfframpPeer, offramp_contract

    class Folder(OfframpPeer):
        def __init__(self, path):
            self.path = path

        async def received(self):  # the records the peer holds, unframed
            return self.path.read_bytes().splitlines() if self.path.exists() else []

    def test_my_offramp_keeps_the_contract(tmp_path):
        offramp_contract(MyOfframp, lambda: {"path": str(tmp_path / "out.txt")}, Folder(tmp_path / "out.txt"))

It raises ``AssertionError`` naming the broken invariant. What it checks:

- the declarations (name, summary, an example that validates, a ``Config`` refusing unknown
  keys, default postprocessors that exist, ``frames_itself``/``takes_nbytes`` bools and
  ``coalesce_events`` a count), and that ``check()`` opens no file or socket;
- ``stop()`` is safe without ``start()``, and twice;
- after ``start()``, ``write`` (called as the runtime calls it: framed by the default
  postprocessors, or one record per event through ``self.postprocess`` for an offramp that
  ``frames_itself``; with metas, and with ``metas=None``) returns None or rejections with
  valid, distinct event indices, or raises ``PartialWrite`` only with valid, disjoint
  ``delivered`` and ``rejected`` indices; ``flush()`` after writes;
- when it returns, the peer holds every record not rejected, once (when the peer can tell);
- an offramp that ``frames_itself`` runs every record it writes through ``self.postprocess``;
- ``retryable(exc)`` is a bool;
- while the peer is down (when the peer can take itself down), a write does not return
  success: it raises or rejects; once the peer is back, the runtime's retries (of what was
  not delivered) get every record there (at least once).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headrace import registry
from headrace.contract.framing import Postprocessor
from headrace.contract.metas import Metas
from headrace.contract.sink import Offramp, PartialWrite
from headrace.metrics.defs import Metrics
from headrace.runtime.offramp import SelfFraming
from headrace.testing.connector import context, describes_itself, stops_unstarted, touches_nothing, validated

POLL = 0.02
RETRY = 0.05  # seconds between the suite's retries of a failed write (the runtime backs off longer)
PROBES: tuple[BaseException, ...] = (ConnectionError("reset"), TimeoutError("slow"), OSError(5, "Input/output error"),
                                     BrokenPipeError(32, "Broken pipe"), ValueError("bad"))  # fmt: skip


class OfframpPeer:
    """The other side of the offramp under test. Override what applies; every method runs on the suite's event loop."""

    async def prepare(self, config: Any) -> None:
        """Before ``start()``: make what the offramp writes to (a server). ``config`` is the validated config model."""

    async def received(self) -> list[bytes] | None:
        """Every record the peer holds so far, unframed (lines split, bodies split); None when it cannot tell (a benchmark sink)."""
        return None

    async def fail(self) -> bool:
        """Take the peer down (stop the server); False when this peer cannot (the suite then skips that part)."""
        return False

    async def recover(self) -> None:
        """Bring the peer back after ``fail``."""

    async def close(self) -> None:
        """After the suite, passed or failed: release what ``prepare`` made."""


def sample_records(n: int, start: int = 0) -> list[bytes]:
    """Records of a typical shape: JSON objects with text, numbers and a character outside ASCII."""
    return [b'{"id":%d,"text":"r\xc3\xa9cord %d","v":%d.5}' % (i, i, i) for i in range(start, start + n)]


def sample_metas(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Metas of a typical shape: a word to route or name files by, a number, bytes (as Kafka keys are)."""
    return [{"k": "ab"[i % 2], "n": i, "kafka_key": b"key%d" % i} for i in range(start, start + n)]


class _Framing:
    """Runs records through the postprocessors as the runtime does, and notes which ones went through."""

    def __init__(self, plugin: Offramp, post: list[Postprocessor]) -> None:
        self.plugin = plugin
        self.post = post
        self.seen: Counter[bytes] = Counter()
        if plugin.frames_itself:  # the runtime hands it one record per event and frames groups through this
            framing = SelfFraming(post)

            def spy(records: list[bytes]) -> list[bytes]:
                self.seen.update(records)
                return framing(records)

            plugin.postprocess = spy

    def chunks(self, records: list[bytes]) -> list[bytes]:
        if self.plugin.frames_itself or not self.post:
            return records
        chunks = records
        for p in self.post:
            chunks = p.process(chunks)
        return chunks


def _indices(what: str, items: Any, events: int, call: str) -> list[int]:
    assert isinstance(items, list), f"{what}: {call} must be a list, got {type(items).__name__}"
    idx = []
    for item in items:
        assert isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str), f"{what}: {call} must hold (index, reason) pairs"
        idx.append(item[0])
    assert all(isinstance(i, int) and 0 <= i < events for i in idx), f"{what}: {call} names an index outside the {events} events: {idx[:5]}"
    assert len(idx) == len(set(idx)), f"{what}: {call} names an event twice"
    return idx


async def _write(what: str, plugin: Offramp, framing: _Framing, records: list[bytes], metas: Metas | None,
                 timeout: float) -> tuple[set[int], set[int], BaseException | None]:  # fmt: skip
    """One write as the runtime makes it: (delivered, rejected) event indices, and why the rest failed (None: nothing did)."""
    framing.seen.clear()
    chunks = framing.chunks(records)
    n = len(records)
    kwargs = {"nbytes": sum(map(len, chunks))} if plugin.takes_nbytes else {}
    try:
        result = await asyncio.wait_for(plugin.write(chunks, n, [1_000 + i for i in range(n)], metas, **kwargs), timeout)
    except TimeoutError:
        raise AssertionError(f"{what}: write() did not return within {timeout:g}s") from None
    except PartialWrite as partial:
        delivered = set(_indices(what, [(i, "") for i in partial.delivered], n, "PartialWrite.delivered"))
        rejected = set(_indices(what, partial.rejected, n, "PartialWrite.rejected"))
        assert not delivered & rejected, f"{what}: PartialWrite names events both delivered and rejected: {sorted(delivered & rejected)[:5]}"
        assert isinstance(partial.cause, BaseException), f"{what}: PartialWrite.cause must be an exception"
        return delivered, rejected, partial.cause
    except Exception as exc:
        return set(), set(), exc
    rejected = set(_indices(what, result, n, "the rejections write() returned")) if result is not None else set()
    if plugin.frames_itself:
        unframed = Counter(r for i, r in enumerate(records) if i not in rejected) - framing.seen
        assert not unframed, f"{what}: frames_itself is set, but records were written without self.postprocess: {list(unframed)[:2]}"
    return set(range(n)) - rejected, rejected, None


async def _settled(what: str, plugin: Offramp, framing: _Framing, records: list[bytes], metas: Metas | None,
                   timeout: float) -> list[bytes]:  # fmt: skip
    """Write until every event is delivered or rejected, retrying only the others, as the runtime does; the delivered records."""
    deadline = asyncio.get_running_loop().time() + timeout
    delivered: list[bytes] = []
    todo = list(range(len(records)))
    while todo:
        got, rejected, cause = await _write(what, plugin, framing, [records[i] for i in todo], [metas[i] for i in todo] if metas else None,
                                            timeout)  # fmt: skip
        delivered += [records[todo[i]] for i in sorted(got)]
        if cause is not None and not isinstance(plugin.retryable(cause), bool):
            raise AssertionError(f"{what}: retryable() must return a bool")
        if cause is not None and not plugin.retryable(cause):
            break  # the runtime sends the rest to err
        todo = [todo[i] for i in range(len(todo)) if i not in got and i not in rejected]
        if todo:
            assert asyncio.get_running_loop().time() < deadline, f"{what}: {len(todo)} records still fail after {timeout:g}s: {cause!r}"
            await asyncio.sleep(RETRY)
    return delivered


async def _holds(what: str, peer: OfframpPeer, want: list[bytes], exactly: bool, timeout: float) -> None:
    """The peer holds ``want`` (exactly those, once each; or at least those)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await peer.received()
        if got is None:
            return
        missing = Counter(want) - Counter(got)
        if not missing:
            break
        assert asyncio.get_running_loop().time() < deadline, (f"{what}: write() returned, but the peer does not hold {len(list(missing.elements()))} "
                                                               f"of its records (first {list(missing)[:1]})")  # fmt: skip
        await asyncio.sleep(POLL)
    extra = Counter(got) - Counter(want)
    assert not exactly or not extra, f"{what}: the peer holds records it was not sent, or twice: {list(extra.elements())[:3]}"


async def check_offramp(offramp_cls: type[Offramp], config: Callable[[], dict[str, Any]], peer: OfframpPeer | None = None, *,
                        base_dir: Path | None = None, postprocessors: list[str] | None = None, timeout: float = 10.0) -> None:  # fmt: skip
    """The suite as a coroutine (``offramp_contract`` runs it in a loop of its own); see the module's doc.

    ``postprocessors``: names framing what it writes (default: its ``default_postprocessors``).
    """
    what = f"offramp {offramp_cls.__name__}"
    peer = peer or OfframpPeer()
    describes_itself(offramp_cls, "offramps", config(), offramp_cls.default_postprocessors)
    for flag in ("frames_itself", "takes_nbytes"):
        assert isinstance(getattr(offramp_cls, flag), bool), f"{what}: {flag} must be a bool"
    assert isinstance(offramp_cls.coalesce_events, int) and offramp_cls.coalesce_events >= 0, f"{what}: coalesce_events must be a count"
    services = Metrics()
    unstarted = offramp_cls(validated(offramp_cls, config), context(base_dir, services))
    with touches_nothing(f"{what}: check()"):
        unstarted.check()
    await stops_unstarted(what, unstarted.stop, timeout)
    cfg = validated(offramp_cls, config)
    plugin = offramp_cls(cfg, context(base_dir, services))
    with touches_nothing(f"{what}: check()"):
        plugin.check()  # before the peer made anything: a config is checked where its peer may not exist
    names = offramp_cls.default_postprocessors if postprocessors is None else tuple(postprocessors)
    framing = _Framing(plugin, [registry.load("postprocessors", n)() for n in names])
    for exc in PROBES:
        assert isinstance(plugin.retryable(exc), bool), f"{what}: retryable({exc!r}) must return a bool"
    try:
        await peer.prepare(cfg)
        try:
            await asyncio.wait_for(plugin.start(), timeout)
        except TimeoutError:
            raise AssertionError(f"{what}: start() did not return within {timeout:g}s while its peer is up") from None
        records = sample_records(8) + sample_records(5, 8)
        delivered = await _settled(what, plugin, framing, records[:8], sample_metas(8), timeout)
        delivered += await _settled(what, plugin, framing, records[8:], None, timeout)  # the runtime passes None when no event has meta
        await asyncio.wait_for(plugin.flush(), timeout)
        await _holds(what, peer, delivered, True, timeout)
        if await peer.fail():
            more = sample_records(6, 13)
            got, rejected, cause = await _write(what, plugin, framing, more, sample_metas(6, 13), timeout)
            assert cause is not None or len(rejected) == len(more), (f"{what}: write() returned success for {len(got)} records "
                                                                      "while its peer was down")  # fmt: skip
            await peer.recover()
            delivered += [more[i] for i in sorted(got)]
            todo = [i for i in range(len(more)) if i not in got and i not in rejected]
            if cause is not None and plugin.retryable(cause):
                delivered += await _settled(f"{what} (peer back)", plugin, framing, [more[i] for i in todo],
                                            [sample_metas(6, 13)[i] for i in todo], timeout)  # fmt: skip
            await asyncio.wait_for(plugin.flush(), timeout)
            await _holds(f"{what} (peer back)", peer, delivered, False, timeout)
        await asyncio.wait_for(plugin.stop(), timeout)
        await asyncio.wait_for(plugin.stop(), timeout)
    finally:
        try:
            await asyncio.wait_for(plugin.stop(), timeout)
        finally:
            await peer.close()


def offramp_contract(offramp_cls: type[Offramp], config: Callable[[], dict[str, Any]], peer: OfframpPeer | None = None, *,
                     base_dir: Path | None = None, postprocessors: list[str] | None = None, timeout: float = 10.0) -> None:  # fmt: skip
    """Assert the offramp contract for ``offramp_cls`` (see the module's doc); runs its own event loop.

    ``config`` makes the offramp's options as written in YAML (called for each instance);
    ``peer`` is the other side (default: one that cannot tell what it got);
    ``base_dir`` is the folder relative paths resolve against (default: the cwd).
    """
    asyncio.run(check_offramp(offramp_cls, config, peer, base_dir=base_dir, postprocessors=postprocessors, timeout=timeout))
