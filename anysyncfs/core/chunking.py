"""Content-defined chunking (FastCDC 2020, via the Cython build of pyfastcdc).

Every device of a space must cut a file at exactly the same places, or deduplication across devices is lost.
The cut points depend only on the bytes and on the chunking parameters, which live in the space header:
``min_size`` / ``avg_size`` / ``max_size``, with normalized chunking level 1 and the default gear table
(seed 0) fixed by this module (they are not parameters of the format).

A chunk that starts at offset ``s`` is decided by at most ``max_size`` bytes from ``s`` on (FastCDC never looks
further), so a stream can be cut through a sliding buffer: a chunk is emitted only once at least ``max_size``
bytes from its start are in the buffer (or the stream has ended); otherwise the tail is carried into the next
buffer and cut again. The cuts are therefore identical to cutting the whole input at once, while memory stays
bounded by one read block plus one ``max_size`` tail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from pyfastcdc.cy import FastCDC

from ..errors import DecodeError

# Bounds accepted by pyfastcdc (and so by this format). Chunk plaintexts never exceed MAX_CHUNK_SIZE.
MIN_SIZE_RANGE = (64, 1 << 20)
AVG_SIZE_RANGE = (256, 4 << 20)
MAX_SIZE_RANGE = (1024, 16 << 20)
MAX_CHUNK_SIZE = MAX_SIZE_RANGE[1]
NORMALIZED_CHUNKING = 1  # FastCDC "NC" level: fixed by the format
GEAR_SEED = 0  # 0 = the reference gear table of the FastCDC paper; fixed by the format

# Stream reads are this large (or 2 * max_size if larger): big enough that the carried tail is a small fraction.
READ_BLOCK = 16 << 20


class Readable(Protocol):
    """A binary file object: ``readinto`` is used when present (no copy), else ``read``."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC parameters of a space (from its header: ``space.Chunking`` has the same three fields), in bytes.
    A power-of-two ``avg_size`` is usual (FastCDC's masks use its rounded log2) but not required.

    Note FastCDC's skip of the first ``min_size`` bytes makes the mean chunk about ``avg_size + min_size``.
    """

    min_size: int = 256 << 10
    avg_size: int = 1 << 20
    max_size: int = 4 << 20

    def __post_init__(self) -> None:
        check_params(self.min_size, self.avg_size, self.max_size)

    def chunker(self) -> FastCDC:
        """A fresh FastCDC cutter (not thread-safe: one per thread / per stream)."""
        return FastCDC(
            self.avg_size,
            min_size=self.min_size,
            max_size=self.max_size,
            normalized_chunking=NORMALIZED_CHUNKING,
            seed=GEAR_SEED,
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

    ``source`` is a bytes-like object (cut in place, no copy) or a binary file object read from its current
    position to EOF. ``prefix`` (file objects only) is data already read from the stream that logically comes
    first. Each ``data`` memoryview stays valid for as long as it is referenced (buffers are never reused), so
    chunks may be handed to worker threads.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if prefix:
            raise ValueError("prefix is only for file objects")
        view = memoryview(source).cast("B")
        for chunk in params.chunker().cut_buf(view):
            yield chunk.offset, chunk.data
        return
    yield from _iter_stream(source, params, memoryview(prefix), max(block_size, 2 * params.max_size))


def _iter_stream(
    stream: Readable, params: ChunkParams, carry: memoryview, block: int
) -> Iterator[tuple[int, memoryview]]:
    cutter = params.chunker()
    max_size = params.max_size
    capacity = max(block, len(carry)) + max_size
    base = 0  # stream offset of buf[0]
    while True:
        # A fresh buffer each round: memoryviews handed out earlier keep their (immutable by us) old buffer.
        # Always the same size, so the allocator hands back recently freed memory (no page faults per block).
        # (The carry is shorter than max_size after the first round, the prefix fits in the first.)
        buf = bytearray(capacity)
        view = memoryview(buf)
        view[: len(carry)] = carry
        filled = len(carry) + _read_fully(stream, view[len(carry) :])
        eof = filled < len(buf)
        view = view[:filled]
        # A chunk is final once max_size bytes from its start are present (or at EOF); the rest is carried
        # over, and it is checked before cutting so no cut is computed twice.
        safe_end = filled if eof else filled - max_size + 1  # chunks starting before this are final
        start = 0
        for chunk in cutter.cut_buf(view):
            yield base + chunk.offset, chunk.data
            start = chunk.offset + chunk.length
            if start >= safe_end:
                break
        if eof:
            return
        carry = view[start:]
        base += filled - len(carry)


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
