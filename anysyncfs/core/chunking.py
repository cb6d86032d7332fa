"""Content-defined chunking (FastCDC 2020, via the Cython build of pyfastcdc), keyed per space.

Every device of a space must cut a file at exactly the same places, or deduplication across devices is lost.
The cut points depend only on the bytes, on the chunking parameters and on the space's **chunker key**: the
sizes live in the (cleartext) space header as ``min_size`` / ``avg_size`` / ``max_size``, normalized chunking
level 1 is fixed by this module, and the gear table is secret — derived from the chunker key, which only members
can compute (:func:`chunker_key`, from the epoch-0 key). Without the key the cut points of a guessed file cannot
be computed, so the sizes of the blobs a provider stores do not confirm the guess (issue 10, item 5).

The keyed gear table is ``GEAR[perm[b]] XOR seed`` for a secret byte permutation ``perm`` and a secret 63-bit
``seed`` (see :class:`GearSecret`). pyfastcdc applies the seed itself (it XORs it into its reference table); the
permutation is applied by translating the input bytes (``bytes.translate``, C speed) and cutting the translated
copy: a translated byte ``perm[b]`` looks up ``GEAR[perm[b]]``. Cut offsets are then taken from the original
bytes. (pyfastcdc takes no table of its own; a translated copy costs one pass of ~1 GB/s, see benchmarks.md.)

A chunk that starts at offset ``s`` is decided by at most ``max_size`` bytes from ``s`` on (FastCDC never looks
further), so a stream can be cut through a sliding buffer: a chunk is emitted only once at least ``max_size``
bytes from its start are in the buffer (or the stream has ended); otherwise the tail is carried into the next
buffer and cut again. The cuts are therefore identical to cutting the whole input at once, while memory stays
bounded by one read block plus one ``max_size`` tail.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from pyfastcdc.cy import FastCDC

from ..errors import DecodeError
from . import crypto

# Bounds accepted by pyfastcdc (and so by this format). Chunk plaintexts never exceed MAX_CHUNK_SIZE.
MIN_SIZE_RANGE = (64, 1 << 20)
AVG_SIZE_RANGE = (256, 4 << 20)
MAX_SIZE_RANGE = (1024, 16 << 20)
MAX_CHUNK_SIZE = MAX_SIZE_RANGE[1]
NORMALIZED_CHUNKING = 1  # FastCDC "NC" level: fixed by the format
GEAR_SEED = 0  # 0 = the reference gear table of the FastCDC paper (unkeyed parameters only: tests, benchmarks)

CHUNKER_KEY_CONTEXT = "anysyncfs 2026 chunker key v1"  # epoch-0 key -> chunker key (32 bytes)
GEAR_SECRET_CONTEXT = "anysyncfs 2026 chunker gear v1"  # chunker key -> byte permutation words + gear seed
_PERMUTATION_WORD = 8  # bytes of keyed material that rank one byte value
GEAR_SECRET_LEN = 256 * _PERMUTATION_WORD + 8  # 2056: 256 ranking words, then the seed word

# Stream reads are this large (or 2 * max_size if larger): big enough that the carried tail is a small fraction.
READ_BLOCK = 16 << 20


class Readable(Protocol):
    """A binary file object: ``readinto`` is used when present (no copy), else ``read``."""

    def read(self, n: int = -1, /) -> bytes: ...


def chunker_key(epoch0_key: bytes) -> bytes:
    """The space's chunker key: a secret of the members, the same in every key epoch (so cut points, and with
    them dedup of unchanged regions, survive a key rotation). Every member holds the epoch-0 key: the genesis,
    an invite or a join seals the current epoch's key to it, and each removal carries its previous epoch's key
    (``prev_key``), so the newest key opens every older one (``acl_fold.epoch_keys``)."""
    if len(epoch0_key) != crypto.KEY_LEN:
        raise ValueError("an epoch key is 32 bytes")
    return crypto.derive_key(CHUNKER_KEY_CONTEXT, epoch0_key)


@dataclass(frozen=True, slots=True)
class GearSecret:
    """What a chunker key fixes: input byte ``b`` is cut as ``translation[b]`` (a permutation of the 256 byte
    values), and pyfastcdc XORs ``seed`` (1 .. 2**63 - 1) into every entry of its reference gear table. The
    effective gear table is therefore ``GEAR[translation[b]] ^ seed``."""

    translation: bytes = field(repr=False)
    seed: int = field(repr=False)


@functools.lru_cache(maxsize=16)
def gear_secret(key: bytes) -> GearSecret:
    """Derive the gear secret of a chunker key (cached: 256 sort keys and one BLAKE3 XOF call).

    The permutation lists the byte values ascending by their 8-byte word of keyed material (a tie, probability
    below 2**-48, is broken by the byte value); the seed is the last 8 bytes as a big-endian integer shifted
    right by one (pyfastcdc needs it below 2**63), and 1 if that is 0 (pyfastcdc treats seed 0 as "no seed")."""
    if len(key) != crypto.KEY_LEN:
        raise ValueError("a chunker key is 32 bytes")
    material = crypto.derive_key(GEAR_SECRET_CONTEXT, key, GEAR_SECRET_LEN)
    words = [material[b * _PERMUTATION_WORD : (b + 1) * _PERMUTATION_WORD] for b in range(256)]
    translation = bytes(sorted(range(256), key=lambda b: (words[b], b)))
    seed = int.from_bytes(material[256 * _PERMUTATION_WORD :], "big") >> 1
    return GearSecret(translation, seed or 1)


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC parameters of a space (from its header: ``space.Chunking`` has the same three fields), in bytes,
    and its chunker ``key`` (:func:`chunker_key`). A power-of-two ``avg_size`` is usual (FastCDC's masks use its
    rounded log2) but not required.

    ``key=None`` cuts with the public reference gear table: what anyone can compute, so it is used only where no
    space is involved (unit tests of the mechanics, benchmarks, the attacker's side of the fingerprinting test);
    a replica always passes its space's key.

    Note FastCDC's skip of the first ``min_size`` bytes makes the mean chunk about ``avg_size + min_size``.
    """

    min_size: int = 256 << 10
    avg_size: int = 1 << 20
    max_size: int = 4 << 20
    key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_params(self.min_size, self.avg_size, self.max_size)
        if self.key is not None and len(self.key) != crypto.KEY_LEN:
            raise ValueError("a chunker key is 32 bytes")

    @property
    def translation(self) -> bytes | None:
        """The byte permutation applied before cutting, or None (unkeyed)."""
        return None if self.key is None else gear_secret(self.key).translation

    def chunker(self) -> FastCDC:
        """A fresh FastCDC cutter (not thread-safe: one per thread / per stream). It applies the seed half of the
        gear secret; the caller cuts the input translated by :attr:`translation`."""
        return FastCDC(
            self.avg_size,
            min_size=self.min_size,
            max_size=self.max_size,
            normalized_chunking=NORMALIZED_CHUNKING,
            seed=GEAR_SEED if self.key is None else gear_secret(self.key).seed,
        )


