"""The encrypted chunk envelope ("blob") and the convergent chunk key.

Blob layout (all integers big-endian)::

    offset  size  field
    0       1     format tag: ASCII "B" (0x42)
    1       1     format version: 2
    2       1     flags: bit 0 = the stored plaintext is a zstd frame; bits 1..7 must be 0
    3       4     padded length P (u32): a Padmé bucket, P = padme(L + 1) for the stored length L (bytes of
                  the stored plaintext, after compression, <= 16 MiB)
    7       16    key salt: all zero when not compressed; when compressed, the first 16 bytes of
                  BLAKE3-keyed(chunk key, stored plaintext)
    23      ...   segments: the padded plaintext (stored plaintext || 0x80 || zero bytes, P bytes in all; see
                  :mod:`.padding`) cut into 64 KiB pieces (the last one shorter), each sealed on its own with
                  AES-256-GCM as ciphertext || 16-byte tag

    segment count n = ceil(P / 65536); total length = 23 + P + 16 * n exactly
    segment key     = BLAKE3 derive_key("anysyncfs 2026 blob segment key v1", chunk key || key salt)
    nonce (12 B)    = segment index (u64) || 3 zero bytes || 1 for the last segment, else 0
    associated data = the 23 header bytes

The blob ID is BLAKE3 of the whole blob, so anyone (a provider too) checks a blob without keys. The chunk key is
convergent inside a space epoch: ``BLAKE3-keyed(derive_key("anysyncfs 2026 chunk key v1", epoch key), plaintext)``,
so equal chunks give equal blobs (dedup) without revealing equality to anyone outside the space epoch.

Why padding: a provider sees blob lengths; exact lengths let it match the sizes of a guessed file's chunks. The
padded length reveals only a Padmé bucket (<= 12 % larger), and the exact length lives inside the AEAD. The
padding of an uncompressed blob starts at the chunk length (from the ChunkRef), so a segment is still opened on
its own: the data of segment i is chunk bytes [i * 64 KiB, ...), whatever padding follows is checked when a
segment holding it is opened.

Why a key salt: the compressed bytes depend on the zstd library version, so two devices could compress the same
chunk differently. Sealing two different stored plaintexts under the same key and nonces would be AES-GCM nonce
reuse; the salt (a PRF of the stored bytes) gives every distinct stored plaintext its own segment key.
An uncompressed blob's stored plaintext is fixed by its chunk key, so its salt is zero.
"""

from __future__ import annotations

import struct
import threading

import zstandard

from ..errors import DecodeError, IdMismatch, IntegrityError
from . import crypto, padding
from .ops import ChunkRef

BLOB_TAG = ord("B")
BLOB_VERSION = 2  # 2: padded to a Padmé bucket (version 1, exact lengths, is no longer read)
FLAG_ZSTD = 0x01  # the stored plaintext is one zstd frame (with its content size) of the chunk
KNOWN_FLAGS = FLAG_ZSTD
HEADER = struct.Struct(">BBBI16s")  # tag, version, flags, padded length, key salt
HEADER_LEN = HEADER.size  # 23
SALT_LEN = 16
ZERO_SALT = bytes(SALT_LEN)
SEGMENT_SIZE = 64 * 1024
TAG_LEN = crypto.TAG_LEN
NONCE = struct.Struct(">Q3xB")  # segment index, 3 zero bytes, last-segment flag

