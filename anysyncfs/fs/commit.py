"""Turning a staged overlay into the new :class:`Content` of a file, re-chunking only what changed.

The committed content is a list of extents (chunks at offsets) with holes between them. A commit keeps every
extent the writes did not touch, exactly as it is, and cuts new chunks only for the *regions* that changed:

1. every dirty range, plus the base extents that truncation cut into (they hold bytes that now read as zero);
2. each region grows to the boundaries of the extents it overlaps (a chunk is replaced whole or kept whole) and
   to the start of an extent that ends exactly where it begins: re-cutting from that chunk's content-defined
   start makes an appending writer produce the same chunks as cutting the whole file at once (FastCDC cuts
   depend only on the bytes from a chunk's start), which keeps deduplication across devices;
3. regions closer than ``COALESCE_GAP`` merge (fewer, larger chunks for scattered small writes).

Each region is read through the merged view (staged bytes over the base) and cut with FastCDC; chunks of only
zeros become holes. Holes are never chunked, so a sparse file costs nothing however large it is. Blobs go to
``put_blob`` (durable before the change that references them is committed).
"""

from __future__ import annotations

import errno
from bisect import bisect_left
from collections.abc import Callable

from ..core import blob as blobs
from ..core.chunking import ChunkParams, iter_chunks
from ..core.content import MANIFEST_INLINE_EXTENTS, MAX_MANIFEST_EXTENTS
from ..core.encoding import encode
from ..core.ops import INLINE_MAX, Content, Extent
from ..errors import FsError
from .staging import ReadBase, Staged

COALESCE_GAP = 64 << 10
READ_PIECE = 4 << 20  # bytes read through the merged view at a time while cutting a region

PutBlob = Callable[[bytes, bytes], None]


class _RegionStream:
    """A binary stream over bytes ``start:end`` of the merged view (what FastCDC's stream cutter reads)."""

    def __init__(self, staged: Staged, start: int, end: int, read_base: ReadBase) -> None:
        self._staged = staged
        self._pos = start
        self._end = end
        self._read_base = read_base

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            n = self._end - self._pos
        n = min(n, self._end - self._pos, READ_PIECE)
        if n <= 0:
            return b""
        data = self._staged.read(self._pos, n, self._read_base)
        # The merged view is clipped to the staged size; a region never reaches past it, but be exact anyway.
        if len(data) < n:
            data += bytes(n - len(data))
        self._pos += n
        return data


def _all_zero(data: memoryview) -> bool:
    if any(data[:64]):  # cheap probe first: most chunks are not zeros
        return False
    raw = bytes(data)
    return raw.count(0) == len(raw)


def plan_regions(staged: Staged, extents: list[Extent]) -> tuple[list[tuple[int, int]], list[Extent]]:
    """(regions to re-chunk, base extents kept as they are). See the module doc for the rules."""
    size = staged.size
    limit = staged.base_limit
    raw: list[tuple[int, int]] = [(s, min(e, size)) for s, e in staged.dirty.pairs() if s < size]
    if staged.base.inline:
        cut = min(len(staged.base.inline), limit, size)
        if cut > 0:
            raw.append((0, cut))
    candidates: list[Extent] = []
    for ext in extents:
        end = ext.offset + ext.chunk.length
        if ext.offset >= limit or ext.offset >= size:
            continue  # truncated away: it reads as zeros now, a hole
        if end > limit and limit < size:
            raw.append((ext.offset, min(end, size)))  # bytes past the cut must read as zeros: re-cut it
            continue
        candidates.append(ext)
    starts = [e.offset for e in candidates]
    ends = [e.offset + e.chunk.length for e in candidates]

    regions: list[tuple[int, int]] = []
    for a, b in sorted(raw):
        if a >= b:
            continue
        i = bisect_left(ends, a)  # first extent ending at or after a (one ending exactly at a is absorbed)
        if i < len(candidates) and starts[i] < b:
            a = min(a, starts[i])
        k = bisect_left(starts, b) - 1  # last extent starting before b
        if k >= 0 and ends[k] > b:
            b = min(ends[k], size)
        if regions and a <= regions[-1][1] + COALESCE_GAP:
            prev_a, prev_b = regions[-1]
            regions[-1] = (prev_a, max(prev_b, b))
        else:
            regions.append((a, b))
    kept: list[Extent] = []
    r = 0
    for ext in candidates:
        end = ext.offset + ext.chunk.length
        while r < len(regions) and regions[r][1] <= ext.offset:
            r += 1
        if r < len(regions) and regions[r][0] < end and ext.offset < regions[r][1]:
            continue  # inside a region: re-chunked
        kept.append(ext)
    return regions, kept


def build_content(
    staged: Staged,
    base_extents: list[Extent],
    read_base: ReadBase,
    key_base: bytes,
    params: ChunkParams,
    put_blob: PutBlob,
) -> Content:
    """The content of the staged file, storing every new blob through ``put_blob`` first."""
    size = staged.size
    if size <= INLINE_MAX:
        whole = staged.read(0, size, read_base)
        return Content(size=size, inline=whole.rstrip(b"\0"))  # trailing zeros read back as zeros anyway
    regions, kept = plan_regions(staged, base_extents)
    seen: set[bytes] = set()
    fresh: list[Extent] = []
    for a, b in regions:
        # A small region is cut from one buffer; a large one streams through FastCDC's sliding buffer (which
        # allocates ~20 MiB, too much for the many small regions of scattered writes).
        source: bytes | _RegionStream = (
            staged.read(a, b - a, read_base) if b - a <= READ_PIECE else _RegionStream(staged, a, b, read_base)
        )
        for offset, chunk in iter_chunks(source, params):
            if _all_zero(chunk):
                continue  # a hole
            ref, blob = blobs.seal_chunk(chunk, key_base)
            if ref.blob not in seen:
                seen.add(ref.blob)
                put_blob(ref.blob, blob)
            fresh.append(Extent(offset=a + offset, chunk=ref))
    extents = sorted(kept + fresh, key=lambda e: e.offset)
    if len(extents) <= MANIFEST_INLINE_EXTENTS:
        return Content(size=size, extents=extents)
    if len(extents) > MAX_MANIFEST_EXTENTS:
        raise FsError(errno.EFBIG, f"file too large: {len(extents)} chunks exceed {MAX_MANIFEST_EXTENTS}")
    manifest, manifest_blob = blobs.seal_chunk(encode(extents), key_base)
    if manifest.blob not in seen:
        put_blob(manifest.blob, manifest_blob)
    return Content(size=size, manifest=manifest)