def check_params(min_size: int, avg_size: int, max_size: int) -> None:
    """Raise :class:`DecodeError` unless the three sizes are valid chunking parameters (they may come from a
    space header, i.e. from untrusted bytes)."""
    for name, value, (lo, hi) in (
        ("min_size", min_size, MIN_SIZE_RANGE),
        ("avg_size", avg_size, AVG_SIZE_RANGE),
        ("max_size", max_size, MAX_SIZE_RANGE),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise DecodeError(f"chunking parameter {name}={value!r} is outside [{lo}, {hi}]")
    if not min_size <= avg_size <= max_size:
        raise DecodeError("chunking parameters must satisfy min_size <= avg_size <= max_size")


DEFAULT_PARAMS = ChunkParams()


def iter_chunks(
    source: bytes | bytearray | memoryview | BinaryIO | Readable,
    params: ChunkParams = DEFAULT_PARAMS,
    *,
    prefix: bytes = b"",
    block_size: int = READ_BLOCK,
) -> Iterator[tuple[int, memoryview]]:
    """Yield ``(offset, data)`` for every chunk of ``source``, in order, covering it exactly.

    ``source`` is a bytes-like object or a binary file object read from its current position to EOF. ``prefix``
    (file objects only) is data already read from the stream that logically comes first. Each ``data``
    memoryview stays valid for as long as it is referenced (buffers are never reused), so chunks may be handed to
    worker threads. A bytes-like source is never copied: its chunks are views of it (keyed, only a window of at
    most one block is translated at a time).
    """
    block = max(block_size, 2 * params.max_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if prefix:
            raise ValueError("prefix is only for file objects")
        view = memoryview(source).cast("B")
        if params.key is None:
            for chunk in params.chunker().cut_buf(view):
                yield chunk.offset, chunk.data
            return
        yield from _iter_view_keyed(view, params, block)
        return
    yield from _iter_stream(source, params, memoryview(prefix), block)


def _iter_view_keyed(view: memoryview, params: ChunkParams, block: int) -> Iterator[tuple[int, memoryview]]:
    """Keyed cuts of an in-memory source through a sliding translated window (the same finality rule as
    :func:`_iter_stream`); chunks are views of ``view`` itself."""
    cutter = params.chunker()
    translation = params.translation
    assert translation is not None
    max_size = params.max_size
    window = memoryview(bytearray(min(len(view), block + max_size)))
    base = 0  # source offset of window[0]
    translated = 0  # window[:translated] is already the translation of view[base : base + translated]
    while True:
        filled = min(len(window), len(view) - base)
        _translate(view[base:], window, translated, filled, translation)
        eof = base + filled == len(view)
        safe_end = filled if eof else filled - max_size + 1
        start = 0
        for chunk in cutter.cut_buf(window[:filled]):
            end = chunk.offset + chunk.length
            yield base + chunk.offset, view[base + chunk.offset : base + end]
            start = end
            if start >= safe_end:
                break
        if eof:
            return
        translated = filled - start
        window[:translated] = window[start:filled]  # memoryview assignment: overlap-safe
        base += start


def _iter_stream(
    stream: Readable, params: ChunkParams, carry: memoryview, block: int
) -> Iterator[tuple[int, memoryview]]:
    cutter = params.chunker()
    translation = params.translation
    max_size = params.max_size
    capacity = max(block, len(carry)) + max_size
    # Keyed: the cutter reads a translated copy (the secret byte permutation), chunks hand out the original bytes.
    # The copy is never handed out, so one buffer serves every round; its front keeps the translation of the
    # carried tail, so each byte is translated once.
    translated_buf = memoryview(bytearray(capacity)) if translation is not None else None
    translated = 0  # translated_buf[:translated] is the translation of the carry
    base = 0  # stream offset of buf[0]
    while True:
        # A fresh buffer each round: memoryviews handed out earlier keep their (immutable by us) old buffer.
        # Always the same size, so the allocator hands back recently freed memory (no page faults per block).
        # (The carry is shorter than max_size after the first round, the prefix fits in the first.)
        buf = bytearray(capacity)
        view = memoryview(buf)
        view[: len(carry)] = carry
        if translated_buf is None:
            filled = len(carry) + _read_fully(stream, view[len(carry) :])
        else:
            assert translation is not None
            filled = _read_translating(stream, view, len(carry), translated_buf, translated, translation)
        eof = filled < len(buf)
        view = view[:filled]
        cut_view = view if translated_buf is None else translated_buf[:filled]
        # A chunk is final once max_size bytes from its start are present (or at EOF); the rest is carried
        # over, and it is checked before cutting so no cut is computed twice.
        safe_end = filled if eof else filled - max_size + 1  # chunks starting before this are final
        start = 0
        for chunk in cutter.cut_buf(cut_view):
            end = chunk.offset + chunk.length
            yield base + chunk.offset, view[chunk.offset : end]
            start = end
            if start >= safe_end:
                break
        if eof:
            return
        carry = view[start:]
        if translated_buf is not None:
            translated = filled - start
            translated_buf[:translated] = translated_buf[start:filled]  # memoryview assignment: overlap-safe
        base += filled - len(carry)


# Keyed reads go in pieces this large, each translated while it is still in the CPU cache: bytes.translate returns
# a new object, and one translate of a whole 20 MiB round would read it back from memory and take a page fault
# per 4 KiB of its output (measured on the 2-core VM: ~1.3 GB/s against ~2.2 GB/s per CPU-second in pieces).
_TRANSLATE_PIECE = 256 * 1024


def _read_translating(
    stream: Readable, buf: memoryview, start: int, translated_buf: memoryview, translated: int, table: bytes
) -> int:
    """Fill ``buf[start:]`` from ``stream`` (as :func:`_read_fully`) and make ``translated_buf[:filled]`` the
    translation of ``buf[:filled]`` (its first ``translated`` bytes already are); return ``filled``."""
    _translate(buf, translated_buf, translated, start, table)  # the part of the carry not translated yet
    filled = start
    while filled < len(buf):
        want = min(_TRANSLATE_PIECE, len(buf) - filled)
        got = _read_fully(stream, buf[filled : filled + want])
        _translate(buf, translated_buf, filled, filled + got, table)
        filled += got
        if got < want:
            break
    return filled


def _translate(source: memoryview, into: memoryview, start: int, stop: int, table: bytes) -> None:
    """``into[start:stop] = source[start:stop]`` with every byte ``b`` replaced by ``table[b]``."""
    for lo in range(start, stop, _TRANSLATE_PIECE):
        hi = min(lo + _TRANSLATE_PIECE, stop)
        into[lo:hi] = source[lo:hi].tobytes().translate(table)


def _read_fully(stream: Readable, into: memoryview) -> int:
    """Fill ``into`` from ``stream`` until it is full or the stream ends; return the byte count."""
    readinto = getattr(stream, "readinto", None)
    got = 0
    while got < len(into):
        if readinto is not None:
            n = readinto(into[got:])
        else:
            data = stream.read(len(into) - got)
            n = len(data)
            into[got : got + n] = data
        if not n:
            break
        got += n
    return got