MAX_CHUNK_LENGTH = 16 << 20  # plaintext of one chunk (FastCDC max_size bound; manifests too)
MAX_STORED_LENGTH = MAX_CHUNK_LENGTH
MAX_PADDED_LENGTH = padding.padded_length(MAX_STORED_LENGTH)  # 16.5 MiB
MAX_SEGMENTS = -(-MAX_PADDED_LENGTH // SEGMENT_SIZE)  # 264
MAX_BLOB_LEN = HEADER_LEN + MAX_PADDED_LENGTH + MAX_SEGMENTS * TAG_LEN

CHUNK_KEY_CONTEXT = "anysyncfs 2026 chunk key v1"
SEGMENT_KEY_CONTEXT = "anysyncfs 2026 blob segment key v1"

# zstd level 3 (zstd's own default). Measured on this project's 2-core VM: level 1 compresses real text and
# binaries ~1.3x faster but stores 9-15 % more; on the bench's half-compressible 1 GiB file the whole write path
# costs 1.4x less CPU at level 1, yet level 3 with two workers already passes 500 MB/s (scripts/bench_core).
# All devices should use the same level so that equal chunks give equal blobs.
ZSTD_LEVEL = 3
# Compression is kept only if it saves at least 1/32 of the chunk: an uncompressed blob can be read by ranges
# (only the segments needed are decrypted), a compressed one must be opened whole, so a tiny gain is not worth it.
COMPRESS_MIN_SAVING_DIVISOR = 32
COMPRESS_MIN_LENGTH = 64  # below this zstd cannot gain anything worthwhile
# A chunk longer than COMPRESS_PROBE_MIN is compressed only if one of COMPRESS_PROBES evenly spaced windows of
# COMPRESS_PROBE_SIZE bytes (at i * length / COMPRESS_PROBES) would be kept compressed by the rule above:
# incompressible data (media, archives) then costs 1/16 of a zstd pass instead of a whole one (~20 % of the
# write path's CPU), while a chunk that is partly compressible is still found. A pure function of the
# plaintext, so every device decides alike.
COMPRESS_PROBES = 4
COMPRESS_PROBE_SIZE = 16 * 1024
COMPRESS_PROBE_MIN = 256 * 1024

_local = threading.local()  # zstd (de)compressor objects are not safe to share between threads


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "compressor", None)
    if c is None:
        c = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def chunk_key_base(epoch_key: bytes) -> bytes:
    """The key under which chunk keys of one space epoch are computed (keep it secret, like the epoch key)."""
    if len(epoch_key) != crypto.KEY_LEN:
        raise ValueError("an epoch key is 32 bytes")
    return crypto.derive_key(CHUNK_KEY_CONTEXT, epoch_key)


