"""Peer addresses: ``anysync://<device key>@host:port`` (docs/protocol.md, 70.6).

The device key (``dv-`` + base32 of the Ed25519 public key) is what the dialler pins: whoever answers at
host:port must prove it holds that device's key, so an address can travel through untrusted channels safely.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import UsageError
from . import ids

SCHEME = "anysync://"
MAX_ADDRESS_LEN = 300
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


@dataclass(frozen=True, slots=True)
class PeerAddress:
    device: bytes  # the pinned device key of the listener
    host: str  # DNS name, IPv4 or IPv6 (without brackets)
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}{ids.device_text(self.device)}@{host}:{self.port}"


def parse_address(text: str) -> PeerAddress:
    """Parse and check an address; :class:`UsageError` with a one-line reason otherwise."""
    t = text.strip()
    if len(t) > MAX_ADDRESS_LEN or not t.startswith(SCHEME):
        raise UsageError(f"not a peer address (expected {SCHEME}dv-…@host:port): {text[:80]!r}")
    device_text, at, hostport = t[len(SCHEME):].partition("@")
    if not at:
        raise UsageError(f"peer address without a device key: {text!r}")
    device = ids.from_text(ids.PREFIX_DEVICE, device_text)
    if hostport.startswith("["):
        host, close, rest = hostport[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise UsageError(f"bad IPv6 host in {text!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UsageError(f"bad IPv6 host in {text!r}") from None
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon or not _HOST.match(host):
            raise UsageError(f"peer address needs host:port: {text!r}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"bad port in {text!r}")
    return PeerAddress(device, host, int(port_text))
