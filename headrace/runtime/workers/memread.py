"""Jobs read from the daemon's memory: a worker copies a job's records straight out of the
daemon's address space (``process_vm_readv``, Linux's cross-memory attach, as MPI libraries
move large messages between processes of one host) instead of through the socket.

Through the socket each job's bytes are copied twice by the kernel, once in the daemon (into
the socket) and once in the worker (out of it); read this way they are copied once, by the
worker, and the daemon, which feeds every worker, no longer spends a sixth of its time on the
copy (bench 1b: 700 -> 850 MiB/s). The job message then holds only the header and where the
blobs are: (address, length) pairs of ``bytes`` objects the daemon keeps alive until the job is
answered (the job holds them, and a job leaves a worker's in-flight list only with its answer
or with the worker's death).

Whether a worker can read the daemon's memory is up to the kernel (ptrace access rules: same
user; Yama's ptrace_scope, 1 allowing it thanks to ``allow_descendants``; a seccomp filter; a
container's profile): each worker tries once,
on a probe the daemon sends with its set-up, and says whether it worked. A worker that cannot
gets its jobs through the socket as before (``daemon.job_transport: socket`` asks for that
always). CPython's ``bytes`` keep their data inline at a fixed offset from the object's
address, found below once; without ctypes or that layout, the socket is used.
"""

from __future__ import annotations

import ctypes
import os
from array import array
from typing import Any

IOV_MAX = 1024  # the kernel's limit of iovecs per call
MAX_CALL_BYTES = 1 << 30  # bytes asked of one call: the kernel moves at most MAX_RW_COUNT (2 GiB less a page) per call
PR_SET_PTRACER = 0x59616D61  # prctl: which process (and its descendants) may ptrace the caller, under Yama


def _setup() -> tuple[int, Any, Any] | str:
    """(offset of a bytes object's data from its address, process_vm_readv, the uninitialised
    bytes maker), or why jobs cannot be read so here."""
    if not hasattr(os, "sched_getaffinity"):  # not Linux (the call is Linux's)
        return "not Linux"
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # an instance of our own: its function objects are not shared
        readv = libc.process_vm_readv
        # a prototype of our own, not ctypes.pythonapi's shared function object, whose restype any library may set
        make = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_ssize_t)(("PyBytes_FromStringAndSize", ctypes.pythonapi))
    except (OSError, AttributeError) as exc:
        return f"no process_vm_readv here ({exc})"
    readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    readv.restype = ctypes.c_ssize_t
    probe = b"headrace: where a bytes object keeps its data"
    addr = ctypes.cast(ctypes.c_char_p(probe), ctypes.c_void_p).value  # c_char_p points at the data itself
    offset = (addr or 0) - id(probe)
    if not 0 < offset < 256 or ctypes.string_at(id(probe) + offset, len(probe)) != probe:
        return "this Python keeps bytes in a way not known here"
    return offset, readv, make


_made = _setup()
_SETUP: tuple[int, Any, Any] | None = None if isinstance(_made, str) else _made
UNAVAILABLE: str | None = _made if isinstance(_made, str) else None  # why jobs cannot be read so in this process


def locate(blobs: list[Any]) -> bytes | None:
    """Where ``blobs`` are in this process, as a job carries it (array('Q') of address, length
    pairs); None when one is not a ``bytes`` (a view, a bytearray: those go through the socket)."""
    if _SETUP is None:
        return None
    offset = _SETUP[0]
    where = array("Q")
    for b in blobs:
        if type(b) is not bytes:
            return None
        if b:
            where.append(id(b) + offset)
            where.append(len(b))
    return where.tobytes()


def read(pid: int, located: bytes) -> bytes:
    """The blobs ``located`` in process ``pid``, joined in one new ``bytes`` (one copy). OSError
    when the kernel refuses (permissions, a filter) or the memory is not there any more."""
    if _SETUP is None:
        raise OSError(UNAVAILABLE)
    offset, readv, make = _SETUP
    pairs = array("Q")
    pairs.frombytes(located)
    total = sum(pairs[1::2])
    out = make(None, total)  # filled here, before anyone else sees it
    if type(out) is not bytes or len(out) != total:
        raise OSError(f"could not make a bytes of {total} to read into")
    if not total:
        return out
    base = id(out) + offset
    done = 0
    for call in _calls(pairs):
        want = sum(call[1::2])
        local = array("Q", (base + done, want))
        got = readv(pid, local.buffer_info()[0], 1, call.buffer_info()[0], len(call) // 2, 0)
        if got != want:  # -1 (errno says why), or short: a page of the daemon's not there any more
            err = ctypes.get_errno() if got < 0 else 0
            raise OSError(err, f"process_vm_readv read {got} of {want} bytes from process {pid}" + (f": {os.strerror(err)}" if err else ""))
        done += want
    return out


def _calls(located: array[int]) -> list[array[int]]:
    """``located``'s (address, length) pairs as the calls that read them: at most IOV_MAX pairs and
    MAX_CALL_BYTES bytes each (a longer blob is cut across calls)."""
    calls: list[array[int]] = []
    call = array("Q")
    size = 0
    for k in range(0, len(located), 2):
        addr, left = located[k], located[k + 1]
        while left:
            if len(call) // 2 == IOV_MAX or size == MAX_CALL_BYTES:
                calls.append(call)
                call, size = array("Q"), 0
            take = min(left, MAX_CALL_BYTES - size)
            call.append(addr)
            call.append(take)
            addr += take
            left -= take
            size += take
    if call:
        calls.append(call)
    return calls


def allow_descendants() -> str | None:
    """Under Yama's ``ptrace_scope`` 1 (Ubuntu's default), let this process's descendants (the
    workers, through the fork server) read its memory: Yama otherwise allows it only to ancestors.
    None when done, or why not (no Yama: nothing to do, EINVAL)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as exc:
        return str(exc)
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_PTRACER, os.getpid(), 0, 0, 0) != 0:
        return os.strerror(ctypes.get_errno())
    return None


def probe(pid: int, located: bytes | None, expected: bytes) -> str | None:
    """None when this process reads ``expected`` back at ``located`` in ``pid``; else why not."""
    if located is None:
        return UNAVAILABLE or "the daemon cannot say where its jobs are"
    try:
        got = read(pid, located)
    except OSError as exc:
        return f"cannot read the daemon's memory: {exc.strerror or exc}"
    return None if got == expected else "read the daemon's memory but found other bytes there"
