"""Invite tickets: everything a new member needs to join a space, as one line of text (docs/protocol.md, 20.7).

Text form: ``anysync:`` followed by lowercase RFC 4648 base32 (no padding) of::

    offset   size   field
    0        1      version (TICKET_VERSION = 0x01)
    1        L      body: one msgpack array, decoded strictly (see TicketBody), L <= MAX_BODY_LEN
    1+L      4      checksum: BLAKE3(version || body)[0:4]

The checksum catches copying mistakes (a flipped or dropped character) before anything reaches the network; it
is no protection against a forger, and needs none: the invite secret is what grants entry, and every peer in the
ticket is pinned by its device key.

A ticket is a secret: whoever holds it can join the space under the invite until the invite is used, revoked or
expired. Parsing accepts any letter case (a QR code carries the upper-case form, which QR encodes compactly) and
ignores whitespace (a ticket wrapped by a terminal or an e-mail client).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from ..errors import DecodeError, UsageError
from . import crypto, encoding, ids
from .acl_records import Role
from .address import PeerAddress, parse_address

PREFIX = "anysync:"
TICKET_VERSION = 0x01
CHECKSUM_LEN = 4
MAX_PEERS = 8
MAX_HOST_LEN = 253  # a DNS name; IPv6 literals are shorter
MAX_BODY_LEN = 4096  # 8 peers with the longest host names fit in about 2.4 KiB
# Longest text a parser looks at: prefix + base32 of (version + body + checksum), 8 characters per 5 bytes.
MAX_TEXT_LEN = len(PREFIX) + (1 + MAX_BODY_LEN + CHECKSUM_LEN + 4) // 5 * 8

_I64 = 2**63 - 1
_Id32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class TicketPeer(encoding.Strict):
    """One peer the joiner may dial: [device key, host, port]."""

    device: _Id32  # the peer's Ed25519 device public key: the dialler pins it (TLS + session handshake)
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HOST_LEN)]  # DNS name, IPv4 or IPv6 (no [])
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


class TicketBody(encoding.Strict):
    """The msgpack body of a ticket (field order is the wire order)."""

    space: _Id32  # space ID (BLAKE3 of the signed space header)
    role: Annotated[int, msgspec.Meta(ge=int(Role.READER), le=int(Role.ADMIN))]  # role the invite grants
    invite_secret: _Id32  # Ed25519 seed of the invite key (the invite record names its public key)
    expires_us: Annotated[int, msgspec.Meta(ge=0, le=_I64)]  # invite expiry, µs since the epoch; 0 = never
    peers: Annotated[list[TicketPeer], msgspec.Meta(max_length=MAX_PEERS)]


@dataclass(frozen=True, slots=True)
class Ticket:
    """A parsed (or about to be encoded) ticket. ``invite_secret`` never shows in a repr."""

    space_id: bytes
    role: Role
    invite_secret: bytes = field(repr=False)
    expires_us: int  # 0 = never
    peers: tuple[PeerAddress, ...]

    @property
    def invite_key(self) -> crypto.SigningKey:
        return crypto.SigningKey(self.invite_secret)

    def expired(self, now_us: int) -> bool:
        return self.expires_us != 0 and now_us > self.expires_us


def _checksum(version_and_body: bytes) -> bytes:
    return crypto.blake3(version_and_body)[:CHECKSUM_LEN]


def encode_ticket(ticket: Ticket) -> str:
    """The text form (lowercase). ``ValueError`` for arguments no parser would accept (a caller bug)."""
    if len(ticket.peers) > MAX_PEERS:
        raise ValueError(f"a ticket carries at most {MAX_PEERS} peers")
    if len(ticket.space_id) != 32 or len(ticket.invite_secret) != crypto.KEY_LEN:
        raise ValueError("space ID and invite secret are 32 bytes")
    if not Role.READER <= ticket.role <= Role.ADMIN:
        raise ValueError("a ticket grants reader, writer or admin")
    if not 0 <= ticket.expires_us <= _I64:
        raise ValueError("expires_us out of range")
    peers = [TicketPeer(p.device, p.host, p.port) for p in ticket.peers]
    for p in ticket.peers:
        parse_address(str(p))  # the parser checks every peer this way: refuse what it would refuse
    body = encoding.encode(TicketBody(ticket.space_id, int(ticket.role), ticket.invite_secret, ticket.expires_us,
                                      peers))
    if len(body) > MAX_BODY_LEN:
        raise ValueError(f"ticket body of {len(body)} bytes exceeds {MAX_BODY_LEN}")
    data = bytes([TICKET_VERSION]) + body
    return PREFIX + ids.b32(data + _checksum(data))


def _damaged() -> UsageError:
    return UsageError("ticket is damaged (checksum mismatch): check you copied it whole")


def parse_ticket(text: str) -> Ticket:
    """Parse a ticket strictly. :class:`UsageError` for text that is not a ticket, was damaged in copying or comes
    from a newer version; :class:`DecodeError` for a well-checksummed ticket whose body breaks the format."""
    if len(text) > 4 * MAX_TEXT_LEN:  # bound the work before looking at the text at all
        raise UsageError(f"not an invite ticket: longer than {MAX_TEXT_LEN} characters")
    compact = "".join(text.split()).lower()
    if len(compact) > MAX_TEXT_LEN:
        raise UsageError(f"not an invite ticket: longer than {MAX_TEXT_LEN} characters")
    if compact.startswith("anysync://"):
        raise UsageError("that is a peer address, not an invite ticket (record it with anysyncfs space add-peer)")
    if not compact.startswith(PREFIX):
        raise UsageError(f"not an invite ticket (it starts with {PREFIX}): {compact[:20]!r}…")
    payload = compact[len(PREFIX):]
    try:
        raw = base64.b32decode(payload.upper() + "=" * (-len(payload) % 8))
    except (ValueError, binascii.Error):
        raise UsageError("ticket is damaged (a character outside its alphabet): check you copied it whole") from None
    # Base32 without padding may leave unused bits in the last character: a text that is not the canonical
    # encoding of its bytes was altered, even if the bytes look intact.
    if ids.b32(raw) != payload or len(raw) < 1 + CHECKSUM_LEN:
        raise _damaged()
    data, checksum = raw[:-CHECKSUM_LEN], raw[-CHECKSUM_LEN:]
    if not crypto.ct_equal(_checksum(data), checksum):
        raise _damaged()
    if data[0] != TICKET_VERSION:
        raise UsageError(f"this ticket has version {data[0]}; this anysyncfs reads version {TICKET_VERSION} "
                         "(update anysyncfs)")
    if len(data) - 1 > MAX_BODY_LEN:
        raise DecodeError(f"ticket: body longer than {MAX_BODY_LEN} bytes")
    body = encoding.decode(data[1:], TicketBody, "ticket")
    peers = []
    for p in body.peers:
        try:
            peers.append(parse_address(str(PeerAddress(p.device, p.host, p.port))))
        except UsageError as e:
            raise DecodeError(f"ticket: bad peer address ({e})") from None
    return Ticket(body.space, Role(body.role), body.invite_secret, body.expires_us, tuple(peers))


__all__ = [
    "CHECKSUM_LEN", "MAX_BODY_LEN", "MAX_PEERS", "MAX_TEXT_LEN", "PREFIX", "TICKET_VERSION",
    "Ticket", "TicketBody", "TicketPeer", "encode_ticket", "parse_ticket",
]  # fmt: skip
