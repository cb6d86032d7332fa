"""Identifiers and their text forms.

Binary IDs are 32 bytes (BLAKE3 digests or Ed25519 public keys); node and entry IDs are 16 random bytes.
Text form: a short prefix naming the kind, then lowercase RFC 4648 base32 without padding, e.g.
``sp-<52 chars>`` for a space. Parsing checks the prefix and the exact length.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import UsageError

PREFIX_SPACE = "sp"
PREFIX_ACCOUNT = "ac"
PREFIX_DEVICE = "dv"
PREFIX_CHANGE = "ch"
PREFIX_BLOB = "bl"
PREFIX_RECORD = "acl"

NODE_ID_LEN = 16
ROOT_NODE = bytes(NODE_ID_LEN)  # the root directory of every space


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def unb32(text: str) -> bytes:
    t = text.strip().upper()
    t += "=" * (-len(t) % 8)
    try:
        return base64.b32decode(t)
    except (ValueError, binascii.Error):
        raise UsageError(f"not valid base32: {text!r}") from None


def to_text(prefix: str, raw: bytes) -> str:
    return f"{prefix}-{b32(raw)}"


def from_text(prefix: str, text: str, length: int = 32) -> bytes:
    head, sep, rest = text.strip().partition("-")
    if not sep or head != prefix:
        raise UsageError(f"expected an ID starting with {prefix}-, got {text!r}")
    raw = unb32(rest)
    if len(raw) != length:
        raise UsageError(f"{text!r} is not a {length}-byte ID")
    return raw


def short(raw: bytes, n: int = 8) -> str:
    """A short human label (used in conflict names and logs); never used to identify anything."""
    return b32(raw)[:n]


def space_text(space_id: bytes) -> str:
    return to_text(PREFIX_SPACE, space_id)


def account_text(account_pub: bytes) -> str:
    return to_text(PREFIX_ACCOUNT, account_pub)


def device_text(device_pub: bytes) -> str:
    return to_text(PREFIX_DEVICE, device_pub)


def change_text(change_id: bytes) -> str:
    return to_text(PREFIX_CHANGE, change_id)
