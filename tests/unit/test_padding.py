"""Padmé buckets and the canonical padded form shared by blobs and change payloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anysyncfs.core import padding
from anysyncfs.errors import DecodeError


def test_known_buckets() -> None:
    # Small lengths are left alone; above, fewer and fewer low bits survive (Padmé keeps floor(log2 E) + 1 bits).
    assert [padding.padme(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 17, 100, 1000)] == [
        0, 1, 2, 3, 4, 5, 8, 10, 10, 12, 18, 104, 1024,
    ]  # fmt: skip
    assert padding.padme(1 << 20) == 1 << 20
    assert padding.padme((1 << 20) + 1) == (1 << 20) + (1 << 15)  # E=20: 5 bits kept, 32 KiB steps
    assert padding.padded_length(16 << 20) == (16 << 20) + (1 << 19)


@given(st.integers(0, 1 << 40))
def test_bucket_properties(n: int) -> None:
    p = padding.padme(n)
    assert p >= n and padding.is_bucket(p) and padding.padme(p) == p
    assert p - n <= max(2, n // 8)  # at most 12.5 % (and ~3 % above 1 MiB)
    if n >= 1 << 20:
        assert (p - n) / n < 0.032
    below = padding.bucket_at_most(n)
    assert below <= n and padding.is_bucket(below) and padding.padme(below + 1) > n


@given(st.binary(max_size=5000))
def test_pad_round_trip(data: bytes) -> None:
    padded = padding.pad(data)
    assert len(padded) == padding.padded_length(len(data)) and padding.is_bucket(len(padded))
    assert padded[len(data)] == padding.MARKER and not any(padded[len(data) + 1 :])
    assert padding.unpad(padded) == data
    assert padding.unpadded_length(memoryview(padded)) == len(data)


@given(st.binary(max_size=3000), st.integers(0, 7))
def test_every_non_canonical_form_is_rejected(data: bytes, spot: int) -> None:
    padded = bytearray(padding.pad(data))
    tail = range(len(data) + 1, len(padded))
    if tail:
        corrupt = bytearray(padded)
        corrupt[tail[spot % len(tail)]] = 1 + spot  # a non-zero byte after the marker
        with pytest.raises(DecodeError):
            padding.unpad(bytes(corrupt))
    no_marker = bytearray(padded)
    no_marker[len(data)] = 0
    with pytest.raises(DecodeError):
        padding.unpad(bytes(no_marker))
    with pytest.raises(DecodeError):
        padding.unpad(padding.pad_to(data, padding.padme(len(padded) + 1)))  # a bigger bucket than needed
    if not padding.is_bucket(len(padded) - 1):
        with pytest.raises(DecodeError):
            padding.unpad(bytes(padded[:-1]))  # not a bucket at all


def test_check_padding_of_a_known_length() -> None:
    padding.check_padding(b"\x80\x00\x00", starts_at_marker=True)
    padding.check_padding(b"\x00\x00", starts_at_marker=False)
    padding.check_padding(b"", starts_at_marker=False)
    for tail, at_marker in ((b"", True), (b"\x00\x80", True), (b"\x80\x01", True), (b"\x80", False)):
        with pytest.raises(DecodeError):
            padding.check_padding(tail, starts_at_marker=at_marker)
