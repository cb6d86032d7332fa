"""File content: bytes -> :class:`ops.Content` (inline, extents or a manifest blob) and back, by byte ranges.

- Up to ``INLINE_MAX`` bytes: the bytes travel inline in the change.
- Larger: FastCDC chunks (sizes and chunker key of the space, :mod:`.chunking`; unkeyed parameters cut with
  the public gear table, which only tests and benchmarks do), each sealed as a padded blob (:mod:`.blob`); the
  content is the list of extents ``(offset, ChunkRef)``. A chunk of only zero bytes is left out: it becomes a
  hole, and holes (gaps between extents, and anything past the last extent up to ``size``) read as zeros.
- More than ``MANIFEST_INLINE_EXTENTS`` extents: the msgpack-encoded extents list (a msgpack array of
  ``Extent`` arrays) is itself sealed as a chunk blob and ``Content.manifest`` points at it.

Extents must be sorted by offset, must not overlap, have a length >= 1 and start before ``size``; the last one
may extend past ``size`` (the excess is not part of the file: truncation need not rewrite a chunk).

Sealing is CPU work that releases the GIL (BLAKE3, AES-GCM, zstd), so a builder may spread chunks over a thread
pool; blobs are still handed to ``put_blob`` in file order, on the calling thread, each new ID once.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, BinaryIO

import msgspec

from ..errors import DecodeError, TooLarge
from . import blob as blobs
from .chunking import DEFAULT_PARAMS, ChunkParams, Readable, iter_chunks
from .encoding import decode, encode
from .ops import INLINE_MAX, ChunkRef, Content, Extent

MANIFEST_INLINE_EXTENTS = 128  # above this many extents the list moves into a manifest blob
# An encoded extent takes at most 84 bytes: array(1) + offset(9) + array(1) + 2 * bin8(2+32) + length(5).
EXTENT_MAX_ENCODED = 84
MAX_MANIFEST_EXTENTS = (blobs.MAX_CHUNK_LENGTH - 5) // EXTENT_MAX_ENCODED  # 199728: ~240 GiB at default params
ZERO_PROBE = 64  # a chunk whose first bytes are not all zero is not a hole (cheap test before the full one)

PutBlob = Callable[[bytes, bytes], None]  # (blob id, blob bytes)
GetBlob = Callable[[bytes], bytes]  # blob id -> blob bytes (raises NotFound / IdMismatch itself)
Source = bytes | bytearray | memoryview | BinaryIO | Readable

ManifestExtents = Annotated[list[Extent], msgspec.Meta(max_length=MAX_MANIFEST_EXTENTS)]


# ---------------------------------------------------------------------------------------------------- building
class ContentBuilder:
    """Turns file bytes into a :class:`Content` for one space epoch, reusing one worker pool.

    ``key_base`` is :func:`blob.chunk_key_base` of the current epoch key. ``workers`` > 0 seals chunks on that
    many threads while the calling thread reads and cuts. Measured on a 2-core VM with both cores free, 1 GiB
    from the page cache: random data ~620 MB/s with 0 workers, ~875 MB/s with 2; half-compressible ~370 vs
    ~575-715 MB/s. With only one core free, 0 workers is slightly faster (no hand-off cost). (Measured with the
    public gear table; the keyed chunker of a space costs ~0.65 ns more per byte: docs/benchmarks.md.)
    Use one builder for one build at a time.
    """

    def __init__(self, key_base: bytes, params: ChunkParams = DEFAULT_PARAMS, *, workers: int = 0) -> None:
        if len(key_base) != 32:
            raise ValueError("a chunk key base is 32 bytes")
        self._key_base = key_base
        self.params = params
        self._executor: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="anysyncfs-seal") if workers > 0 else None
        )
        self._window = 2 * workers + 1  # chunks in flight: bounds memory to a few max_size buffers

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> ContentBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self, source: Source, put_blob: PutBlob) -> Content:
        """Content of ``source`` (bytes-like, or a binary file read from its position to EOF). ``put_blob`` is
        called once per distinct blob of this content (the store decides whether it already has it)."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            view = memoryview(source).cast("B")
            if len(view) <= INLINE_MAX:
                return Content(size=len(view), inline=bytes(view))
            return self._build_chunked(iter_chunks(view, self.params), put_blob)
        head = _read_up_to(source, INLINE_MAX + 1)
        if len(head) <= INLINE_MAX:
            return Content(size=len(head), inline=head)
        return self._build_chunked(iter_chunks(source, self.params, prefix=head), put_blob)

    def _build_chunked(self, chunks: Iterable[tuple[int, memoryview]], put_blob: PutBlob) -> Content:
        seen: set[bytes] = set()
        extents: list[Extent] = []
        size = 0

        def emit(offset: int, ref: ChunkRef, data: bytes) -> None:
            if ref.blob not in seen:
                seen.add(ref.blob)
                put_blob(ref.blob, data)
            extents.append(Extent(offset=offset, chunk=ref))

        pending: deque[tuple[int, Future[tuple[ChunkRef, bytes]]]] = deque()
        for offset, data in chunks:
            size = offset + len(data)
            if _is_zero(data):
                continue
            if self._executor is None:
                emit(offset, *blobs.seal_chunk(data, self._key_base))
                continue
            pending.append((offset, self._executor.submit(blobs.seal_chunk, data, self._key_base)))
            if len(pending) >= self._window:
                first_offset, future = pending.popleft()
                emit(first_offset, *future.result())
        while pending:
            first_offset, future = pending.popleft()
            emit(first_offset, *future.result())

        if len(extents) <= MANIFEST_INLINE_EXTENTS:
            return Content(size=size, extents=extents)
        if len(extents) > MAX_MANIFEST_EXTENTS:
            raise TooLarge(f"file too large: {len(extents)} chunks exceed {MAX_MANIFEST_EXTENTS}")
        manifest, manifest_blob = blobs.seal_chunk(encode(extents), self._key_base)
        if manifest.blob not in seen:
            put_blob(manifest.blob, manifest_blob)
        return Content(size=size, manifest=manifest)


