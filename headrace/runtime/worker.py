"""The worker process: configure segments, then execute jobs until told to stop.

Workers ignore SIGINT/SIGTERM (the parent stops them), die with the parent
(PR_SET_PDEATHSIG, and EOF on their pipe), and never touch asyncio.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import socket
import sys
import traceback
from typing import Any

from headrace.runtime.segment import Request, Response, SegmentProgram, SegmentSpec, pack, unpack_header

CONFIGURE, JOB, STOP = "configure", "job", "stop"
PR_SET_PDEATHSIG = 1


def _die_with_parent(daemon_pid: int) -> None:
    """Our parent is the fork server, which exits when the daemon does; SIGKILL us then."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        os.kill(daemon_pid, 0)
    except ProcessLookupError:  # the daemon died before we got here
        os._exit(0)


def worker_main(conn: Any, index: int, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    programs: dict[str, SegmentProgram] = {}
    # decoded records are many small containers that die within their job: collecting the
    # young generation every 700 of them cost a quarter of a worker's time (bench 1)
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    sock.close()
    send = conn.send_bytes
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            break
        (kind, payload), start = unpack_header(msg)
        if kind == JOB:
            req: Request = payload
            req.blob, req.start = msg, start  # the message itself: records are sliced from it, not copied first
            try:
                resp = programs[req.segment].execute(req)
            except Exception:
                resp = Response(req.job_id, 0, [], [], {}, b"", fatal=traceback.format_exc(limit=5))
            head_blob = resp.blob
            resp.blob = b""
            parts = pack(resp, head_blob)
            send(b"".join(parts))
        elif kind == CONFIGURE:
            specs: list[SegmentSpec] = payload[0]
            errors = []
            for sid in payload[1]:  # segments of a previous config generation
                old = programs.pop(sid, None)
                if old is not None:
                    try:
                        old.teardown()
                    except Exception:
                        traceback.print_exc()
            for spec in specs:
                try:
                    prog = SegmentProgram(spec)
                    prog.setup()
                    programs[spec.id] = prog
                except Exception as exc:
                    errors.append(f"{spec.id}: {type(exc).__name__}: {exc}")
            send(b"".join(pack(("configured", errors))))
        elif kind == STOP:
            break
    for prog in programs.values():
        try:
            prog.teardown()
        except Exception:
            traceback.print_exc(file=sys.stderr)
    os._exit(0)
