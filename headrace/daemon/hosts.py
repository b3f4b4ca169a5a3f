"""Which ``Host`` (and ``Origin``) names the admin endpoint answers to: a defence against DNS
rebinding, where a web page in a local browser makes its own name resolve to the daemon's
address and then reads ``/status`` or ``/metrics`` as if they were its own.

A rebinding request always carries the attacker's DNS name in ``Host``. So the endpoint
answers only to the address it listens on, to loopback names and addresses when it listens
on loopback, to any IP address and this machine's hostname when it listens on every
interface, and to the names the operator lists in ``daemon.metrics.allowed_hosts``.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """The name in a ``Host`` header (``name:port``, ``[v6]:port``), lower case, without the port."""
    header = header.strip().lower()
    if _ip(header) is not None:  # a bare IPv6 address: its colons are no port
        return header
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, _, port = header.rpartition(":")
    return name if name and port.isdigit() else header


class AllowedHosts:
    def __init__(self, listen_host: str, port: int, extra: tuple[str, ...] = ()) -> None:
        self.listen = listen_host.strip("[]").lower()
        self.port = port
        self.any = "*" in extra
        self.names = {h.lower().rstrip(".") for h in extra if h != "*"}
        ip = _ip(self.listen)
        self.wildcard = self.listen in WILDCARDS
        self.loopback = self.listen in LOCAL_NAMES or (ip is not None and ip.is_loopback)
        self.names.add(self.listen)
        if self.wildcard:
            self.names.add(socket.gethostname().lower())  # no DNS lookup: the name the kernel knows

    def __call__(self, name: str) -> bool:
        """Whether a request naming ``name`` (from ``host_name``) is for this endpoint."""
        name = name.rstrip(".")
        if self.any or name in self.names:
            return True
        ip = _ip(name)
        if self.wildcard and ip is not None:
            return True  # an address cannot be rebound: only a DNS name can
        if self.loopback or self.wildcard:
            return name in LOCAL_NAMES or name.endswith(".localhost") or (ip is not None and ip.is_loopback)
        return False

    def origin(self, origin: str) -> bool:
        """Whether a browser's ``Origin`` (``scheme://host[:port]``) is this endpoint itself (same name rules, same port)."""
        try:
            parts = urlsplit(origin.strip())
            name, port = parts.hostname, parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or name is None:
            return False
        return self(name) and (port or (443 if parts.scheme == "https" else 80)) == self.port