def build_content(
    source: Source, key_base: bytes, put_blob: PutBlob, params: ChunkParams = DEFAULT_PARAMS, *, workers: int = 0
) -> Content:
    """One-shot :meth:`ContentBuilder.build`."""
    with ContentBuilder(key_base, params, workers=workers) as builder:
        return builder.build(source, put_blob)


def _read_up_to(stream: Readable, n: int) -> bytes:
    parts = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


_ZEROS = bytes(ZERO_PROBE)


def _is_zero(data: memoryview) -> bool:
    if data[:ZERO_PROBE] != _ZEROS[: min(ZERO_PROBE, len(data))]:
        return False
    whole = bytes(data)  # only chunks that start with zeros get here
    return whole.count(0) == len(whole)


# ---------------------------------------------------------------------------------------------------- checking
def check_content(content: Content) -> None:
    """Raise :class:`DecodeError` unless ``content`` uses exactly one representation and its inline extents
    are well-formed (a manifest's extents are checked when it is loaded)."""
    forms = (1 if content.inline else 0) + (1 if content.extents else 0) + (content.manifest is not None)
    if forms > 1:
        raise DecodeError("content: more than one of inline bytes, extents and manifest")
    if len(content.inline) > content.size:
        raise DecodeError("content: inline bytes exceed the size")
    check_extents(content.extents, content.size)


def check_extents(extents: Sequence[Extent], size: int) -> None:
    """Sorted, non-overlapping, non-empty extents that start before ``size``."""
    end = 0
    for extent in extents:
        if extent.chunk.length == 0:
            raise DecodeError("content: empty extent")
        if extent.offset < end:
            raise DecodeError("content: extents overlap or are not sorted")
        if extent.offset >= size:
            raise DecodeError("content: extent starts past the end of the file")
        end = extent.offset + extent.chunk.length


