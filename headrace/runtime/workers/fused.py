"""The fused per-record fast path of a worker segment (see ``FusedChain``)."""

from __future__ import annotations

import itertools
import time
from array import array
from typing import TYPE_CHECKING, Any

from headrace.contract import tracked
from headrace.contract.codec import ViewLoader
from headrace.contract.patch import OPEN_OR_WS as _OPEN_OR_WS
from headrace.contract.patch import JobNames, Patch, materialize, names_may_be_escaped, needle, splice_at
from headrace.contract.stage import STAGE_ERRORS, Ev
from headrace.contract.tracked import READONLY_WROTE, ReadonlyViolation, TrackedDict, TrackedList
from headrace.runtime.batch import share_equal, unshare
from headrace.runtime.chain import ChainExecutor, Counts, NodeCounts
from headrace.runtime.workers.wire import UNCHANGED, Output, Request, Response

if TYPE_CHECKING:
    from headrace.runtime.workers.program import SegmentProgram




class FusedChain:
    """A chain of plain synchronous python stages, run one event at a time through all of them.

    The common segment (decode -> ``def`` stages -> encode) needs no ``Ev`` per event and no
    list per stage: each record is decoded, passed through every function, and either
    noted as unchanged (its input index only: the parent sends its original bytes) or
    encoded, before the next record is decoded. Its objects die while still in cache.
    Results other than "the event" (None, a list, an exception, ``headrace.emit``) take
    the same routes as in the batch-wise path, with the same counts.
    """

    __slots__ = ("adapt", "blind", "fns", "ids", "ingest", "meta", "metas", "outputs", "patch", "plain_meta", "prog", "rests", "src", "stage", "viewers", "views")

    def __init__(self, prog: SegmentProgram, fns: list[tuple[Any, bool, bool]], views: bool = False, blind: bool = False) -> None:
        self.prog = prog
        self.fns = fns
        self.views = views  # every stage is readonly and accepts a lazy view of the record
        self.patch = False  # the chain is one appender stage: it gets the view in a Patch (headrace.contract.patch)
        # no stage names its meta: none is built per record (only for an event that leaves by err, emit or
        # fan-out), and the events leave with the metas the parent sent (which stay in the parent)
        self.blind = blind
        self.metas: Any = None  # the job's metas as sent, while a blind chain runs
        self.viewers: dict[str, ViewLoader | None] = {}  # codec name -> its view loader (None: it has none)
        self.ids = [st.id for st in prog.stages]
        self.outputs: dict[tuple[str, str], list[Ev]] = {}
        self.meta: dict[str, Any] | None = {}  # the running record's (None in a blind chain: see meta_of)
        self.src = 0
        self.stage = 0
        self.ingest: array[int] = array("q")
        self.rests: dict[int, ChainExecutor] = {}
        self.plain_meta: frozenset[int] = frozenset()  # stages after which views stored into meta become plain values
        # tracking skipped while nearly every record is written (not when a readonly stage relies on it)
        self.adapt: tracked.Adaptive | None = None if any(ro and tr for _, ro, tr in fns) else tracked.Adaptive()

    def rest(self, k: int) -> ChainExecutor:
        """The executor of stages ``k..`` (what a fan-out's items go through, batch-wise)."""
        ex = self.rests.get(k)
        if ex is None:
            ex = self.rests[k] = ChainExecutor(self.prog.stages[k:])
        return ex

    @classmethod
    def build(cls, prog: SegmentProgram) -> FusedChain | None:
        """The fused chain of ``prog`` when every stage offers a per-record function, else None."""
        offers = [st.per_record() for st in prog.stages]
        if any(o is None for o in offers):
            return None
        fns = [(o.fn, o.readonly, o.tracks) for o in offers if o is not None]
        views = all(o.views for o in offers if o is not None)
        patch = any(o.patch for o in offers if o is not None)
        if patch and len(offers) > 1:  # an appender among other stages: every stage gets tracked dicts
            views = False
        chain = cls(prog, fns, views, not any(o.meta for o in offers if o is not None))
        chain.patch = patch and views
        chain.plain_meta = frozenset(k for k, o in enumerate(offers[:-1]) if o is not None and o.meta_views)
        return chain

    def meta_of(self, meta: dict[str, Any] | None, i: int) -> dict[str, Any]:
        """Record ``i``'s meta: ``meta``, or in a blind chain (None) the one as sent, for an event
        that leaves by err, emit or fan-out (the caller copies it before changing it)."""
        if meta is not None:
            return meta
        return {} if self.metas is None else self.metas[i]

    def emit(self, port: str, event: Any, meta: dict[str, Any] | None) -> None:
        """``headrace.emit()`` from inside one of the functions."""
        base = dict(self.meta_of(self.meta, self.src))
        if meta:
            base.update(meta)
        sid = self.ids[self.stage]
        self.outputs.setdefault((sid, port), []).append(Ev(event, base, self.src, None, self.ingest[self.src]))

    def execute(self, req: Request, ingest: array[int], t0: int) -> Response:
        from headrace import _emit

        prog = self.prog
        codec = prog.codec(req.codec)
        decode, errors = codec.loader() if self.views else codec.loader_for(req.blob)  # views: the view loader decides
        viewer = None
        if self.views:
            if req.codec not in self.viewers:
                self.viewers[req.codec] = codec.view_loader()
            viewer = self.viewers[req.codec]
        plain: tuple[type[BaseException], ...] = (*errors, RecursionError)
        caught = plain
        if viewer is not None:  # its parser straight, its recovery only for what that refuses
            decode, caught = viewer.parse, (*viewer.errors, RecursionError)
        encode = prog.transit_encoder(req.codec)  # out leaves in the input codec: an exit's codec is never a schema codec's
        fast, refused = (codec.fast_encoder() if codec.carries_any else None) or (encode, ())  # refused: encode decides
        patch0 = self.patch and viewer is not None
        if patch0:
            assert viewer is not None
            to_plain = viewer.plain
            obj_view = viewer.object_type
            whole = codec.loader()[0]

            def encode_alone(fields: dict[str, Any]) -> bytes:
                try:
                    data = fast(fields)
                except refused:
                    data = None
                return data if data is not None else encode(fields)
        lens = array("I")
        lens.frombytes(req.lens)
        # simdjson parses a bytes slice with ~3k fewer instructions than a memoryview slice (it pads
        # a copy of the view); orjson takes views about as fast, and then the blob needs no copy
        mv: bytes | memoryview = req.blob
        pos = req.start
        if not codec.takes_buffer or viewer is not None:
            if not isinstance(mv, bytes):  # a view: bytes once (the worker hands over the message itself)
                mv, pos = bytes(memoryview(mv)[pos:]), 0
        elif pos:
            mv, pos = memoryview(mv)[pos:], 0
        # a name with a backslash escape in the job: names may be spelled so, a byte search misses them
        escapes = patch0 and (not isinstance(mv, bytes) or names_may_be_escaped(mv))
        job = JobNames(mv, escapes) if patch0 else None  # each new field's name searched once in the whole job
        # the appender's Patch, one for the job (the proof keeps the stage from holding on to it), and the
        # tail of the last record spliced: a stage setting the same immutable value (True, a constant)
        # again gets the same bytes without encoding or looking them up
        keep = Patch(None)
        present = job.present if job is not None and not escapes else None
        # while every out event so far is a record spliced with the same tail, only where each is cut is kept
        # (the parent, which holds the records, splices them); the first other out event ends that (_unsplice)
        spliced: array[int] | None = array("i") if patch0 and req.keeps_records else None
        common = b""
        base = pos
        last_key: Any = _FAILED
        last_val: Any = _FAILED
        last_tail = b""
        blind = self.blind
        if blind:
            self.metas, metas = req.metas, None
        else:
            metas = unshare(req.metas) if req.metas is not None else None  # stages may write to them
        fns = self.fns
        # records reach the stages as tracked values (not views): one returned unwritten leaves as its bytes
        wrap = viewer is None and any(tr for _, _, tr in fns)
        if wrap and self.adapt is not None and not self.adapt.track_next():
            wrap = False
            fns = [(fn, ro, False) for fn, ro, _ in fns]
        ids = self.ids
        nst = len(fns)
        single = nst == 1
        fn0, ro0, tr0 = fns[0]
        dirty = tracked.DIRTY  # tracked.clean() / written(), inlined: a call each per record shows
        outputs: dict[tuple[str, str], list[Ev]] = {}
        self.outputs = outputs
        self.ingest = ingest
        entered = [0] * nst  # events each stage received
        errs = [0] * nst
        dropped = [0] * nst
        failures: list[tuple[int, str]] = []
        out_src: array[int] = array("I")
        out_metas: list[Any] = []  # None for an event of a blind chain (its meta as sent)
        # the out events encoded anew: their positions in out and the lengths of their encodings (the rest are unchanged)
        changed_pos: array[int] = array("I")
        changed_len: array[int] = array("i")
        parts: list[bytes] = []
        unencodable: list[tuple[int, Ev]] = []  # (place among the out events, event the codec cannot hold)
        sync = _emit.sync
        sync.fused = self
        value = result = p = None
        enc: bytes | None
        try:
            for i, n in enumerate(lens):
                end = pos + n
                raw = mv[pos:end]
                pos = end
                value = result = p = keep.view = None  # the previous record's view dies first (a Patch holds one too): its parser is reused
                try:
                    value = decode(raw)
                except caught as exc:
                    if viewer is None:
                        failures.append((i, codec.reason(exc)))
                        continue
                    try:
                        value = viewer.recover(raw, exc)  # type: ignore[arg-type]
                    except Exception as exc2:
                        failures.append((i, codec.reason(exc2)))
                        continue
                    finally:
                        decode = viewer.parse  # recovery may have taken a fresh parser
                except Exception as exc:  # whatever a codec raises for one record concerns that record only
                    failures.append((i, codec.reason(exc)))
                    continue
                if wrap:
                    t = type(value)
                    if t is dict:
                        value = TrackedDict(value)
                    elif t is list:
                        value = TrackedList(value)
                meta = None if blind else {} if metas is None else metas[i]
                self.meta = meta
                self.src = i
                if patch0:  # one appender stage: its fields spliced into the record's bytes (headrace.contract.patch)
                    if type(value) is obj_view:
                        p = keep
                        p.view = value
                        p.adds = {}
                    else:  # not an object (a list, a scalar, a record only orjson reads): plain, and encoded again
                        value = to_plain(value)
                    try:
                        result = fn0(value if p is None else p, meta)
                    except STAGE_ERRORS as exc:
                        errs[0] += 1
                        ev = Ev(value, self.meta_of(meta, i), i, raw, ingest[i])  # type: ignore[arg-type]
                        outputs.setdefault((ids[0], "err"), []).append(ev.fail(ids[0], exc))
                        continue
                    if p is not None and result is p:
                        adds = p.adds
                        if not adds:  # nothing set: the record leaves as its bytes
                            if spliced is not None:
                                _unsplice(spliced, common, out_src, mv, lens, base, parts, changed_pos, changed_len)
                                spliced = None
                            out_src.append(i)
                            out_metas.append(meta)
                            continue
                        at = -1
                        tail = b""
                        if present is not None and len(adds) == 1 and raw[-1] == 0x7D and raw[-2] not in _OPEN_OR_WS:
                            # splice_at's common case inline: one field, no backslash in the job, a record ending ...x}
                            if adds.get(last_key, _ABSENT) is last_val and not present.get(last_key, True):
                                # the last record's field again, a name no record of the job spells: its tail again
                                at, tail = len(raw) - 1, last_tail
                            else:
                                for fkey, fval in adds.items():
                                    hit = present.get(fkey)
                                    if hit is None:
                                        hit = job.has(fkey)  # type: ignore[union-attr]
                                    if hit and needle(fkey) in raw and fkey in set(value.keys()):  # type: ignore[union-attr]
                                        break  # a field the record has: decoded whole, below
                                    if fkey is last_key and fval is last_val:
                                        at, tail = len(raw) - 1, last_tail
                                    else:
                                        cut = splice_at(raw, p, to_plain, encode_alone, escapes, job)  # type: ignore[arg-type]
                                        if cut is not None:
                                            at, tail = cut
                                            if fval.__class__ in _IMMUTABLE:
                                                last_key, last_val, last_tail = fkey, fval, tail
                        else:
                            cut = splice_at(raw, p, to_plain, encode_alone, escapes, job)  # type: ignore[arg-type]
                            if cut is not None:
                                at, tail = cut
                        if at >= 0:
                            if spliced is not None:
                                if not spliced:
                                    common = tail
                                if tail is common or tail == common:
                                    spliced.append(at)
                                    out_src.append(i)
                                    out_metas.append(meta)
                                    continue
                                _unsplice(spliced, common, out_src, mv, lens, base, parts, changed_pos, changed_len)
                                spliced = None
                            enc = raw[:at] + tail  # type: ignore[operator]
                            parts.append(enc)
                            changed_pos.append(len(out_src))
                            changed_len.append(len(enc))
                            out_src.append(i)
                            out_metas.append(meta)
                            continue
                        try:  # a field it had, or a value alone unwritable: the record whole, the fields set on it
                            result = materialize(whole(raw), p, to_plain)
                        except caught as exc:  # the full decoder refuses what the view's parser took: the record fails
                            failures.append((i, codec.reason(exc)))
                            continue
                    if spliced is not None and result is not None:  # an out event of another kind follows
                        _unsplice(spliced, common, out_src, mv, lens, base, parts, changed_pos, changed_len)
                        spliced = None
                    changed = True
                    k = 0
                elif single:  # one function: the loop below, unrolled (its received count is taken at the end)
                    if tr0:
                        dirty[0] = False
                    try:
                        result = fn0(value, meta)
                    except STAGE_ERRORS as exc:
                        errs[0] += 1
                        ev = Ev(value, self.meta_of(meta, i), i, raw, ingest[i])  # type: ignore[arg-type]
                        outputs.setdefault((ids[0], "err"), []).append(ev.fail(ids[0], exc))
                        continue
                    wrote = tr0 and dirty[0]
                    if result is value and (ro0 or tr0) and not wrote:
                        out_src.append(i)
                        out_metas.append(meta)
                        continue
                    if wrote and ro0:
                        errs[0] += 1
                        ev = Ev(value, self.meta_of(meta, i), i, None, ingest[i])
                        outputs.setdefault((ids[0], "err"), []).append(ev.fail(ids[0], ReadonlyViolation(READONLY_WROTE)))
                        continue
                    changed = True
                    k = 0
                else:
                    changed = False
                    k = -1
                    result = value
                    for k in range(nst):
                        fn, ro, tr = fns[k]
                        self.stage = k
                        entered[k] += 1
                        wrote = False
                        if tr:
                            dirty[0] = False
                        try:
                            result = fn(value, meta)
                            wrote = tr and dirty[0]
                            if wrote and ro:
                                raise ReadonlyViolation(READONLY_WROTE)
                        except STAGE_ERRORS as exc:
                            errs[k] += 1
                            ev = Ev(value, self.meta_of(meta, i), i, None if changed or wrote else raw, ingest[i])  # type: ignore[arg-type]
                            ev.fail(ids[k], exc)
                            outputs.setdefault((ids[k], "err"), []).append(ev)
                            result = _FAILED
                            break
                        if viewer is not None and meta and k in self.plain_meta:  # the next stage reads meta as dicts and lists
                            for mk, mval in meta.items():
                                meta[mk] = viewer.plain(mval)
                        if result is value and (ro or tr) and not wrote:
                            continue
                        changed = True
                        if result is None or isinstance(result, list):
                            break
                        value = result
                    if result is _FAILED:
                        continue
                if result is None:
                    dropped[k] += 1
                    continue
                if isinstance(result, list):  # fan-out: the items continue through the rest, batch-wise
                    evs = [Ev(item, dict(self.meta_of(meta, i)), i, None, ingest[i]) for item in result]
                    sync.fused = None  # the rest runs batch-wise: a headrace.emit() there names its own stage
                    try:
                        rest_out, rest_counts = self.rest(k + 1).run(evs) if k + 1 < nst else ({}, {})
                    finally:
                        sync.fused = self
                    last = ids[-1]
                    finals = rest_out.pop((last, "out"), []) if k + 1 < nst else evs
                    for key, extra in rest_out.items():
                        outputs.setdefault(key, []).extend(extra)
                    for sid, c in rest_counts.items():
                        j = ids.index(sid)
                        entered[j] += c.received
                        errs[j] += c.errors
                        dropped[j] += c.dropped
                    for ev in finals:
                        try:
                            data = encode(ev.value)
                        except STAGE_ERRORS:
                            unencodable.append((len(out_src), ev))  # tried again by the batch-wise encoder, which hands it back as a value
                            continue
                        parts.append(data)
                        changed_pos.append(len(out_src))
                        changed_len.append(len(data))
                        out_src.append(i)
                        out_metas.append(ev.meta)
                    continue
                if changed:
                    try:
                        enc = fast(result)
                    except refused:
                        enc = None
                    except STAGE_ERRORS:
                        unencodable.append((len(out_src), Ev(result, self.meta_of(meta, i), i, None, ingest[i])))  # see above
                        continue
                    if enc is None:  # the fast encoder refused it: the codec decides
                        try:
                            enc = encode(result)
                        except STAGE_ERRORS:
                            unencodable.append((len(out_src), Ev(result, self.meta_of(meta, i), i, None, ingest[i])))
                            continue
                    parts.append(enc)
                    changed_pos.append(len(out_src))
                    changed_len.append(len(enc))
                out_src.append(i)
                out_metas.append(meta)
        finally:
            sync.fused = None
            self.metas = None
        if wrap and self.adapt is not None:
            self.adapt.saw(len(lens), len(out_src) - len(changed_len))
        sent_back = self._blind_metas(req, out_src, out_metas) if blind else out_metas
        if single:
            entered[0] += len(lens) - len(failures)
        out_lens: array[int] | None = None
        if spliced:  # every out event spliced with one tail: the parent splices them (``Output.cuts``)
            out_lens = spliced
        elif len(changed_len) == len(out_src) and changed_len:  # every out event encoded anew (a writer): in order
            out_lens = changed_len
        elif changed_len or len(out_src) != len(lens):  # else each input came out once, in order, unchanged
            out_lens = array("i", [UNCHANGED]) * len(out_src)
            for at, ln in zip(changed_pos, changed_len, strict=True):
                out_lens[at] = ln
        resp = self._respond(req, t0, outputs, entered, errs, dropped, failures,
                             (out_src, out_lens, share_equal(sent_back) if sent_back is not None and any(sent_back) else None),
                             parts, unencodable, common if spliced else None)  # fmt: skip
        if blind and sent_back is None:
            for o in resp.outputs:
                if o.port == "out" and o.node == ids[-1] and o.metas is None and o.codec == req.codec:
                    o.metas_as_sent = req.metas is not None
        return resp

    def _blind_metas(self, req: Request, out_src: array[int], out_metas: list[Any]) -> list[Any] | None:
        """The metas of a blind chain's out events: None when each input left at most once (the
        parent keeps its own), else each event's (a fan-out item's own copy, the others as sent)."""
        if req.metas is None or len(set(out_src)) == len(out_src):
            return None
        metas = req.metas
        return [m if m is not None else metas[i] for i, m in zip(out_src, out_metas, strict=True)]

    def _respond(self, req: Request, t0: int, outputs: dict[tuple[str, str], list[Ev]], entered: list[int], errs: list[int],
                 dropped: list[int], failures: list[tuple[int, str]], out: tuple[array[int], array[int] | None, list[dict[str, Any]] | None],
                 parts: list[bytes], unencodable: list[tuple[int, Ev]], tail: bytes | None = None) -> Response:  # fmt: skip
        """``tail``: every out event is spliced with it, ``out``'s lens being where each is cut."""
        ids = self.ids
        last = ids[-1]
        out_src, out_lens, out_metas = out
        counts: Counts = {}
        for k, sid in enumerate(ids):  # a node sent to out what entered the next one (the last one's out: counted by its router)
            counts[sid] = NodeCounts(entered[k], entered[k + 1] if k + 1 < len(ids) else 0, errs[k], dropped[k])
        outs: list[Output] = []
        blob = b"".join(parts)

        def more(evs: dict[tuple[str, str], list[Ev]]) -> list[Output]:  # through the batch-wise encoder, after the blob so far
            nonlocal blob
            resp = self.prog.encode(req, evs, counts, [], t0)
            for o in resp.outputs:
                o.start += len(blob)
            blob += resp.blob
            return resp.outputs

        if tail is not None:
            assert out_lens is not None and not unencodable
            outs.append(Output(last, "out", out_src.tobytes(), b"", out_metas, req.codec, 0, cuts=out_lens.tobytes(), tail=tail))
        elif out_lens is None:  # the whole job passed through untouched
            outs.append(Output(last, "out", b"", b"", out_metas, req.codec, 0, identity=True))
        elif not unencodable:
            if len(out_src):
                outs.append(Output(last, "out", out_src.tobytes(), out_lens.tobytes(), out_metas, req.codec, 0))
        else:  # runs of encoded events, and between them the events handed back as values: the order stays
            starts, at = [], 0
            for ln in out_lens:
                starts.append(at)
                at += ln if ln != UNCHANGED else 0
            starts.append(at)
            cuts = sorted({c for c, _ in unencodable} | {0, len(out_src)})
            for a, b in [*itertools.pairwise(cuts), (cuts[-1], cuts[-1])]:
                here = [ev for c, ev in unencodable if c == a]  # they came before the out event at ``a``
                if here:
                    outs.extend(more({(last, "out"): here}))
                if b > a:
                    metas = out_metas[a:b] if out_metas is not None else None
                    outs.append(Output(last, "out", out_src[a:b].tobytes(), out_lens[a:b].tobytes(), metas, req.codec, starts[a]))
        if outputs:  # err and emitted ports
            outs.extend(more(outputs))
        return Response(req.job_id, time.process_time_ns() - t0, outs, failures, counts, blob)


def _unsplice(cuts: array[int], tail: bytes, out_src: array[int], mv: bytes | memoryview, lens: array[int], base: int, parts: list[bytes],
              changed_pos: array[int], changed_len: array[int]) -> None:  # fmt: skip
    """The out events so far (all spliced with ``tail``) as encodings, in ``parts``: the job goes on another way."""
    starts = list(itertools.accumulate(lens, initial=base))
    for j, (s, cut) in enumerate(zip(out_src, cuts, strict=True)):
        enc = mv[starts[s] : starts[s] + cut] + tail  # type: ignore[operator]
        parts.append(enc)
        changed_pos.append(j)
        changed_len.append(len(enc))


_FAILED = object()
_ABSENT = object()  # not _FAILED: a field missing from the adds is never the last value unset
_IMMUTABLE = (bool, int, str, type(None))  # a value of these is the same bytes whenever it is the same object
