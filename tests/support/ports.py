"""Free ports for what a test starts (daemons, brokers, peers), chosen so that they stay free
until the process they are meant for binds them.

``bind(("127.0.0.1", 0))`` hands out a port from the kernel's ephemeral range, the same range
every outgoing connection takes its local port from: between the test choosing a port and the
daemon binding it, a client connection of any process (a broker's, a test's) may take it, and
the daemon then fails with "address already in use" (seen once in CI). So ports come from below
the ephemeral range, where no connection is given a local port, each checked free by binding it
(TCP and UDP), and never handed out twice by this process.
"""

from __future__ import annotations

import random
import socket

_GIVEN: set[int] = set()
_RANDOM = random.Random()


def _range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10_000, low - 1) if low > 12_000 else (0, 0)


def _free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(udp: bool = False) -> int:
    """A port on 127.0.0.1 free for TCP and UDP now, outside the ephemeral range when the system
    leaves room below it, not handed out before by this process."""
    low, high = _range()
    for _ in range(1000):
        if low:
            port = _RANDOM.randint(low, high)
        else:  # no room below the ephemeral range: the kernel's choice
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
        if port in _GIVEN or not _free(port, socket.SOCK_STREAM) or not _free(port, socket.SOCK_DGRAM):
            continue
        _GIVEN.add(port)
        return port
    raise RuntimeError("no free port found in 1000 tries")
