"""A worker process and its socket, seen from the parent: kill, reap, shut a transport's socket.

Everything goes through the process object of the pool's context (``proc.kill()``, not
``os.kill(pid)``): a process already reaped is not signalled (its pid may belong to another
process by then), and a test's process context can stand in for real processes.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

EXIT_GRACE = 5.0  # seconds a worker that should exit (EOF, recycle) gets before it is killed


def kill(proc: Any) -> None:
    """SIGKILL the worker, unless it is already gone."""
    try:
        proc.kill()
    except (ProcessLookupError, ValueError, OSError, AttributeError):  # reaped, closed, or never started
        pass


def reap(proc: Any, grace: float) -> int | None:
    """Wait ``grace`` seconds for the process to end, then kill it; its exit code."""
    proc.join(grace)
    if proc.exitcode is None:
        kill(proc)
        proc.join(EXIT_GRACE)
    return proc.exitcode  # type: ignore[no-any-return]


def death(index: int, code: int | None) -> str:
    if code is not None and code < 0:
        return f"worker {index} killed by signal {-code}"
    return f"worker {index} exited with {code}"


def shutdown_transport(writer: asyncio.StreamWriter | None, how: int) -> None:
    """shutdown(2) the socket under the transport (a transport closes it only on a later
    loop iteration, and has no shutdown of its reading side)."""
    transport = writer.transport if writer is not None else None
    sock = transport.get_extra_info("socket") if transport is not None and not transport.is_closing() else None
    fd = sock.fileno() if sock is not None else -1  # None: the loop closed already (and the transport with it)
    if fd >= 0:
        s = socket.socket(fileno=fd)
        try:
            s.shutdown(how)
        except OSError:
            pass
        finally:
            s.detach()
