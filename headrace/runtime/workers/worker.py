"""The worker process: configure segments, then execute jobs until told to stop.

Workers ignore SIGINT/SIGTERM (the parent stops them), die with the daemon (see
``lifeline``; and EOF on their pipe), and never touch asyncio. While a job executes, its id
is in the worker's shared ``slot``: when the worker dies, the parent blames that job and no
other. A worker that hit a ``MemoryError`` or grew past ``max_rss`` answers its job, says
so in the answer (``Response.recycle``), and exits; the parent starts a fresh one.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from headrace.contract.stage import Ev
from headrace.errors import describe_exception
from headrace.metric import updates as metric_updates
from headrace.runtime.heap import keep_freed_buffers
from headrace.runtime.workers import memread
from headrace.runtime.workers.lifeline import die_with_parent, release_forkserver
from headrace.runtime.workers.program import SegmentProgram, SegmentSpec
from headrace.runtime.workers.wire import FRAME, FRAME64, Request, Response, pack, unpack_header

CONFIGURE, JOB, STOP = "configure", "job", "stop"
IDLE = 0  # the slot's value between jobs
MEMORY_ERROR, MAX_RSS = "memory_error", "max_rss"  # why a worker recycles itself


def _alone_or_gone(daemon_pid: int) -> None:
    """Die with the fork server (and so with the daemon); exit now if either is gone already."""
    release_forkserver()
    if not die_with_parent():
        os._exit(0)
    try:
        os.kill(daemon_pid, 0)
    except ProcessLookupError:  # the daemon died before we got here
        os._exit(0)


class RssProbe:
    """This process's resident set size, read cheaply after each job (about 1 us)."""

    def __init__(self) -> None:
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)
        self.page = os.sysconf("SC_PAGE_SIZE")

    def __call__(self) -> int:
        return int(os.pread(self.fd, 64, 0).split()[1]) * self.page


def worker_main(conn: Any, index: int, daemon_pid: int, slot: Any = None, max_rss: int = 0, keep_heap: bool = False, nice: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _alone_or_gone(daemon_pid)
    if nice:  # below the parent's priority: it feeds every worker, and a parent waiting for a core starves them (daemon.worker_nice)
        try:
            os.nice(nice)
        except OSError as exc:  # a system call filter refuses it (a unit without setpriority): the worker runs as it is
            print(f"headrace worker {index}: cannot lower its priority (daemon.worker_nice: {nice}): {exc}; running at the daemon's", file=sys.stderr)
    programs: dict[str, SegmentProgram] = {}
    # decoded records are many small containers that die within their job: collecting the
    # young generation every 700 of them cost a quarter of a worker's time (bench 1)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    if keep_heap:  # jobs and answers of a few MiB each, many a second: no page faults for each (runtime/heap.py)
        keep_freed_buffers()
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    receive = receiver(sock)
    rss = RssProbe() if max_rss else None
    send = conn.send_bytes
    answering = 0  # the wall time the last answer took to make and send: counted with the next job's
    while True:
        try:
            msg = receive()
        except (EOFError, OSError):
            break
        got = time.monotonic_ns()
        (kind, payload), start = unpack_header(msg)
        if kind == JOB:
            req: Request = payload
            req.blob, req.start = msg, start  # the message itself: records are sliced from it, not copied first
            if req.remote:  # the records are in the daemon's memory (memread): one copy, out of there
                try:
                    req.blob, req.start = memread.read(daemon_pid, req.remote), 0
                except OSError as exc:  # the kernel refuses now what it allowed at set-up: the daemon sends it again
                    why = os.strerror(exc.errno) if exc.errno else "a short read"  # the same words for every job: logged once
                    send(_answer(Response(req.job_id, 0, [], [], {}, b"", unread=f"cannot read the job from the daemon's memory: {why}")))
                    continue
            if slot is not None:
                slot[0] = req.job_id
            resp = _execute(programs, req)
            if slot is not None:
                slot[0] = IDLE  # from here a death blames no job: its answer is complete or it is re-run whole
            if Ev.memory_errors:
                resp.recycle = MEMORY_ERROR
            elif rss is not None and rss() > max_rss:
                resp.recycle = MAX_RSS
            done = time.monotonic_ns()
            resp.wall_ns = done - got + answering
            send(_answer(resp))
            answering = time.monotonic_ns() - done
            if resp.recycle:
                break
        elif kind == CONFIGURE:  # (specs, drop, probe): probe is (where, what) of bytes in the daemon's memory, or None
            probe = payload[2]
            reads = memread.probe(daemon_pid, *probe) if probe is not None else "not asked to"
            send(b"".join(pack(("configured", _configure(programs, payload[0], payload[1]), reads))))
        elif kind == STOP:
            break
    for prog in programs.values():
        try:
            prog.teardown()
        except BaseException:
            traceback.print_exc(file=sys.stderr)
    os._exit(0)


def receiver(sock: socket.socket) -> Callable[[], bytes]:
    """Reads one message as ``Connection.send_bytes`` frames it (a 4-byte length, or -1 then 8 bytes)
    into a ``bytes`` of its own in one system call as a rule: the kernel copies a job once. The
    connection's ``recv_bytes`` gathers it in a BytesIO, a second copy of a MiB-sized job (3 % of
    a worker's time in bench 1b)."""
    recv = sock.recv
    waitall = socket.MSG_WAITALL

    def exactly(n: int) -> bytes:
        data = recv(n, waitall)  # whole unless a signal cut the wait short or the peer closed
        if len(data) == n:
            return data
        if not data:
            raise EOFError
        parts = [data]
        got = len(data)
        while got < n:
            more = recv(n - got, waitall)
            if not more:
                raise OSError("got end of file during message")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def receive() -> bytes:
        (n,) = FRAME.unpack(exactly(FRAME.size))
        if n == -1:
            (n,) = FRAME64.unpack(exactly(FRAME64.size))
        return exactly(n) if n else b""

    return receive


def _execute(programs: dict[str, SegmentProgram], req: Request) -> Response:
    resp = _run(programs, req)
    resp.stage_metrics = metric_updates.drain()
    return resp


def _run(programs: dict[str, SegmentProgram], req: Request) -> Response:
    try:
        return programs[req.segment].execute(req)
    except BaseException as exc:  # per-record failures are handled inside; this is the segment's own
        if isinstance(exc, MemoryError):
            Ev.memory_errors += 1
        return Response(req.job_id, 0, [], [], {}, b"", fatal="segment failed: " + traceback.format_exc(limit=5))


def _answer(resp: Response) -> bytes:
    """The response as one message; a response a stage made unpicklable (a meta value) is
    replaced by a refusal naming the cause, which the parent narrows down to the record."""
    blob = resp.blob
    resp.blob = b""
    try:
        return b"".join(pack(resp, blob))
    except BaseException as exc:
        why = f"a meta value cannot be pickled to return to the parent: {describe_exception(exc)}"
        return b"".join(pack(Response(resp.job_id, resp.cpu_ns, [], [], {}, b"", fatal=why, recycle=resp.recycle)))


def _configure(programs: dict[str, SegmentProgram], specs: list[SegmentSpec], drop: list[str]) -> list[str]:
    errors = []
    for sid in drop:  # segments of a previous config generation
        old = programs.pop(sid, None)
        if old is not None:
            try:
                old.teardown()
            except BaseException:
                traceback.print_exc(file=sys.stderr)
    for spec in specs:
        try:
            prog = SegmentProgram(spec)
            prog.setup()
            programs[spec.id] = prog
        except BaseException as exc:
            errors.append(f"{spec.id}: {describe_exception(exc)}")
    return errors
