"""A worker segment: decode -> chain of stages -> encode, executed inside a worker process
(the parent side is ``segment``; what crosses between them, ``wire``)."""

from __future__ import annotations

import pickle
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headrace import registry
from headrace.contract.codec import Codec
from headrace.contract.context import PluginContext
from headrace.contract.metas import MetaColumns
from headrace.contract.stage import STAGE_ERRORS, Ev, Operator
from headrace.errors import safe_repr
from headrace.runtime.batch import share_equal, unshare
from headrace.runtime.chain import ChainExecutor, Counts, Outputs
from headrace.runtime.workers.fused import FusedChain
from headrace.runtime.workers.wire import PICKLED, TAP, UNCHANGED, Output, Request, Response


@dataclass
class NodeDef:
    id: str
    op: str
    config: Any
    base_dir: Path


@dataclass
class SegmentSpec:
    id: str
    nodes: list[NodeDef]
    # exit (node, port) -> codec to encode with there; None = the input codec
    exits: dict[tuple[str, str], str | None] = field(default_factory=dict)
    codecs: dict[str, Any] = field(default_factory=dict)  # codec key -> ProcessorSpec, for codecs with options


class SegmentProgram:
    """The instantiated stages of one segment inside one process."""

    def __init__(self, spec: SegmentSpec) -> None:
        self.spec = spec
        self.stages: list[Operator] = []
        for nd in spec.nodes:
            cls = registry.load("operators", nd.op)
            self.stages.append(cls(nd.id, nd.config, PluginContext(nd.id, nd.base_dir)))
        self.codecs: dict[str, Codec] = {}
        self.fused: FusedChain | None = None

    def codec(self, name: str) -> Codec:
        c = self.codecs.get(name)
        if c is None:
            c = self.codecs[name] = registry.make_codec(name, self.spec.codecs)
        return c

    def transit_encoder(self, key: str) -> Callable[[Any], bytes]:
        """How modified events leave in their input codec ``key`` for more stages: its ``encode``, or,
        for a codec that does not carry any value (a schema's), a refusal: they go on as values."""
        codec = self.codec(key)
        return codec.encode if codec.carries_any else _kept_as_value

    def setup(self) -> None:
        for st in self.stages:
            st.setup()
        self.fused = FusedChain.build(self)
        self.executor = ChainExecutor(self.stages)

    def teardown(self) -> None:
        for st in self.stages:
            st.teardown()

    def execute(self, req: Request) -> Response:
        if req.shipments:  # e.g. the registry schemas of this job's records, fetched by the parent
            for key, shipment in req.shipments.items():
                self.codec(key).receive(shipment)
        if self.fused is not None and self.fused.blind and self._fusable(req):  # no stage names meta: it says itself which metas are as sent
            return self._execute(req)
        if isinstance(req.metas, MetaColumns):  # each record's dict, built once (the stages may change them)
            req.metas = req.metas.materialize()
        # each input meta as pickle would send it back: outputs whose metas are all unchanged are not sent back
        before = [_pickle(m) for m in req.metas] if req.metas is not None else None
        resp = self._execute(req)
        if before is not None:
            _metas_as_sent(resp, before)
        return resp

    def _fusable(self, req: Request) -> bool:
        """Whether the fused chain runs ``req``: records as bytes, leaving in the codec they came in."""
        return req.values is None and not req.taps and self.spec.exits.get((self.stages[-1].id, "out")) in (None, req.codec)

    def _execute(self, req: Request) -> Response:
        t0 = time.process_time_ns()
        ingest = array("q")
        ingest.frombytes(req.ingest)
        if self.fused is not None and self._fusable(req):
            return self.fused.execute(req, ingest, t0)
        metas = unshare(req.metas) if req.metas is not None else None  # stages may write to them
        evs: list[Ev] = []
        failures: list[tuple[int, str]] = []
        if req.values is not None:
            for i, v in enumerate(req.values):
                evs.append(Ev(v, metas[i] if metas is not None else {}, i, None, ingest[i]))
        else:
            lens = array("I")
            lens.frombytes(req.lens)
            codec = self.codec(req.codec)
            # the codec's raw loader when it has one (no Python frame per record), else decode(); the whole
            # message is looked at, not sliced: a false alarm from the header costs only speed
            decode, _errors = codec.loader_for(req.blob)
            view = memoryview(req.blob)[req.start :]  # a view avoids a copy per record
            mv: bytes | memoryview = view if codec.takes_buffer else bytes(view)
            pos = 0
            append = evs.append
            for i, n in enumerate(lens):
                end = pos + n
                raw = mv[pos:end]
                pos = end
                try:
                    value = decode(raw)
                except Exception as exc:  # whatever a codec raises for one record concerns that record only
                    failures.append((i, codec.reason(exc)))
                    continue
                append(Ev(value, metas[i] if metas is not None else {}, i, raw, ingest[i]))  # type: ignore[arg-type]
        # nodes inside the segment tapped: their sampled copies leave as TAP outputs
        self.executor.tap_every, self.executor.tapped = req.taps or {}, {}
        try:
            outputs, counts = self.executor.run(evs)
        finally:
            self.executor.tap_every = {}
        for sid, copies in self.executor.tapped.items():
            outputs[(sid, TAP)] = copies
        return self.encode(req, outputs, counts, failures, t0)

    def encode(self, req: Request, outputs: Outputs, counts: Counts, failures: list[tuple[int, str]], t0: int) -> Response:
        parts: list[bytes] = []
        outs: list[Output] = []
        unencodable: dict[str, list[Ev]] = {}
        pos = 0

        def add(node: str, port: str, evs: list[Ev], codec: str | None = None) -> None:
            nonlocal pos
            exit_codec = codec or self.spec.exits.get((node, port))
            target = exit_codec or req.codec
            same = target == req.codec and req.values is None
            encode = _pickle if target == PICKLED else self.codec(target).encode if exit_codec else self.transit_encoder(target)
            metas = [ev.meta for ev in evs]
            any_meta = any(metas)
            if same and all(ev.raw is not None for ev in evs):  # nothing to encode: indices only
                src = array("I", [ev.src for ev in evs])
                outs.append(Output(node, port, src.tobytes(), array("i", [UNCHANGED]).tobytes() * len(evs), share_equal(metas) if any_meta else None,
                                   target, pos))  # fmt: skip
                return
            # runs of events in order: encoded ones, then (when the codec cannot hold a value) ones sent back as values
            src, lens, start = array("I"), array("i"), pos
            run_metas: list[dict[str, Any]] = []
            as_values: list[Ev] = []

            def flush() -> None:
                nonlocal src, lens, run_metas, start
                if len(src):
                    outs.append(Output(node, port, src.tobytes(), lens.tobytes(), share_equal(run_metas) if any_meta else None, target, start))
                    src, lens, run_metas = array("I"), array("i"), []
                if as_values:
                    add(node, port, as_values[:], PICKLED)
                    as_values.clear()
                start = pos

            for ev in evs:
                if same and ev.raw is not None:
                    data = None
                else:
                    try:
                        data = encode(ev.value)
                    except STAGE_ERRORS as exc:
                        if target == PICKLED:  # not even picklable: to err with the reason, as text
                            unencodable.setdefault(node, []).append(ev.fail(node, exc))
                        else:  # what this codec cannot hold goes back as the value (err port too): downstream decides, as on the loop
                            if len(src):
                                flush()
                            as_values.append(ev)
                        continue
                if as_values:
                    flush()
                if data is None:
                    lens.append(UNCHANGED)
                else:
                    parts.append(data)
                    lens.append(len(data))
                    pos += len(data)
                src.append(ev.src)
                run_metas.append(ev.meta)
            flush()

        for (node, port), evs in outputs.items():
            if evs:
                add(node, port, evs)
        for node, evs in list(unencodable.items()):
            del unencodable[node]
            for ev in evs:
                ev.value, ev.raw = safe_repr(ev.value), None
            add(node, "err", evs)  # as text, which nearly every codec carries
        for node, evs in list(unencodable.items()):  # not even as text in that codec: as the text's bytes
            del unencodable[node]
            add(node, "err", evs, "binary")
        return Response(req.job_id, time.process_time_ns() - t0, outs, failures, counts, b"".join(parts))


def _kept_as_value(value: Any) -> bytes:
    raise TypeError("a codec bound to a schema does not carry events between stages: handed on as a value")


def _pickle(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def _metas_as_sent(resp: Response, before: list[bytes]) -> None:
    """Mark outputs whose every meta pickles as its input's did (the same values, of the same types):
    the parent then uses the metas it sent and none cross back. An input that left by several
    outputs, or twice, keeps its metas in the answer (each copy its own dict in the parent)."""
    claimed: set[int] = set()
    for out in resp.outputs:
        if out.metas is None or out.codec == PICKLED:
            continue
        if out.identity:
            src: Any = range(len(out.metas))
        else:
            src = array("I")
            src.frombytes(out.src)
        if len(src) != len(out.metas) or len(set(src)) != len(src) or not claimed.isdisjoint(src):
            continue
        try:
            same = all(_pickle(m) == before[i] for i, m in zip(src, out.metas, strict=True))
        except Exception:  # a stage put a value that cannot be pickled in a meta: the answer says so (``_answer``), per record
            continue
        if same:
            out.metas, out.metas_as_sent = None, True
            claimed.update(src)
