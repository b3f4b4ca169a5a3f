"""Processes that die with the daemon, whatever they are doing (issue 12, item 12).

Workers are forked by a fork server the daemon starts. A worker stuck in a stage (a Python
loop, or a C call that holds the GIL) reads nothing and runs no thread, so only the kernel
can stop it when the daemon is SIGKILLed: each process asks for SIGKILL when its parent
dies (``PR_SET_PDEATHSIG``), the fork server relative to the daemon (``forkserver_init``,
imported there as a preload) and each worker relative to the fork server.

multiprocess also hands every forked child the write end of the fork server's "alive"
pipe, and the fork server exits on its own only once every holder closed it: a stuck
worker kept it (and so itself) alive. Workers close their copy (``release_forkserver``).
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """Ask the kernel for SIGKILL when the parent dies. False when the parent died before
    the request took effect (no signal will come: the caller should exit)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: EOF on the worker's socket remains
        return True
    return os.getppid() == parent


def release_forkserver() -> None:
    """Close this child's copy of the fork server's "alive" pipe (see the module docstring)."""
    from multiprocess import forkserver

    server = forkserver._forkserver
    fd = server._forkserver_alive_fd
    if fd is not None:
        server._forkserver_alive_fd = None
        try:
            os.close(fd)
        except OSError:
            pass
