"""Bounds on what the peers of a listening node may make it hold: connections, and requests in flight.

Each connection is bounded by its session (:mod:`anysyncfs.protocol.session`): before authentication only small
handshake frames; afterwards at most :attr:`ConnectionLimits.max_in_flight_requests` requests and
:attr:`ConnectionLimits.max_in_flight_bytes` request body bytes in flight, beyond which the connection stops
reading. How many connections there are is bounded here, at accept, before any TLS: per remote address (an IPv6
address counts by its /64, which one host usually owns whole) and in total. A connection over either bound is
closed at once, with a log line (at most one per address every :data:`LOG_EVERY_S` seconds, so a flood does not
flood the log too).

Replies are bounded by the same figure (:meth:`~anysyncfs.net.connection.Connection.reserve_reply`), so the memory
a node's peers can pin is at most about ``max_connections × 2 × (max_in_flight_bytes + one frame)``.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from ..protocol.session import MAX_INCOMING, MAX_INCOMING_BYTES

MAX_PER_ADDRESS = 16
MAX_CONNECTIONS = 512
LOG_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """A listening node's limits (``anysyncfs node serve`` options of the same names)."""

    max_in_flight_bytes: int = MAX_INCOMING_BYTES  # request body bytes per connection
    max_in_flight_requests: int = MAX_INCOMING  # requests per connection
    max_per_address: int = MAX_PER_ADDRESS  # connections from one address (IPv6: one /64)
    max_connections: int = MAX_CONNECTIONS  # connections in total

    def __post_init__(self) -> None:
        for name in ("max_in_flight_bytes", "max_in_flight_requests", "max_per_address", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


def address_key(host: str) -> str:
    """What connections are counted by: the IPv4 address, or the /64 of an IPv6 address."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class ConnectionSlots:
    """Counts open connections per address and in total; :meth:`acquire` refuses one over either bound."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[str, int] = {}
        self.total = 0
        self._last_log: dict[str, float] = {}
        self.refused = 0  # connections refused since start

    def acquire(self, host: str) -> str | None:
        """Take a slot for a connection from ``host``; None when taken, else why it is refused."""
        key = address_key(host)
        if self.total >= self.limits.max_connections:
            self.refused += 1
            return f"{self.limits.max_connections} connections open in total"
        if self._open.get(key, 0) >= self.limits.max_per_address:
            self.refused += 1
            return f"{self.limits.max_per_address} connections open from {key}"
        self._open[key] = self._open.get(key, 0) + 1
        self.total += 1
        return None

    def release(self, host: str) -> None:
        key = address_key(host)
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        self.total = max(0, self.total - 1)

    def count(self, host: str) -> int:
        return self._open.get(address_key(host), 0)

    def should_log(self, host: str) -> bool:
        """Whether a refusal of ``host`` is worth a log line now (one per address every LOG_EVERY_S)."""
        key, now = address_key(host), time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
            return False
        if len(self._last_log) > 4 * self.limits.max_connections:  # bounded: forget old entries
            self._last_log.clear()
        self._last_log[key] = now
        return True
