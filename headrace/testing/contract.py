"""Contract suites: the invariants every operator and codec must hold, for built-ins and plugins alike.

Call them from a plugin's own tests::

    from headrace.testing import operator_contract, codec_contract

    def test_my_operator_keeps_the_contract():
        operator_contract(MyOperator, {"threshold": 3})

    def test_my_codec_keeps_the_contract():
        codec_contract(MyCodec, samples=[{"a": 1}, "text"], garbage=[b"\\xff"])

Each raises ``AssertionError`` naming the broken invariant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from headrace.contract.codec import Codec, DecodeError
from headrace.contract.config import PluginConfig
from headrace.contract.context import PluginContext
from headrace.contract.stage import Ev, Operator

UNKNOWN_KEY = "no_such_option_in_any_plugin"
NODE_ID = "contract.node"
PLACEMENTS = ("workers", "loop", "any")
RESERVED_PORTS = ("out", "err", "in")


def sample_events() -> list[tuple[Any, dict[str, Any]]]:
    """Events of the shape most configs see: JSON objects with a few fields, and meta."""
    levels = ("info", "debug", "error")
    return [({"id": i, "level": levels[i % 3], "host": f"h{i % 2}", "v": i * 1.5, "tags": ["a", str(i)]},
             {"class": levels[i % 3], "rate": 4, "n": i}) for i in range(12)]  # fmt: skip


def _rejects_unknown_keys(config_cls: type[PluginConfig], config: dict[str, Any], what: str) -> None:
    assert issubclass(config_cls, PluginConfig), f"{what}: Config must subclass PluginConfig"
    try:
        config_cls.model_validate({**config, UNKNOWN_KEY: 1})
    except ValidationError:
        return
    raise AssertionError(f"{what}: the config model accepts an unknown key (set extra='forbid', as PluginConfig does)")


class _Ports:
    def __init__(self) -> None:
        self.got: list[tuple[str, Ev]] = []

    def __call__(self, port: str, ev: Ev) -> None:
        self.got.append((port, ev))


def _check_outputs(what: str, op: Operator, ports: set[str], out: Any, emitted: _Ports, call: str) -> None:
    assert isinstance(out, list), f"{what}: {call} must return a list of Ev, got {type(out).__name__}"
    assert all(isinstance(ev, Ev) for ev in out), f"{what}: {call} returned something that is not an Ev"
    seen: set[int] = {id(ev) for ev in out}
    assert len(seen) == len(out), f"{what}: {call} returned the same event twice"
    for port, ev in emitted.got:
        assert port in ports, f"{what}: {call} emitted to '{port}', which is not a declared port ({', '.join(sorted(ports))})"
        assert isinstance(ev, Ev), f"{what}: {call} emitted something that is not an Ev to '{port}'"
        assert id(ev) not in seen, f"{what}: {call} sent one event object to two ports (copy it: downstream branches may change it)"
        seen.add(id(ev))
        if port == "err":
            error = ev.meta.get("error") if isinstance(ev.meta, dict) else None
            assert isinstance(error, dict) and error.get("stage") == op.id, (
                f"{what}: events on err must carry meta['error'] naming the stage (use Ev.fail(stage_id, exc))"
            )
    for ev in [*out, *(ev for _, ev in emitted.got)]:
        assert isinstance(ev.meta, dict), f"{what}: {call} returned an event whose meta is not a dict"
        if ev.raw is not None and _json(ev.value) is not None:
            assert orjson.loads(ev.raw) == _plain(ev.value), (
                f"{what}: {call} changed an event's value in place but kept its original bytes, which would leave "
                f"unchanged: assign ev.value (that clears ev.raw) or set ev.raw = None")


def operator_contract(op_cls: type[Operator], config: dict[str, Any], events: Iterable[tuple[Any, dict[str, Any]]] | None = None,
                      *, base_dir: Path | None = None) -> None:  # fmt: skip
    """Assert the operator contract for ``op_cls`` with the options ``config`` (as written in YAML).

    ``events`` are (value, meta) pairs to feed (default: ``sample_events()``); ``base_dir``
    is the folder relative paths and stage modules resolve against (default: the cwd).
    """
    what = f"operator {op_cls.__name__}"
    assert op_cls.name and op_cls.summary and op_cls.example, f"{what}: name, summary and example must be set (they feed the docs)"
    assert op_cls.default_placement in PLACEMENTS, f"{what}: default_placement must be one of {PLACEMENTS}"
    _rejects_unknown_keys(op_cls.Config, config, what)
    cfg = op_cls.Config.model_validate(config)
    extra = tuple(op_cls.ports_for(cfg))
    for port in extra:
        assert port not in RESERVED_PORTS, f"{what}: ports_for() may not declare '{port}' (out and err always exist)"
    ports = {"out", "err", *extra}
    op = op_cls(NODE_ID, cfg, PluginContext(NODE_ID, base_dir or Path.cwd()))
    op.check()
    pairs = list(events) if events is not None else sample_events()

    def feed() -> list[Ev]:  # with their original bytes, as a source gives them
        return [Ev(_copy(v), dict(m), i, _json(v), 1_000 + i) for i, (v, m) in enumerate(pairs)]

    op.setup()
    op.setup()  # a second setup (a reload, a respawned worker) must not fail
    emitted = _Ports()
    assert op.process([], emitted) == [] and not emitted.got, f"{what}: process([]) must return [] and emit nothing"
    for _ in range(2):  # state carried from one batch to the next must stay consistent
        emitted = _Ports()
        _check_outputs(what, op, ports, op.process(feed(), emitted), emitted, "process")
    emitted = _Ports()
    _check_outputs(what, op, ports, op.tick(2**62, emitted), emitted, "tick")
    emitted = _Ports()
    _check_outputs(what, op, ports, op.flush(emitted), emitted, "flush")
    emitted = _Ports()
    again = op.flush(emitted)
    assert again == [] and not emitted.got, f"{what}: a second flush must emit nothing (the first gave up everything held)"
    routed = op.route_metas([dict(m) for _, m in pairs])
    if routed is not None:
        assert set(routed) <= ports, f"{what}: route_metas() names undeclared ports {sorted(set(routed) - ports)}"
        indices = [i for idx in routed.values() for i in idx]
        assert len(indices) == len(set(indices)), f"{what}: route_metas() sends one event to two ports"
        assert all(0 <= i < len(pairs) for i in indices), f"{what}: route_metas() returned an index out of range"
    op.teardown()
    op.teardown()  # idempotent
    op.setup()  # usable again after a teardown
    emitted = _Ports()
    _check_outputs(what, op, ports, op.process(feed(), emitted), emitted, "process after teardown and setup")
    op.flush(_Ports())
    op.teardown()


def _json(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value, default=_plain_default)
    except TypeError:
        return None


def _plain_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples as lists), for comparing with its original bytes."""
    return orjson.loads(orjson.dumps(value, default=_plain_default))


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def codec_contract(codec_cls: type[Codec], samples: Sequence[Any], garbage: Sequence[bytes] = (),
                   config: dict[str, Any] | None = None, base_dir: Path | None = None) -> None:  # fmt: skip
    """Assert the codec contract: each sample survives encode -> decode (from bytes, and from a
    memoryview when the codec declares ``takes_buffer``), encoding is stable, and each ``garbage`` record raises
    ``DecodeError`` (not any other exception: that would fail the whole batch). ``config``: the
    codec's options (a schema file, ...), settled against ``base_dir`` as the config loader does."""
    what = f"codec {codec_cls.__name__}"
    assert codec_cls.name and codec_cls.summary, f"{what}: name and summary must be set"
    _rejects_unknown_keys(codec_cls.Config, config or {}, what)
    assert samples, f"{what}: give at least one sample value"
    cfg = codec_cls.settle(codec_cls.Config.model_validate(config or {}), PluginContext("contract", base_dir or Path.cwd()))
    codec = codec_cls(cfg)
    for sample in samples:
        data = codec.encode(sample)
        assert isinstance(data, bytes), f"{what}: encode({sample!r}) returned {type(data).__name__}, not bytes"
        back = codec.decode(data)
        assert back == sample, f"{what}: round trip changed {sample!r} into {back!r}"
        if codec_cls.takes_buffer:  # workers then pass records as memoryviews
            try:
                from_view = codec.decode(memoryview(data))  # type: ignore[arg-type]
            except Exception as exc:
                raise AssertionError(f"{what}: takes_buffer is set, but decoding a memoryview raised {type(exc).__name__}: {exc}") from None
            assert from_view == sample, f"{what}: takes_buffer is set, but decoding a memoryview gave {from_view!r}, not {sample!r}"
        assert codec.encode(back) == data, f"{what}: encoding is not stable for {sample!r}"
    for record in garbage:
        try:
            value = codec.decode(record)
        except DecodeError:
            continue
        except Exception as exc:
            raise AssertionError(f"{what}: decode({record!r}) raised {type(exc).__name__}, not DecodeError: {exc}") from None
        raise AssertionError(f"{what}: decode({record!r}) accepted garbage as {value!r}")
