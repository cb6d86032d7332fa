"""The encrypted chunk envelope: round trips, convergence, tamper rejection, range reads, bounds and the vector."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import blob, crypto, padding
from anysyncfs.core.ops import ChunkRef
from anysyncfs.errors import AuthenticationFailed, DecodeError, IdMismatch, IntegrityError

VECTOR_PATH = Path(__file__).resolve().parents[1] / "vectors" / "blob.json"
EPOCH_KEY = bytes(range(32))
KEY_BASE = blob.chunk_key_base(EPOCH_KEY)
SEG = blob.SEGMENT_SIZE


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def text(n: int) -> bytes:
    line = b"all work and no play makes jack a dull boy, line after line after line\n"
    return (line * (n // len(line) + 1))[:n]


def seal_stored(key: bytes, stored: bytes, flags: int, salt: bytes, *, padded: bytes | None = None) -> bytes:
    """Seal arbitrary stored bytes exactly as seal_chunk would (to build well-encrypted but malformed blobs);
    ``padded`` replaces the canonical padded form (stored || 0x80 || zeros) with arbitrary bytes."""
    if padded is None:
        padded = padding.pad(stored)
    header = blob.HEADER.pack(blob.BLOB_TAG, blob.BLOB_VERSION, flags, len(padded), salt)
    aead = blob._segment_aead(key, salt)
    count = max(1, -(-len(padded) // SEG))
    parts = [header]
    for i in range(count):
        parts.append(aead.encrypt(blob.NONCE.pack(i, i == count - 1), padded[i * SEG : (i + 1) * SEG], header))
    return b"".join(parts)


def blob_len_for(stored_length: int) -> int:
    padded = padding.padded_length(stored_length)
    return blob.HEADER_LEN + padded + 16 * max(1, -(-padded // SEG))


def ref_for(data: bytes, key: bytes, length: int) -> ChunkRef:
    return ChunkRef(blob=crypto.blake3(data), key=key, length=length)


# ---------------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"x",
        rand(200),
        rand(4096),
        rand(4097),
        rand(SEG - 1),
        rand(SEG),
        rand(SEG + 1),
        rand(3 * SEG),
        rand(5 << 20),
        text(5 << 20),
        text(4097),
        bytes(1 << 20),
    ],
    ids=lambda p: f"{len(p)}",
)
def test_round_trip(plaintext: bytes) -> None:
    ref, data = blob.seal_chunk(plaintext, KEY_BASE)
    assert ref.length == len(plaintext)
    assert ref.blob == crypto.blake3(data)
    assert ref.key == crypto.blake3_keyed(KEY_BASE, plaintext)
    assert blob.open_chunk(data, ref) == plaintext
    assert blob.open_chunk(data, ref, key_base=KEY_BASE) == plaintext
    assert blob.open_chunk(memoryview(data), ref, verify_id=False) == plaintext
    assert blob.open_chunk_range(data, ref, 0, len(plaintext)) == plaintext
    flags = data[2]
    padded_length = int.from_bytes(data[3:7], "big")
    assert padding.is_bucket(padded_length)  # a provider sees only the bucket
    assert len(data) == blob.HEADER_LEN + padded_length + 16 * max(1, -(-padded_length // SEG))
    if plaintext[:1] == b"x" or len(set(plaintext[:4096])) > 200:  # random data is stored as is
        assert flags == 0 and len(data) == blob_len_for(len(plaintext))
    if len(plaintext) > 4096 and len(set(plaintext)) < 60:  # text and zeros compress
        assert flags == blob.FLAG_ZSTD and len(data) < len(plaintext) // 4


def test_empty_chunk_is_one_segment_of_padding() -> None:
    ref, data = blob.seal_chunk(b"", KEY_BASE)
    assert len(data) == blob.HEADER_LEN + 1 + 16  # the marker byte alone
    assert data[:7] == b"B\x02\x00\x00\x00\x00\x01"


def test_no_compression_when_disabled_or_not_worth_it() -> None:
    _, data = blob.seal_chunk(text(100_000), KEY_BASE, compress=False)
    assert data[2] == 0
    # 1/32 must be saved: random data with a short compressible tail saves too little
    _, data = blob.seal_chunk(rand(100_000) + bytes(2000), KEY_BASE)
    assert data[2] == 0


def test_compression_probe() -> None:
    """Large chunks are compressed when any probe window compresses, and not when none does."""
    mixed = rand(300_000) + text(600_000)  # the first window is random, the others text
    _, data = blob.seal_chunk(mixed, KEY_BASE)
    assert data[2] == blob.FLAG_ZSTD
    windows_random = bytearray(text(1 << 20))
    for i in range(blob.COMPRESS_PROBES):
        start = i * len(windows_random) // blob.COMPRESS_PROBES
        windows_random[start : start + blob.COMPRESS_PROBE_SIZE] = rand(blob.COMPRESS_PROBE_SIZE, seed=i)
    ref, data = blob.seal_chunk(windows_random, KEY_BASE)  # compressible, but every probe window is random
    assert data[2] == 0 and blob.open_chunk(data, ref) == windows_random
    ref, data = blob.seal_chunk(windows_random[: blob.COMPRESS_PROBE_MIN], KEY_BASE)  # small: no probe
    assert data[2] == blob.FLAG_ZSTD


def test_convergent_within_an_epoch_only() -> None:
    p = rand(300_000, seed=7)
    ref1, b1 = blob.seal_chunk(p, KEY_BASE)
    ref2, b2 = blob.seal_chunk(bytearray(p), KEY_BASE)
    assert ref1 == ref2 and b1 == b2
    other = blob.chunk_key_base(bytes(32))
    ref3, b3 = blob.seal_chunk(p, other)
    assert ref3.blob != ref1.blob and ref3.key != ref1.key and b3 != b1
    ref4, _ = blob.seal_chunk(p[:-1] + b"\x00", KEY_BASE)
    assert ref4.blob != ref1.blob


def test_compressed_blob_follows_the_documented_construction() -> None:
    """Decrypt by hand with the documented key, nonce and AAD rules; the salt is the keyed hash of the frame."""
    import zstandard

    p = text(300_000)
    ref, data = blob.seal_chunk(p, KEY_BASE)
    assert data[:3] == b"B\x02\x01"
    stored_len = int.from_bytes(data[3:7], "big")  # the padded length
    salt = data[7:23]
    aead = crypto.Aead(crypto.derive_key("anysyncfs 2026 blob segment key v1", ref.key + salt))
    count = max(1, -(-stored_len // SEG))
    pos, parts = 23, []
    for i in range(count):
        size = min(SEG, stored_len - i * SEG) + 16
        nonce = i.to_bytes(8, "big") + b"\x00\x00\x00" + (b"\x01" if i == count - 1 else b"\x00")
        parts.append(aead.decrypt(nonce, data[pos : pos + size], data[:23]))
        pos += size
    assert pos == len(data)
    padded = b"".join(parts)
    stored = padded.rstrip(b"\x00")[:-1]
    assert padded == stored + b"\x80" + bytes(len(padded) - len(stored) - 1)
    assert len(padded) == padding.padme(len(stored) + 1)
    assert salt == crypto.blake3_keyed(ref.key, stored)[:16]
    assert zstandard.ZstdDecompressor().decompress(stored) == p


# ---------------------------------------------------------------------------------------------------- tampering
@pytest.mark.parametrize("plaintext", [rand(200, seed=3), text(400)], ids=["plain", "compressed"])
def test_every_bit_flip_is_rejected(plaintext: bytes) -> None:
    ref, data = blob.seal_chunk(plaintext, KEY_BASE)
    assert (data[2] == blob.FLAG_ZSTD) == (plaintext[:3] == b"all")
    for i in range(len(data) * 8):
        bad = bytearray(data)
        bad[i // 8] ^= 1 << (i % 8)
        bad_bytes = bytes(bad)
        with pytest.raises(IdMismatch):
            blob.open_chunk(bad_bytes, ref)
        with pytest.raises((AuthenticationFailed, DecodeError)):
            blob.open_chunk(bad_bytes, ref, verify_id=False)
        with pytest.raises((AuthenticationFailed, DecodeError)):
            blob.open_chunk_range(bad_bytes, ref, 0, len(plaintext), verify_id=False)


def test_truncated_or_extended_blob_is_rejected() -> None:
    ref, data = blob.seal_chunk(rand(SEG * 2 + 10), KEY_BASE)
    for bad in (data[:-1], data + b"\x00", data[: blob.HEADER_LEN], data[:3], b"", data[:-26]):
        with pytest.raises(IdMismatch):
            blob.open_chunk(bad, ref)
        with pytest.raises(DecodeError):
            blob.open_chunk(bad, ref, verify_id=False)


def test_dropping_the_last_segment_is_rejected() -> None:
    """A shorter padded length with the last segment removed: the header (AAD) and the last-flag both change."""
    p = rand(SEG * 2)
    ref, data = blob.seal_chunk(p, KEY_BASE)
    assert int.from_bytes(data[3:7], "big") > 2 * SEG  # the marker starts a third segment
    header = bytearray(data[: blob.HEADER_LEN])
    header[3:7] = (2 * SEG).to_bytes(4, "big")  # the padded length of a chunk of 2 * SEG - 1 bytes
    bad = bytes(header) + data[blob.HEADER_LEN : blob.HEADER_LEN + 2 * (SEG + 16)]
    short_ref = ChunkRef(blob=crypto.blake3(bad), key=ref.key, length=2 * SEG - 1)
    with pytest.raises(AuthenticationFailed):
        blob.open_chunk(bad, short_ref)


def test_swapped_segments_are_rejected() -> None:
    p = rand(SEG * 3)
    ref, data = blob.seal_chunk(p, KEY_BASE)
    s = SEG + 16
    h = blob.HEADER_LEN
    swapped = data[:h] + data[h + s : h + 2 * s] + data[h : h + s] + data[h + 2 * s :]
    with pytest.raises(AuthenticationFailed):
        blob.open_chunk(swapped, ref, verify_id=False)


def test_wrong_key_or_reference() -> None:
    p = rand(1000)
    ref, data = blob.seal_chunk(p, KEY_BASE)
    with pytest.raises(AuthenticationFailed):
        blob.open_chunk(data, ChunkRef(blob=ref.blob, key=bytes(32), length=ref.length))
    with pytest.raises(DecodeError):
        blob.open_chunk(data, ChunkRef(blob=ref.blob, key=ref.key, length=999))
    with pytest.raises(IdMismatch):
        blob.open_chunk(data, ChunkRef(blob=bytes(32), key=ref.key, length=ref.length))
    with pytest.raises(IntegrityError):
        blob.open_chunk(data, ref, key_base=blob.chunk_key_base(bytes(32)))
    with pytest.raises(DecodeError):
        blob.open_chunk(data, ChunkRef(blob=ref.blob, key=ref.key, length=blob.MAX_CHUNK_LENGTH + 1))


def test_a_chunk_key_that_is_not_convergent_is_detected() -> None:
    """A blob sealed (validly) under a key that is not the keyed hash of its plaintext opens, but not with
    key_base given."""
    key = bytes(range(32, 64))
    p = rand(500)
    data = seal_stored(key, p, 0, blob.ZERO_SALT)
    ref = ref_for(data, key, len(p))
    assert blob.open_chunk(data, ref) == p
    with pytest.raises(IntegrityError):
        blob.open_chunk(data, ref, key_base=KEY_BASE)


# ---------------------------------------------------------------------------------------------------- malformed
KEY = bytes(range(100, 132))


def test_malformed_envelopes_are_rejected() -> None:
    p = text(10_000)
    packed = blob._compressor().compress(p)
    salt = b"s" * 16
    cases = {
        "unknown flag": (seal_stored(KEY, p, 0x02, blob.ZERO_SALT), len(p)),
        "uncompressed with salt": (seal_stored(KEY, p, 0, salt), len(p)),
        "compressed not smaller": (seal_stored(KEY, p, blob.FLAG_ZSTD, salt), len(p)),
        "frame declares more": (seal_stored(KEY, packed, blob.FLAG_ZSTD, salt), len(p) - 1),
        "trailing bytes after frame": (seal_stored(KEY, packed + b"\x00\x00", blob.FLAG_ZSTD, salt), len(p)),
        "two frames": (seal_stored(KEY, packed + packed, blob.FLAG_ZSTD, salt), 2 * len(p)),
        "not zstd": (seal_stored(KEY, rand(100), blob.FLAG_ZSTD, salt), 1000),
    }
    for name, (data, length) in cases.items():
        ref = ref_for(data, KEY, length)
        with pytest.raises(DecodeError):
            blob.open_chunk(data, ref)
            pytest.fail(name)
    good = seal_stored(KEY, packed, blob.FLAG_ZSTD, salt)
    assert blob.open_chunk(good, ref_for(good, KEY, len(p))) == p


def test_frame_without_declared_size_is_rejected() -> None:
    import zstandard

    p = text(10_000)
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(p)
    data = seal_stored(KEY, packed, blob.FLAG_ZSTD, b"t" * 16)
    with pytest.raises(DecodeError):
        blob.open_chunk(data, ref_for(data, KEY, len(p)))


def test_malformed_padding_is_rejected() -> None:
    """Well-encrypted blobs (a member could make them) whose padding is not the canonical form: no marker, a
    non-zero byte after it, or a padded length larger than the data's bucket. Each is refused when opened
    whole, and by a segment read of the segment holding the bad padding."""
    p = rand(3 * SEG + 10, seed=21)
    packed = blob._compressor().compress(text(10_000))
    salt = b"s" * 16
    p_bucket = padding.padded_length(len(p))
    cases = {
        "no marker": (p + bytes(p_bucket - len(p)), 0, blob.ZERO_SALT, len(p)),
        "byte after the marker": (p + b"\x80" + b"\x01" + bytes(p_bucket - len(p) - 2), 0, blob.ZERO_SALT, len(p)),
        "last byte set": (p + b"\x80" + bytes(p_bucket - len(p) - 2) + b"\x01", 0, blob.ZERO_SALT, len(p)),
        "bucket too large": (padding.pad_to(p, padding.padme(p_bucket + 1)), 0, blob.ZERO_SALT, len(p)),
        "compressed, no marker": (packed + bytes(padding.padded_length(len(packed)) - len(packed)),
                                  blob.FLAG_ZSTD, salt, 10_000),  # fmt: skip
        "compressed, bucket too large": (padding.pad_to(packed, padding.padme(2 * len(packed))),
                                         blob.FLAG_ZSTD, salt, 10_000),  # fmt: skip
        "compressed, byte after the marker": (padding.pad_to(packed, padding.padded_length(len(packed)))[:-1] + b"\x01",
                                              blob.FLAG_ZSTD, salt, 10_000),  # fmt: skip
    }
    for name, (padded, flags, salt_, length) in cases.items():
        assert padding.is_bucket(len(padded)), name
        data = seal_stored(KEY, b"", flags, salt_, padded=padded)
        ref = ref_for(data, KEY, length)
        with pytest.raises(DecodeError):
            blob.open_chunk(data, ref)
            pytest.fail(name)
        if not flags and name != "bucket too large":
            with pytest.raises(DecodeError):
                blob.open_segments(data, ref, 3, 4)
                pytest.fail(name)
            assert blob.open_segments(data, ref, 0, 3) == [p[:SEG], p[SEG : 2 * SEG], p[2 * SEG : 3 * SEG]]
    good = seal_stored(KEY, p, 0, blob.ZERO_SALT)
    assert blob.open_chunk(good, ref_for(good, KEY, len(p))) == p


def test_header_checks() -> None:
    ref, data = blob.seal_chunk(rand(100), KEY_BASE)
    for index, value in ((0, ord("C")), (1, 1), (1, 3)):  # version 1 (unpadded) is no longer read
        bad = bytearray(data)
        bad[index] = value
        with pytest.raises(DecodeError):
            blob.open_chunk(bytes(bad), ref, verify_id=False)
    big = bytearray(data)
    for padded_length in (blob.MAX_PADDED_LENGTH + 1, 2 * blob.MAX_PADDED_LENGTH, 0, 129):  # too big, not a bucket
        big[3:7] = padded_length.to_bytes(4, "big")
        with pytest.raises(DecodeError):
            blob.open_chunk(bytes(big), ref, verify_id=False)
    with pytest.raises(ValueError):
        blob.seal_chunk(bytes(blob.MAX_CHUNK_LENGTH + 1), KEY_BASE)
    with pytest.raises(ValueError):
        blob.chunk_key_base(b"short")


# ---------------------------------------------------------------------------------------------------- ranges
RANGE_PLAIN = rand(3 * SEG + 1234, seed=11)
RANGE_REF, RANGE_BLOB = blob.seal_chunk(RANGE_PLAIN, KEY_BASE)
TEXT_PLAIN = text(3 * SEG + 99)
TEXT_REF, TEXT_BLOB = blob.seal_chunk(TEXT_PLAIN, KEY_BASE)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, len(RANGE_PLAIN)), st.integers(0, len(RANGE_PLAIN)), st.booleans())
def test_range_reads_equal_slices(a: int, b: int, verify: bool) -> None:
    start, end = min(a, b), max(a, b)
    assert blob.open_chunk_range(RANGE_BLOB, RANGE_REF, start, end, verify_id=verify) == RANGE_PLAIN[start:end]
    s2, e2 = min(start, len(TEXT_PLAIN)), min(end, len(TEXT_PLAIN))
    assert blob.open_chunk_range(TEXT_BLOB, TEXT_REF, s2, e2, verify_id=verify) == TEXT_PLAIN[s2:e2]


def test_range_read_opens_only_the_segments_it_needs() -> None:
    bad = bytearray(RANGE_BLOB)
    third_segment = blob.HEADER_LEN + 2 * (SEG + 16) + 5
    bad[third_segment] ^= 1
    corrupt = bytes(bad)
    assert blob.open_chunk_range(corrupt, RANGE_REF, 10, 2 * SEG, verify_id=False) == RANGE_PLAIN[10 : 2 * SEG]
    with pytest.raises(AuthenticationFailed):
        blob.open_chunk_range(corrupt, RANGE_REF, 2 * SEG, 2 * SEG + 1, verify_id=False)
    with pytest.raises(IdMismatch):
        blob.open_chunk_range(corrupt, RANGE_REF, 10, 20)
    with pytest.raises(ValueError):
        blob.open_chunk_range(RANGE_BLOB, RANGE_REF, 5, 4)
    with pytest.raises(ValueError):
        blob.open_chunk_range(RANGE_BLOB, RANGE_REF, 0, len(RANGE_PLAIN) + 1)



# ---------------------------------------------------------------------------------------------------- segments
def test_segment_count() -> None:
    assert [blob.segment_count(n) for n in (0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG + 1234)] == [1, 1, 1, 1, 2, 4]


def test_is_compressed_checks_the_envelope() -> None:
    assert not blob.is_compressed(RANGE_BLOB, RANGE_REF)
    assert blob.is_compressed(TEXT_BLOB, TEXT_REF)
    with pytest.raises(DecodeError):
        blob.is_compressed(RANGE_BLOB[:-1], RANGE_REF)
    with pytest.raises(DecodeError):  # a length in another bucket: caught by the envelope check
        blob.is_compressed(RANGE_BLOB, ChunkRef(blob=RANGE_REF.blob, key=RANGE_REF.key, length=RANGE_REF.length // 2))
    bad_salt = bytearray(RANGE_BLOB)
    bad_salt[10] ^= 1
    with pytest.raises(DecodeError):
        blob.is_compressed(bytes(bad_salt), RANGE_REF)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 4), st.integers(0, 4), st.booleans())
def test_open_segments_equal_slices(a: int, b: int, verify: bool) -> None:
    first, stop = min(a, b), max(a, b)
    plains = blob.open_segments(RANGE_BLOB, RANGE_REF, first, stop, verify_id=verify)
    assert plains == [RANGE_PLAIN[i * SEG : (i + 1) * SEG] for i in range(first, stop)]
    assert all(isinstance(p, bytes) for p in plains)


def test_open_segments_of_an_empty_chunk() -> None:
    ref, data = blob.seal_chunk(b"", KEY_BASE)
    assert blob.open_segments(data, ref, 0, 1) == [b""]


def test_open_segments_authenticates_only_what_it_opens() -> None:
    bad = bytearray(RANGE_BLOB)
    bad[blob.HEADER_LEN + 2 * (SEG + 16) + 5] ^= 1  # inside the third segment
    corrupt = bytes(bad)
    intact = [RANGE_PLAIN[:SEG], RANGE_PLAIN[SEG : 2 * SEG]]
    assert blob.open_segments(corrupt, RANGE_REF, 0, 2, verify_id=False) == intact
    assert blob.open_segments(corrupt, RANGE_REF, 3, 4, verify_id=False) == [RANGE_PLAIN[3 * SEG :]]
    for first, stop in ((2, 3), (1, 4)):
        with pytest.raises(AuthenticationFailed):
            blob.open_segments(corrupt, RANGE_REF, first, stop, verify_id=False)
    with pytest.raises(IdMismatch):
        blob.open_segments(corrupt, RANGE_REF, 0, 1)


def test_a_wrong_length_in_the_same_bucket_is_caught_by_the_padding() -> None:
    """The header only fixes the bucket; the marker right after the referenced length catches the rest."""
    wrong = ChunkRef(blob=RANGE_REF.blob, key=RANGE_REF.key, length=RANGE_REF.length + 1)
    assert padding.padded_length(wrong.length) == padding.padded_length(RANGE_REF.length)
    assert not blob.is_compressed(RANGE_BLOB, wrong)
    with pytest.raises(DecodeError):
        blob.open_chunk(RANGE_BLOB, wrong)
    with pytest.raises(DecodeError):
        blob.open_segments(RANGE_BLOB, wrong, 3, 4)
    with pytest.raises(DecodeError):
        blob.open_chunk_range(RANGE_BLOB, wrong, 0, wrong.length)
    assert blob.open_segments(RANGE_BLOB, wrong, 0, 3) == blob.open_segments(RANGE_BLOB, RANGE_REF, 0, 3)


def test_open_segments_rejects_compressed_blobs_and_bad_ranges() -> None:
    with pytest.raises(ValueError):
        blob.open_segments(TEXT_BLOB, TEXT_REF, 0, 1)
    for first, stop in ((-1, 1), (2, 1), (0, 5), (5, 5)):
        with pytest.raises(ValueError):
            blob.open_segments(RANGE_BLOB, RANGE_REF, first, stop)
    assert blob.open_segments(RANGE_BLOB, RANGE_REF, 4, 4) == []


def test_segments_are_bound_to_their_index() -> None:
    """Segments moved within a blob fail their tags (the nonce carries the index), so a segment-wise reader
    cannot be handed the right bytes at the wrong place."""
    seg_len = SEG + blob.TAG_LEN
    segs = [RANGE_BLOB[blob.HEADER_LEN + i * seg_len : blob.HEADER_LEN + (i + 1) * seg_len] for i in range(3)]
    swapped = RANGE_BLOB[: blob.HEADER_LEN] + segs[1] + segs[0] + segs[2] + RANGE_BLOB[blob.HEADER_LEN + 3 * seg_len :]
    for index in (0, 1):
        with pytest.raises(AuthenticationFailed):
            blob.open_segments(swapped, RANGE_REF, index, index + 1, verify_id=False)
    assert blob.open_segments(swapped, RANGE_REF, 2, 4, verify_id=False) == [
        RANGE_PLAIN[2 * SEG : 3 * SEG],
        RANGE_PLAIN[3 * SEG :],
    ]


# ---------------------------------------------------------------------------------------------------- vector
def vector_plaintexts() -> dict[str, bytes]:
    multi = crypto.derive_key("anysyncfs 2026 test vector data", b"blob multi-segment", 2 * SEG + 100)
    return {
        "small": b"anysyncfs blob test vector: 200 bytes, not compressible " + bytes(range(144)),
        "compressed": b"anysyncfs compressible " * 40,
        "multi_segment": multi,
    }


def test_vector() -> None:
    epoch_key = bytes.fromhex("e0" * 32)
    key_base = blob.chunk_key_base(epoch_key)
    computed = {}
    for name, p in vector_plaintexts().items():
        ref, data = blob.seal_chunk(p, key_base)
        entry = {
            "plaintext_len": len(p),
            "chunk_key_hex": ref.key.hex(),
            "blob_id_hex": ref.blob.hex(),
            "blob_len": len(data),
        }
        if len(data) <= 4096:
            entry["plaintext_hex"] = p.hex()
            entry["blob_hex"] = data.hex()
        computed[name] = entry
    doc = {
        "format": "chunk blob (tag 'B', version 2, padded to a Padme bucket)",
        "epoch_key_hex": epoch_key.hex(),
        "chunk_key_base_hex": key_base.hex(),
        "multi_segment_plaintext": "BLAKE3 derive_key('anysyncfs 2026 test vector data', b'blob multi-segment'), "
        f"{2 * SEG + 100} bytes of output",
        "zstd_level": blob.ZSTD_LEVEL,
        "blobs": computed,
    }
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTOR_PATH.parent.mkdir(parents=True, exist_ok=True)
        VECTOR_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    stored = json.loads(VECTOR_PATH.read_text())
    assert stored == doc
    for name, p in vector_plaintexts().items():
        e = stored["blobs"][name]
        ref = ChunkRef(blob=bytes.fromhex(e["blob_id_hex"]), key=bytes.fromhex(e["chunk_key_hex"]), length=len(p))
        if "blob_hex" in e:
            assert blob.open_chunk(bytes.fromhex(e["blob_hex"]), ref, key_base=key_base) == p
