"""Binary layouts shared by every signed record, and strict msgpack decoding.

Signed record layout (space header ``S``, device certificate ``D``, ACL record ``A``, change ``C``)::

    offset   size    field
    0        1       format tag: one ASCII letter naming the format (FORMAT_* below)
    1        1       format version (each format starts at 1)
    2        4       body length L, unsigned big-endian; bounded per format before anything is read
    6        L       body: one msgpack array (a msgspec ``array_like`` Struct), decoded strictly
    6+L      1       signature count n (exactly what the format expects: 1, or 2 for an ACL join)
    7+L      64*n    Ed25519 signatures, each over SIGNATURE_CONTEXT || bytes[0 : 6+L]

Nothing may follow the signatures. The record's ID is BLAKE3 of all its bytes; records are stored and sent
verbatim and verification never re-encodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from ..errors import DecodeError
from . import crypto

FORMAT_SPACE_HEADER = ord("S")
FORMAT_DEVICE_CERT = ord("D")
FORMAT_ACL_RECORD = ord("A")
FORMAT_CHANGE = ord("C")

PREFIX = struct.Struct(">BBI")  # tag (u8), version (u8), body length (u32 BE)
PREFIX_LEN = PREFIX.size  # 6
SIGNATURE_CONTEXT = b"anysyncfs signed record v1\x00"  # domain separation from any other Ed25519 use

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SignedRecord:
    """A split signed record. ``signed_part`` is bytes[0:6+L], ``body`` the raw msgpack body."""

    tag: int
    version: int
    body: bytes
    signed_part: bytes
    signatures: tuple[bytes, ...]
    raw: bytes

    @property
    def id(self) -> bytes:
        return crypto.blake3(self.raw)

    def signing_message(self) -> bytes:
        return SIGNATURE_CONTEXT + self.signed_part


def signing_message(tag: int, version: int, body: bytes) -> bytes:
    """What a signer signs for a record with this tag, version and body."""
    return SIGNATURE_CONTEXT + PREFIX.pack(tag, version, len(body)) + body


def pack_signed(tag: int, version: int, body: bytes, signatures: list[bytes]) -> bytes:
    if not 1 <= len(signatures) <= 255:
        raise ValueError("a signed record carries 1..255 signatures")
    for s in signatures:
        if len(s) != crypto.SIGNATURE_LEN:
            raise ValueError("signatures are 64 bytes")
    return PREFIX.pack(tag, version, len(body)) + body + bytes([len(signatures)]) + b"".join(signatures)


def unpack_signed(
    data: bytes, *, tag: int, versions: frozenset[int], max_body: int, signature_counts: frozenset[int]
) -> SignedRecord:
    """Split a signed record, checking tag, version, bounds and exact length. Does not verify signatures."""
    data = bytes(data)
    name = chr(tag)
    if len(data) < PREFIX_LEN + 1:
        raise DecodeError(f"record {name}: truncated ({len(data)} bytes)")
    got_tag, version, body_len = PREFIX.unpack_from(data)
    if got_tag != tag:
        raise DecodeError(f"record {name}: wrong format tag 0x{got_tag:02x}")
    if version not in versions:
        raise DecodeError(f"record {name}: unsupported version {version}")
    if body_len > max_body:
        raise DecodeError(f"record {name}: body of {body_len} bytes exceeds the limit of {max_body}")
    end = PREFIX_LEN + body_len
    if len(data) < end + 1:
        raise DecodeError(f"record {name}: truncated body")
    n = data[end]
    if n not in signature_counts:
        raise DecodeError(f"record {name}: unexpected signature count {n}")
    if len(data) != end + 1 + n * crypto.SIGNATURE_LEN:
        raise DecodeError(f"record {name}: length does not match its signature count")
    sigs = tuple(data[end + 1 + i * 64 : end + 1 + (i + 1) * 64] for i in range(n))
    return SignedRecord(tag, version, data[PREFIX_LEN:end], data[:end], sigs, data)


# ---------------------------------------------------------------------------------------------------- msgpack
_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(obj: Any) -> bytes:
    """msgpack encoding (deterministic for array_like Structs, lists, ints and bytes)."""
    return _encoder.encode(obj)


def decode(data: bytes | memoryview, type_: type[T], what: str) -> T:  # noqa: D103
    """Strict typed msgpack decoding; any failure is a :class:`DecodeError` naming ``what``."""
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.msgpack.Decoder(type_)
    try:
        return dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as e:
        raise DecodeError(f"{what}: {e}") from None


class Strict(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Base for every encoded structure: a positional msgpack array, unknown or missing fields rejected."""