def chunk_key(key_base: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
    return crypto.blake3_keyed(key_base, plaintext)


def _segment_aead(key: bytes, salt: bytes) -> crypto.Aead:
    return crypto.Aead(crypto.derive_key(SEGMENT_KEY_CONTEXT, key + salt))


def _segment_count(length: int) -> int:
    """Segments that hold ``length`` bytes of (padded) plaintext; a length of 0 still has one."""
    return max(1, -(-length // SEGMENT_SIZE))


def _saves_enough(packed_length: int, length: int) -> bool:
    return packed_length <= length - max(1, length // COMPRESS_MIN_SAVING_DIVISOR)


def _worth_compressing(view: memoryview) -> bool:
    length = len(view)
    if length <= COMPRESS_PROBE_MIN:
        return True
    compressor = _compressor()
    for i in range(COMPRESS_PROBES):
        start = i * length // COMPRESS_PROBES
        window = view[start : start + COMPRESS_PROBE_SIZE]
        if _saves_enough(len(compressor.compress(window)), COMPRESS_PROBE_SIZE):
            return True
    return False


def seal_chunk(
    plaintext: bytes | bytearray | memoryview, key_base: bytes, *, compress: bool = True
) -> tuple[ChunkRef, bytes]:
    """Encrypt one chunk: its :class:`ChunkRef` (blob ID, chunk key, length) and the blob bytes.

    Deterministic: the same plaintext under the same key base always gives the same blob.
    """
    view = memoryview(plaintext).cast("B")
    length = len(view)
    if length > MAX_CHUNK_LENGTH:
        raise ValueError(f"a chunk is at most {MAX_CHUNK_LENGTH} bytes, got {length}")
    key = chunk_key(key_base, view)
    stored: bytes | memoryview = view
    flags = 0
    salt = ZERO_SALT
    if compress and length >= COMPRESS_MIN_LENGTH and _worth_compressing(view):
        packed = _compressor().compress(view)
        if _saves_enough(len(packed), length):
            stored, flags, salt = packed, FLAG_ZSTD, crypto.blake3_keyed(key, packed)[:SALT_LEN]
    padded_length = padding.padded_length(len(stored))
    header = HEADER.pack(BLOB_TAG, BLOB_VERSION, flags, padded_length, salt)
    aead = _segment_aead(key, salt)
    count = _segment_count(padded_length)
    # Whole segments of stored bytes are sealed straight from ``stored``; the rest (the segment the data ends
    # in and any after it) from one padded copy of that tail.
    tail_from = len(stored) // SEGMENT_SIZE * SEGMENT_SIZE
    tail = padding.pad_to(stored[tail_from:], padded_length - tail_from)
    parts = [header]
    for index in range(count):
        lo = index * SEGMENT_SIZE
        hi = min(lo + SEGMENT_SIZE, padded_length)
        segment = stored[lo:hi] if lo < tail_from else tail[lo - tail_from : hi - tail_from]
        parts.append(aead.encrypt(NONCE.pack(index, index == count - 1), segment, header))
    blob = b"".join(parts)
    return ChunkRef(blob=crypto.blake3(blob), key=key, length=length), blob


def _check_header(blob: bytes | memoryview, ref: ChunkRef) -> tuple[int, int, bytes]:
    """Validate the envelope against ``ref`` before any decryption; return (flags, padded length, salt)."""
    return check_header(bytes(memoryview(blob)[:HEADER_LEN]), len(blob), ref)


def check_header(header: bytes, blob_length: int, ref: ChunkRef) -> tuple[int, int, bytes]:
    """Validate a blob's first :data:`HEADER_LEN` bytes and its total length against ``ref`` before any
    decryption (:class:`DecodeError`); return (flags, padded length, key salt). A blob file that was cut short
    (or grown) fails here, whatever its header says."""
    if ref.length > MAX_CHUNK_LENGTH:
        raise DecodeError(f"blob: chunk length {ref.length} exceeds the limit of {MAX_CHUNK_LENGTH}")
    if len(header) < HEADER_LEN or blob_length < HEADER_LEN:
        raise DecodeError(f"blob: truncated ({min(len(header), blob_length)} bytes)")
    tag, version, flags, padded_length, salt = HEADER.unpack_from(header)
    if tag != BLOB_TAG:
        raise DecodeError(f"blob: wrong format tag 0x{tag:02x}")
    if version != BLOB_VERSION:
        raise DecodeError(f"blob: unsupported version {version}")
    if flags & ~KNOWN_FLAGS:
        raise DecodeError(f"blob: unknown flags 0x{flags:02x}")
    if padded_length > MAX_PADDED_LENGTH:
        raise DecodeError(f"blob: padded length {padded_length} exceeds the limit")
    if padded_length == 0 or not padding.is_bucket(padded_length):
        raise DecodeError(f"blob: {padded_length} is not a padded length")
    if blob_length != HEADER_LEN + padded_length + _segment_count(padded_length) * TAG_LEN:
        raise DecodeError("blob: length does not match its padded length")
    if flags & FLAG_ZSTD:
        # the stored frame is shorter than the chunk, so its padded length is at most that of length - 1
        if ref.length == 0 or padded_length > padding.padded_length(ref.length - 1):
            raise DecodeError("blob: compressed form is not smaller than the chunk")
    else:
        if padded_length != padding.padded_length(ref.length):
            raise DecodeError(f"blob: padded length {padded_length} does not fit a chunk of {ref.length} bytes")
        if salt != ZERO_SALT:
            raise DecodeError("blob: an uncompressed blob has a zero key salt")
    return flags, padded_length, salt


def _decrypt_segments(
    blob: bytes | memoryview, ref: ChunkRef, padded_length: int, salt: bytes, first: int, stop: int
) -> list[bytes]:
    """Decrypt and authenticate segments ``first:stop`` of the padded plaintext (each tag checked on its own)."""
    view = memoryview(blob)
    at, size = _segments_span(padded_length, first, stop)
    return _decrypt_run(bytes(view[:HEADER_LEN]), view[at : at + size], ref, padded_length, salt, first, stop)


def _segments_span(padded_length: int, first: int, stop: int) -> tuple[int, int]:
    """(offset, size) in the blob of the sealed segments ``first:stop`` (``first < stop``)."""
    at = HEADER_LEN + first * (SEGMENT_SIZE + TAG_LEN)
    end_plain = min(stop * SEGMENT_SIZE, padded_length)
    return at, end_plain - first * SEGMENT_SIZE + (stop - first) * TAG_LEN


def _decrypt_run(
    header: bytes, sealed: bytes | memoryview, ref: ChunkRef, padded_length: int, salt: bytes, first: int, stop: int
) -> list[bytes]:
    """Open the consecutive sealed segments ``first:stop`` held in ``sealed`` (exactly their bytes), each under
    the segment key of (chunk key, salt), its own nonce (index, last flag) and the header as associated data."""
    view = memoryview(sealed)
    aead = _segment_aead(ref.key, salt)
    count = _segment_count(padded_length)
    plaintexts: list[bytes] = []
    at = 0
    for index in range(first, stop):
        size = min(SEGMENT_SIZE, padded_length - index * SEGMENT_SIZE) + TAG_LEN
        plaintexts.append(aead.decrypt(NONCE.pack(index, index == count - 1), view[at : at + size], header))
        at += size
    return plaintexts


def _data_of(plaintexts: list[bytes], first: int, length: int) -> list[bytes]:
    """The chunk bytes (below ``length``) of each of the consecutive padded segments from ``first`` on (b"" for a
    segment of padding only), checking every padding byte they hold: the marker at ``length``, zeros after it
    (:class:`DecodeError` otherwise)."""
    parts: list[bytes] = []
    for index, plain in enumerate(plaintexts, first):
        keep = max(0, min(len(plain), length - index * SEGMENT_SIZE))
        if keep == len(plain):
            parts.append(plain)
            continue
        padding.check_padding(memoryview(plain)[keep:], starts_at_marker=index * SEGMENT_SIZE + keep == length)
        parts.append(plain[:keep])
    return parts


def _open_range(blob: bytes | memoryview, ref: ChunkRef, padded_length: int, start: int, end: int) -> bytes:
    """Bytes ``start:end`` (``start < end``) of an uncompressed chunk: only the segments holding them are opened."""
    first, stop = start // SEGMENT_SIZE, (end - 1) // SEGMENT_SIZE + 1
    parts = _data_of(_decrypt_segments(blob, ref, padded_length, ZERO_SALT, first, stop), first, ref.length)
    joined = parts[0] if len(parts) == 1 else b"".join(parts)
    lo = start - first * SEGMENT_SIZE
    return joined if lo == 0 and end - start == len(joined) else joined[lo : lo + end - start]


def _check_id(blob: bytes | memoryview, ref: ChunkRef) -> None:
    if len(blob) > MAX_BLOB_LEN:
        raise DecodeError(f"blob: {len(blob)} bytes exceeds the limit of {MAX_BLOB_LEN}")
    if crypto.blake3(blob) != ref.blob:
        raise IdMismatch("blob does not hash to its ID")


def open_chunk(
    blob: bytes | memoryview, ref: ChunkRef, *, verify_id: bool = True, key_base: bytes | None = None
) -> bytes:
    """Verify and decrypt a whole blob; return the chunk plaintext (exactly ``ref.length`` bytes).

    Order: blob ID (:class:`IdMismatch`, skipped only with ``verify_id=False`` when the caller has just checked
    it), envelope (:class:`DecodeError`), every segment (:class:`AuthenticationFailed`), the padding (canonical:
    marker then zeros, :class:`DecodeError`), decompression under a hard bound (:class:`DecodeError`), then — when
    ``key_base`` (the chunk key base of the epoch the chunk was written in) is given — that the plaintext's keyed
    hash is the chunk key (:class:`IntegrityError`).
    """
    if verify_id:
        _check_id(blob, ref)
    flags, padded_length, salt = _check_header(blob, ref)
    segments = _decrypt_segments(blob, ref, padded_length, salt, 0, _segment_count(padded_length))
    if flags & FLAG_ZSTD:
        padded = segments[0] if len(segments) == 1 else b"".join(segments)
        stored_length = padding.unpadded_length(padded)
        if stored_length >= ref.length:
            raise DecodeError("blob: compressed form is not smaller than the chunk")
        plaintext = _decompress(memoryview(padded)[:stored_length], ref.length)
    else:
        parts = [part for part in _data_of(segments, 0, ref.length) if part]
        plaintext = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(plaintext) != ref.length:
        raise DecodeError("blob: plaintext length differs from the reference")
    if key_base is not None and not crypto.ct_equal(chunk_key(key_base, plaintext), ref.key):
        raise IntegrityError("blob: plaintext does not match its chunk key")
    return plaintext


def _decompress(stored: bytes | memoryview, length: int) -> bytes:
    """One zstd frame that declares exactly ``length`` bytes; nothing may follow it."""
    try:
        declared = zstandard.frame_content_size(stored)
        if declared != length:
            raise DecodeError(f"blob: zstd frame declares {declared} bytes, expected {length}")
        out = _decompressor().decompress(stored, max_output_size=length, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise DecodeError(f"blob: bad zstd frame: {e}") from None
    if len(out) != length:
        raise DecodeError("blob: zstd frame decompressed to the wrong length")
    return out


def open_chunk_range(blob: bytes | memoryview, ref: ChunkRef, start: int, end: int, *, verify_id: bool = True) -> bytes:
    """Bytes ``start:end`` of the chunk. For an uncompressed blob only the segments covering the range are
    decrypted (and authenticated, and the padding they hold checked); a compressed blob is opened whole. Errors
    as :func:`open_chunk`."""
    if not 0 <= start <= end <= ref.length:
        raise ValueError(f"range {start}:{end} is outside the chunk of {ref.length} bytes")
    if verify_id:
        _check_id(blob, ref)
    flags, padded_length, _ = _check_header(blob, ref)
    if flags & FLAG_ZSTD:
        return open_chunk(blob, ref, verify_id=False)[start:end]
    if start == end:
        return b""
    return _open_range(blob, ref, padded_length, start, end)


# ---------------------------------------------------------------------------------------------------- segment access
# For readers that cache a verified blob and decrypt it a segment at a time (random reads decrypt 64 KiB, not the
# whole chunk). Only an uncompressed blob can be opened this way: its segment i holds chunk bytes
# [i * SEGMENT_SIZE, min((i + 1) * SEGMENT_SIZE, length)).


def segment_count(length: int) -> int:
    """Segments holding the data of an uncompressed chunk of ``length`` bytes (an empty one still has one); the
    blob may have more, holding only padding, which segment reads never need."""
    return _segment_count(length)


def is_compressed(blob: bytes | memoryview, ref: ChunkRef) -> bool:
    """Check the envelope against ``ref`` (:class:`DecodeError`, nothing decrypted) and tell whether it holds a
    zstd frame: such a chunk can only be opened whole (:func:`open_chunk`), any other by :func:`open_segments`."""
    flags, _, _ = _check_header(blob, ref)
    return bool(flags & FLAG_ZSTD)


def open_segments(
    blob: bytes | memoryview, ref: ChunkRef, first: int, stop: int, *, verify_id: bool = True
) -> list[bytes]:
    """The chunk bytes held by data segments ``first:stop`` of an uncompressed blob (segment i holds bytes
    [i * SEGMENT_SIZE, min((i + 1) * SEGMENT_SIZE, length))), each authenticated on its own (the others are not
    touched), with the padding they hold checked. Errors as :func:`open_chunk`; ``ValueError`` for a compressed
    blob or a bad range."""
    if verify_id:
        _check_id(blob, ref)
    flags, padded_length, salt = _check_header(blob, ref)
    if flags & FLAG_ZSTD:
        raise ValueError("a compressed blob is opened whole, not by segments")
    count = _segment_count(ref.length)
    if not 0 <= first <= stop <= count:
        raise ValueError(f"segments {first}:{stop} are outside the chunk's {count}")
    return _data_of(_decrypt_segments(blob, ref, padded_length, salt, first, stop), first, ref.length)


# ------------------------------------------------------------------------------------------------ partial blob reads
# For a reader that holds the blob in a local file and reads (pread) only the bytes it needs: the header, then the
# sealed segments of the range. The blob ID is NOT checked on this path (that would need every byte); what makes
# it safe is that each segment is authenticated on its own and bound to everything that could be swapped:
#
# - to this chunk: the segment key is derived from the chunk key (from the signed ChunkRef; it is the keyed hash
#   of the chunk's plaintext). A segment of another blob was sealed under another key and fails its tag; a blob
#   of the same chunk key is the same plaintext sealed the same way (sealing is deterministic), so the same bytes.
# - to its position: the nonce is the segment index and a last-segment flag, so a segment moved to another index
#   fails, and so does a last segment presented as an inner one or the reverse.
# - to the header: the header is every segment's associated data, and for an uncompressed chunk it is fixed by
#   ``ref.length`` (flags 0, zero salt, padded length padme(length + 1)) and checked against it exactly.
# - to the file's length: :func:`check_header` checks the file size against the padded length, so a truncated
#   (or extended) file fails before any segment is read, and a short read of a segment is an error.
#
# The whole-blob BLAKE3 ID is still checked whenever a blob enters the store (from the network, and when written
# locally) and by ``fsck``; the local read path relies on the per-segment tags.


def segments_span(ref: ChunkRef, first: int, stop: int) -> tuple[int, int]:
    """(offset, size) of the sealed data segments ``first:stop`` (``first < stop``) in the blob of an
    uncompressed chunk of ``ref.length`` bytes: the only bytes besides the header that reading them needs.
    :class:`DecodeError` for a reference longer than any chunk (before anything is read for it)."""
    if ref.length > MAX_CHUNK_LENGTH:
        raise DecodeError(f"blob: chunk length {ref.length} exceeds the limit of {MAX_CHUNK_LENGTH}")
    count = _segment_count(ref.length)
    if not 0 <= first < stop <= count:
        raise ValueError(f"segments {first}:{stop} are outside the chunk's {count}")
    return _segments_span(padding.padded_length(ref.length), first, stop)


def uncompressed_blob_length(ref: ChunkRef) -> int:
    """The exact length of the blob of ``ref`` if it is stored uncompressed."""
    padded_length = padding.padded_length(ref.length)
    return HEADER_LEN + padded_length + _segment_count(padded_length) * TAG_LEN


def uncompressed_header(ref: ChunkRef) -> bytes:
    """The 23 header bytes the blob of ``ref`` has if it is stored uncompressed: they are fixed by the chunk
    length (flags 0, P = padme(length + 1), zero salt). A reader that holds only some segments of a blob (fetched
    by ranges) may use these instead of the blob's own header: the header is every segment's associated data and
    the segment key of an uncompressed blob has the zero salt, so a segment opens under them only if the blob's
    real header is exactly these bytes (a compressed blob's segments fail their tags: another key, another
    header). :class:`DecodeError` for a reference longer than any chunk."""
    if ref.length > MAX_CHUNK_LENGTH:
        raise DecodeError(f"blob: chunk length {ref.length} exceeds the limit of {MAX_CHUNK_LENGTH}")
    return HEADER.pack(BLOB_TAG, BLOB_VERSION, 0, padding.padded_length(ref.length), ZERO_SALT)


def open_sealed_segments(
    header: bytes, blob_length: int, sealed: bytes | memoryview, ref: ChunkRef, first: int, stop: int
) -> list[bytes]:
    """The chunk bytes of data segments ``first:stop`` of an uncompressed blob, from its ``header``, the blob
    file's length and ``sealed``, exactly the blob bytes :func:`segments_span` names. The header and length are
    checked first (:func:`check_header`), then each segment's tag (:class:`AuthenticationFailed`), then the
    padding it holds (:class:`DecodeError`); fewer or more bytes than the span is a :class:`DecodeError` (a file
    cut short while read)."""
    flags, padded_length, salt = check_header(header, blob_length, ref)
    if flags & FLAG_ZSTD:
        raise ValueError("a compressed blob is opened whole, not by segments")
    _, size = segments_span(ref, first, stop)
    if len(sealed) != size:
        raise DecodeError(f"blob: {len(sealed)} bytes of segments {first}:{stop}, expected {size}")
    return _data_of(_decrypt_run(header, sealed, ref, padded_length, salt, first, stop), first, ref.length)