def load_extents(content: Content, get_blob: GetBlob, *, verify_id: bool = True) -> list[Extent]:
    """The extents of ``content`` (opening its manifest blob if it has one), checked."""
    check_content(content)
    if content.manifest is None:
        return list(content.extents)
    raw = blobs.open_chunk(get_blob(content.manifest.blob), content.manifest, verify_id=verify_id)
    extents = decode(raw, ManifestExtents, "content manifest")
    check_extents(extents, content.size)
    return extents


def blob_refs(content: Content, get_blob: GetBlob) -> list[ChunkRef]:
    """Every blob ``content`` depends on (manifest first, then chunks in file order), each blob once."""
    refs: list[ChunkRef] = [content.manifest] if content.manifest is not None else []
    seen = {r.blob for r in refs}
    for extent in load_extents(content, get_blob):
        if extent.chunk.blob not in seen:
            seen.add(extent.chunk.blob)
            refs.append(extent.chunk)
    return refs


# ---------------------------------------------------------------------------------------------------- reading
Piece = tuple[int, Extent, int, int]  # (offset in the result, extent, start in chunk, end in chunk)


class ContentReader:
    """Serves byte ranges of one content; loads (and checks) the extents once. ``verify_ids=False`` skips the
    blob-ID check when ``get_blob`` already verifies it (as ``store.blobfiles.BlobFiles.get`` does)."""

    def __init__(self, content: Content, get_blob: GetBlob, *, verify_ids: bool = True) -> None:
        self.content = content
        self._get_blob = get_blob
        self._verify = verify_ids
        self.extents = load_extents(content, get_blob, verify_id=verify_ids)
        self._starts = [e.offset for e in self.extents]

    def extent_after(self, extent_offset: int) -> Extent | None:
        """The extent following the one that starts at ``extent_offset`` (None after the last)."""
        at = bisect_right(self._starts, extent_offset)
        return self.extents[at] if at < len(self.extents) else None

    def plan(self, offset: int, size: int) -> tuple[int, list[Piece]]:
        """The result length (clipped to the file) and the chunk pieces that fill it; everything else is zero.
        Lets an async caller fetch exactly the blobs a read needs before calling :meth:`read`."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be >= 0")
        end = min(offset + size, self.content.size)
        if offset >= end:
            return 0, []
        pieces: list[Piece] = []
        i = max(0, bisect_right(self._starts, offset) - 1)
        while i < len(self.extents) and self.extents[i].offset < end:
            extent = self.extents[i]
            lo = max(offset, extent.offset)
            hi = min(end, extent.offset + extent.chunk.length)
            if lo < hi:
                pieces.append((lo - offset, extent, lo - extent.offset, hi - extent.offset))
            i += 1
        return end - offset, pieces

    def read(self, offset: int, size: int) -> bytes:
        length, pieces = self.plan(offset, size)
        inline = self.content.inline
        if inline:
            data = inline[offset : offset + length]
            return data + bytes(length - len(data))
        if len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][3] - pieces[0][2] == length:
            return self._piece(pieces[0])  # the common case: one chunk covers the whole read
        parts: list[bytes] = []
        filled = 0
        for piece in pieces:
            dest, _, start, stop = piece
            if dest > filled:
                parts.append(bytes(dest - filled))  # a hole
            parts.append(self._piece(piece))
            filled = dest + stop - start
        if length > filled:
            parts.append(bytes(length - filled))
        return b"".join(parts)

    def _piece(self, piece: Piece) -> bytes:
        _, extent, start, stop = piece
        data = self._get_blob(extent.chunk.blob)
        return blobs.open_chunk_range(data, extent.chunk, start, stop, verify_id=self._verify)


def read_range(content: Content, offset: int, size: int, get_blob: GetBlob, *, verify_ids: bool = True) -> bytes:
    """Bytes ``offset:offset+size`` of the file (shorter at EOF, empty past it); holes read as zeros."""
    return ContentReader(content, get_blob, verify_ids=verify_ids).read(offset, size)
