"""A system call made to fail with EPERM (what a systemd unit's ``SystemCallFilter=`` with
``SystemCallErrorNumber=EPERM``, or a container's profile, does), through libseccomp. The
filter holds for the calling process and every process it starts from then on.

Self-contained (no import from the project): a test copies this file beside a stage module so
that a stage can install a refusal inside its own worker."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO_EPERM = 0x00050000 | 1


def available() -> bool:
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return False
    return True


def refuse(syscall: str) -> None:
    """From now on ``syscall`` fails with EPERM in this process and those it starts."""
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(SCMP_ACT_ALLOW)))
    nr = lib.seccomp_syscall_resolve_name(syscall.encode())
    assert lib.seccomp_rule_add(ctx, ctypes.c_uint32(SCMP_ACT_ERRNO_EPERM), nr, 0) == 0
    assert lib.seccomp_load(ctx) == 0


def refusing(syscall: str) -> Callable[[], None]:
    """A ``preexec_fn``: the child, before it execs, refuses ``syscall``."""
    return lambda: refuse(syscall)
