"""The space header: the signed birth certificate of a space.

A space header is a signed record (see :mod:`.encoding`) with tag ``S`` and version 1, signed once by the
owner's account key. Its body is one msgpack array::

    index  field        type        meaning
    0      owner        bin 32      Ed25519 public key of the owner's account (the only signer)
    1      created_us   uint        creation time, microseconds since the Unix epoch (informational)
    2      nonce        bin 32      random bytes, so two spaces created by one owner in one microsecond differ
    3      chunk_min    uint        FastCDC minimum chunk size in bytes
    4      chunk_avg    uint        FastCDC average chunk size in bytes
    5      chunk_max    uint        FastCDC maximum chunk size in bytes

The space ID is BLAKE3 of the whole encoded header (signature included), so the header is self-certifying: a
peer given a space ID can check any header it receives for it. Chunking parameters live here so that every
device cuts files identically and deduplication works across devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec

from ..errors import DecodeError, IdMismatch
from . import crypto, encoding

HEADER_VERSION = 1
HEADER_MAX_BODY = 256  # the body is ~90 bytes; anything larger is not a header
HEADER_SIGNATURES = 1  # the owner's account key

KiB = 1024
MiB = 1024 * KiB
# Bounds on chunking parameters. The outer bounds (4 KiB .. 16 MiB) keep per-chunk overhead and per-chunk memory
# sane; the inner ones are what pyfastcdc accepts (min <= 1 MiB, avg <= 4 MiB), so every valid header is usable.
CHUNK_MIN_LOWER = 4 * KiB
CHUNK_MIN_UPPER = 1 * MiB
CHUNK_AVG_UPPER = 4 * MiB
CHUNK_MAX_UPPER = 16 * MiB

_I64 = 2**63 - 1  # msgspec bounds are int64
Public = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Nonce = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Micros = Annotated[int, msgspec.Meta(ge=0, le=_I64)]
ChunkSize = Annotated[int, msgspec.Meta(ge=CHUNK_MIN_LOWER, le=CHUNK_MAX_UPPER)]


@dataclass(frozen=True, slots=True)
class Chunking:
    """FastCDC parameters of a space, in bytes."""

    min_size: int = 256 * KiB
    avg_size: int = 1 * MiB
    max_size: int = 4 * MiB

    def check(self) -> None:
        """Raise :class:`DecodeError` unless 4 KiB <= min <= avg <= max <= 16 MiB (and min <= 1 MiB, avg <= 4 MiB)."""
        if not (
            CHUNK_MIN_LOWER <= self.min_size <= self.avg_size <= self.max_size <= CHUNK_MAX_UPPER
            and self.min_size <= CHUNK_MIN_UPPER
            and self.avg_size <= CHUNK_AVG_UPPER
        ):
            raise DecodeError(
                f"space header: chunking parameters out of range "
                f"({self.min_size}/{self.avg_size}/{self.max_size})"
            )


DEFAULT_CHUNKING = Chunking()


class HeaderBody(encoding.Strict):
    """The msgpack body of a space header (field order is the wire order)."""

    owner: Public
    created_us: Micros
    nonce: Nonce
    chunk_min: ChunkSize
    chunk_avg: ChunkSize
    chunk_max: ChunkSize


@dataclass(frozen=True, slots=True)
class SpaceHeader:
    """A verified space header. ``raw`` are the exact bytes it was parsed from; ``id`` is BLAKE3(raw)."""

    id: bytes
    raw: bytes
    version: int
    owner: bytes
    created_us: int
    nonce: bytes
    chunking: Chunking

    def __repr__(self) -> str:
        return f"SpaceHeader(id={self.id.hex()[:16]}…, owner={self.owner.hex()[:16]}…)"


def space_id(header_raw: bytes) -> bytes:
    """The ID of a space: BLAKE3 of its encoded header (no verification; use :func:`parse_space_header`)."""
    return crypto.blake3(header_raw)


def make_space_header(
    owner: crypto.SigningKey,
    created_us: int,
    nonce: bytes | None = None,
    chunking: Chunking | None = None,
) -> bytes:
    """Encode and sign a new space header. ``nonce`` defaults to 32 random bytes (inject it for test vectors)."""
    chunking = chunking or DEFAULT_CHUNKING
    chunking.check()
    if nonce is None:
        nonce = crypto.random_bytes(32)
    if len(nonce) != 32:
        raise ValueError("a space nonce is 32 bytes")
    if not 0 <= created_us <= _I64:
        raise ValueError("created_us out of range")
    body = encoding.encode(
        HeaderBody(owner.public, created_us, nonce, chunking.min_size, chunking.avg_size, chunking.max_size)
    )
    sig = owner.sign(encoding.signing_message(encoding.FORMAT_SPACE_HEADER, HEADER_VERSION, body))
    return encoding.pack_signed(encoding.FORMAT_SPACE_HEADER, HEADER_VERSION, body, [sig])


def parse_space_header(raw: bytes, expected_id: bytes | None = None) -> SpaceHeader:
    """Strictly decode and verify a space header.

    Raises :class:`IdMismatch` if ``expected_id`` is given and differs from BLAKE3(raw), :class:`DecodeError`
    for any malformed byte, :class:`BadSignature` unless the owner signed it.
    """
    raw = bytes(raw)
    hid = crypto.blake3(raw)
    if expected_id is not None and not crypto.ct_equal(hid, expected_id):
        raise IdMismatch("space header does not hash to the expected space ID")
    rec = encoding.unpack_signed(
        raw,
        tag=encoding.FORMAT_SPACE_HEADER,
        versions=frozenset({HEADER_VERSION}),
        max_body=HEADER_MAX_BODY,
        signature_counts=frozenset({HEADER_SIGNATURES}),
    )
    body = encoding.decode(rec.body, HeaderBody, "space header")
    crypto.verify(body.owner, rec.signing_message(), rec.signatures[0])
    chunking = Chunking(body.chunk_min, body.chunk_avg, body.chunk_max)
    chunking.check()
    return SpaceHeader(hid, raw, rec.version, body.owner, body.created_us, body.nonce, chunking)
