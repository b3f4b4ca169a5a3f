"""The wire format between the parent and a worker: a pickled header, then blobs.

A request carries the records as one joined blob with their lengths (or pickled values when
an upstream loop stage already decoded them), plus metas and ingest times; a response carries,
per exit port, the input index of each output event and either its new encoding or
``UNCHANGED`` ("use your original bytes"), so untouched events are never re-encoded or copied back.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

from headrace.contract.metas import Metas
from headrace.runtime.chain import Counts

_LEN = struct.Struct("<I")
# how each message on a worker's socket is framed (as multiprocess's Connection.send_bytes does): its
# length, or -1 and then a 64-bit length; the supervisor writes and reads it, the worker too
FRAME = struct.Struct("!i")
FRAME64 = struct.Struct("!Q")
UNCHANGED = -1
TAP = "(tap)"  # an output's port: sampled copies of what a node inside the segment sent to the next one (never routed)
PICKLED = "(pickled)"  # an output's codec: values the job's codec could not hold, handed back as values


@dataclass
class Request:
    job_id: int
    segment: str
    codec: str
    lens: bytes  # array('I') of payload lengths
    blob: bytes | memoryview
    metas: Metas | None  # a list of dicts or ``MetaColumns`` (pickled as its columns)
    ingest: bytes  # array('q')
    values: list[Any] | None = None
    start: int = 0  # the records begin at this offset of ``blob`` (a worker passes the whole message)
    taps: dict[str, int] | None = None  # nodes inside the segment being tapped: node -> every n-th event of its out (``TAP`` outputs)
    shipments: dict[str, Any] | None = None  # codec key -> what its instance in the worker needs for this job (``Codec.shipment``)
    keeps_records: bool = False  # the parent holds the records as bytes: an answer may name a record's cut and tail instead of its bytes
    remote: bytes = b""  # the blobs are not in the message: the worker reads them from the daemon's memory, here (memread.locate)


@dataclass
class Output:
    node: str
    port: str
    src: bytes  # array('I') of input indices
    lens: bytes  # array('i'); UNCHANGED = original bytes
    metas: Metas | None
    codec: str
    start: int  # offset of this output's encodings in the response blob
    identity: bool = False  # every input, in order, unchanged: src and lens are left empty
    metas_as_sent: bool = False  # each event's meta is the one its input had (metas is None): the parent keeps its own
    # spliced: event j is its input's bytes cut at cuts[j] (array('i')), then ``tail`` (lens and the blob unused)
    cuts: bytes = b""
    tail: bytes = b""


@dataclass
class Response:
    job_id: int
    cpu_ns: int
    outputs: list[Output]
    failures: list[tuple[int, str]]  # decode failures: input index, reason
    counts: Counts  # per node: what it did with this job
    blob: bytes = b""
    fatal: str | None = None  # why the job failed as a whole: the segment raised outside any record, or the answer cannot be pickled
    recycle: str | None = None  # the worker exits after this answer and is replaced: worker.MEMORY_ERROR or worker.MAX_RSS
    stage_metrics: dict[str, Any] | None = None  # what the stages' headrace.metric updates were since the last answer
    unread: str | None = None  # the worker could not read the job from the daemon's memory (why): nothing was run, send it again
    wall_ns: int = 0  # wall time from the job read to its answer made (``cpu_ns`` and the time the worker waited for a core)

    def attach(self, msg: bytes, start: int) -> None:
        """Take the message this answer came in (its blobs begin at ``start``) as the blob, the
        outputs' offsets moved past the header: records are sliced from the message itself, not
        from a copy of their region."""
        self.blob = msg
        if start:
            for o in self.outputs:
                o.start += start


def pack(header: Any, *blobs: bytes | memoryview) -> list[bytes | memoryview]:
    """A message: the pickled header, then the blobs (the reader sees them as one)."""
    head = pickle.dumps(header, protocol=5)
    return [_LEN.pack(len(head)), head, *blobs]


def unpack_header(msg: bytes | memoryview) -> tuple[Any, int]:
    """The header, and the offset in ``msg`` where the blobs begin."""
    (n,) = _LEN.unpack_from(msg, 0)
    return pickle.loads(memoryview(msg)[4 : 4 + n]), 4 + n
