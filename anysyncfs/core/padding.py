"""Length padding to Padmé buckets, so that a ciphertext's length reveals only a bucket, not the exact size.

Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication with PURBs", PETS 2019)
rounds a length ``n`` up to a value whose binary form has at most ``floor(log2(E)) + 1`` significant bits, where
``E = floor(log2(n))``: the overhead is at most 12 % (less for larger lengths: < 3.2 % above 1 MiB), and a length
of ``E`` bits leaks ``O(log log n)`` bits instead of ``O(log n)``.

The padded form used by blobs and change payloads (always inside the AEAD, so the padding is authenticated)::

    padded(data) = data || 0x80 || 0x00 * k,   with len(padded) = padme(len(data) + 1)

There is always a marker byte, so the exact length is recovered from the plaintext alone (last non-zero byte).
:func:`unpad` accepts only the canonical form: the total is a bucket value, the last non-zero byte is ``0x80``,
and the total is exactly ``padme(len(data) + 1)`` — anything else is a :class:`DecodeError`.
"""

from __future__ import annotations

from ..errors import DecodeError

MARKER = 0x80


def padme(length: int) -> int:
    """The smallest Padmé bucket >= ``length`` (``length`` >= 0; 0 and 1 map to themselves)."""
    if length < 0:
        raise ValueError("a length is >= 0")
    if length < 2:
        return length
    exponent = length.bit_length() - 1  # floor(log2(length))
    low_bits = exponent - exponent.bit_length()  # E - (floor(log2(E)) + 1): bits that must be zero
    mask = (1 << low_bits) - 1
    return (length + mask) & ~mask


def bucket_at_most(limit: int) -> int:
    """The largest Padmé bucket <= ``limit`` (``limit`` >= 0): keeps the low bits a bucket must have zero."""
    if limit < 2:
        return max(0, limit)
    exponent = limit.bit_length() - 1
    return limit & ~((1 << (exponent - exponent.bit_length())) - 1)


def is_bucket(length: int) -> bool:
    """Whether ``length`` is a Padmé bucket (a padded length can only be one of these)."""
    return length >= 0 and padme(length) == length


def padded_length(length: int) -> int:
    """Length of the padded form of ``length`` bytes of data: room for the marker, rounded up to a bucket."""
    return padme(length + 1)


def pad(data: bytes | bytearray | memoryview) -> bytes:
    """``data || 0x80 || zeros`` up to :func:`padded_length`."""
    return pad_to(data, padded_length(len(data)))


def pad_to(data: bytes | bytearray | memoryview, total: int) -> bytes:
    """``data || 0x80 || zeros``, ``total`` bytes in all (a piece of a padded form: the caller picks ``total``)."""
    if total < len(data) + 1:
        raise ValueError("no room for the padding marker")
    return b"".join((data, bytes((MARKER,)), bytes(total - len(data) - 1)))


def unpadded_length(padded: bytes | bytearray | memoryview) -> int:
    """The data length of a canonical padded form; :class:`DecodeError` for anything else."""
    total = len(padded)
    if not is_bucket(total) or total == 0:
        raise DecodeError(f"padding: {total} bytes is not a padded length")
    # The padding is at most 1/8 of the total plus two bytes (Padmé's bound), so only the tail is scanned.
    tail_start = max(0, total - total // 8 - 2)
    tail = bytes(memoryview(padded)[tail_start:]).rstrip(b"\x00")
    if not tail or tail[-1] != MARKER:
        raise DecodeError("padding: no 0x80 marker before the zero bytes")
    length = tail_start + len(tail) - 1
    if padded_length(length) != total:
        raise DecodeError(f"padding: {total} bytes is not the padded length of {length} bytes")
    return length


def unpad(padded: bytes | bytearray | memoryview) -> bytes:
    """The data of a canonical padded form (see :func:`unpadded_length`)."""
    return bytes(memoryview(padded)[: unpadded_length(padded)])


def check_padding(tail: bytes | bytearray | memoryview, *, starts_at_marker: bool) -> None:
    """Check padding bytes of a padded form whose data length is known from elsewhere (a blob's chunk length):
    ``tail`` is all zero, except its first byte, which is the marker when ``starts_at_marker`` (the tail starts
    right after the data). :class:`DecodeError` otherwise."""
    view = memoryview(tail)
    zeros_from = 0
    if starts_at_marker:
        if not view or view[0] != MARKER:
            raise DecodeError("padding: no 0x80 marker after the data")
        zeros_from = 1
    rest = bytes(view[zeros_from:])
    if rest.count(0) != len(rest):
        raise DecodeError("padding: a non-zero byte after the marker")
