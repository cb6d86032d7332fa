"""Verified reads of committed file content, with a cache of verified blobs and of what was decrypted from them.

Every byte handed out was authenticated. An uncompressed chunk whose blob is a local file is read by ranges
(``read_ranges``: one open, a pread of the 23-byte header and of the sealed 64 KiB segments the read touches) and
each segment's AES-GCM tag is checked before a byte of it is used; the tag binds the segment to its chunk key, its
index, the header and (through the header) the blob's length (see :mod:`..core.blob`, "partial blob reads"), so a
damaged, swapped or truncated blob file gives EIO, never wrong bytes. Its whole-blob BLAKE3 ID is not checked here:
that is done when a blob enters the store (fetched from the network, or written locally) and by ``fsck``.
Any other blob (compressed, or held in memory by the open batch) comes whole from ``get_blob``, which checks its
ID, and its segments' tags are checked when they are decrypted (``blob.open_segments`` / ``blob.open_chunk``).

Why partial reads: a cold 4 KiB random read used to read and BLAKE3 its whole ~1 MiB blob file, then decrypt the
segments it needed (625 us a read in process on the 2-core VM, 256 MiB file of 1 MiB chunks); read by ranges it
preads ~64 KiB and decrypts one segment (64 us). Through FUSE, 4 KiB random reads went from ~860 to ~3,480 IOPS
(docs/benchmarks.md).

The cache holds decrypted 64 KiB segments (and, for a blob read whole, the verified blob until every segment of it is
decrypted). A chunk read by ranges is decrypted only where reads touch it, except that a sequential reader (a read
starting where the last read of the same content ended) gets a bounded read-ahead of ``READ_AHEAD_SEGMENTS`` in the
same pread, and, near the end of a chunk, the next chunk's blob file prefetched into the page cache (``prefetch``);
random readers never pay for segments nobody asked for. A chunk read whole from ``get_blob`` and read a
second time is being read sequentially or is hot: the rest is decrypted then and the blob dropped, leaving only the
plaintext. A compressed chunk cannot be decrypted by ranges: its whole plaintext is cached as one piece. One LRU
bounded in bytes holds all of it.

A blob that is not on this device raises :class:`BlobMissing` unchanged (the FUSE adapter waits for the sync layer to
fetch it and retries); any other missing or unverifiable blob gives ``FsError(EIO)`` and one log line; never wrong
bytes.

Chunks not on this device are read by ranges too (docs/protocol.md 50.3, "Reads of a chunk this device lacks"):
``read_ranges`` then serves the verified 16 KiB groups of the blob's partial blob, or raises :class:`RangesMissing`
naming what the read lacks, and the adapter has just those groups fetched. Such a blob's segments are opened under
the header an uncompressed blob must have (``blob.uncompressed_header``; the tags prove it is the real one), so its
first group is fetched only when that fails. A sequential reader that lacks its segments has the next
``FETCH_AHEAD_SEGMENTS`` asked for with them (one round trip per chunk, not per read); a random reader asks only
for the segments it reads (~83 KB of groups for a 4 KiB read, against a ~1 MiB blob).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from ..core import blob as blobs
from ..core import content as content_mod
from ..core import ids
from ..core.ops import ChunkRef, Content, Extent
from ..errors import AuthenticationFailed, BlobMissing, FsError, IntegrityError, NotFound, RangesMissing, StoreError
from .attrs import blocks_for

log = logging.getLogger(__name__)

CHUNK_CACHE_BYTES = 64 << 20  # verified blobs plus decrypted plaintext, together
# Segments (64 KiB) decrypted ahead of a sequential reader of a local blob: 512 KiB, one pread with the segments
# asked for. The kernel's own read-ahead asks for 128 KiB at a time; this halves the opens, preads and key set-ups.
READ_AHEAD_SEGMENTS = 8
# A sequential reader of a chunk held only in part (fetched by ranges: not on this device): when a read lacks
# segments it needs, the fetch asks for them and for this many segments after them (2 MiB) in one request, so a
# stream of 128 KiB reads costs about one round trip per chunk, not one per read (each read's read-ahead would ask
# for the two segments it slid over). A read that holds what it needs never waits for its read-ahead.
FETCH_AHEAD_SEGMENTS = 32
READER_CACHE = 256  # contents whose (manifest-loaded) extent lists are kept

GetBlob = Callable[[bytes], bytes]
# (blob ID, [(offset, size), ...]) -> (file size, the bytes of each range, unverified and short at EOF), or None
# when the blob is not a local file (the open batch's own): then it is read whole through GetBlob.
ReadRanges = Callable[[bytes, Sequence[tuple[int, int]]], "tuple[int, list[bytes]] | None"]
# (blob ID) -> None: start reading a local blob file into the page cache (best effort, returns at once).
Prefetch = Callable[[bytes], None]
# A sequential reader this close to the end of a chunk has the next chunk's blob file prefetched, so that its disk
# read runs while this chunk is decrypted and handed to the kernel.
PREFETCH_BEFORE_END = 512 << 10
SEQUENTIAL_READERS = 64  # contents whose last read end is remembered (to tell sequential readers)
# A failing blob is logged once per this many seconds: one read(2) of a file can reach the mount as several
# requests (the kernel's read-ahead, then its retry of the page it wanted), each failing the same way.
FAIL_LOG_INTERVAL_S = 60.0
FAILS_REMEMBERED = 256
Slice = bytes | memoryview


def _blob_label(blob_id: bytes) -> str:
    return ids.to_text(ids.PREFIX_BLOB, blob_id)[:20] + "…"


class _CachedChunk:
    """What the cache holds of one chunk: its plaintext cut in ``parts`` of ``span`` bytes (``None`` where not
    decrypted yet) and, while a part is missing, where to decrypt it from: the verified blob (``raw``) or, for a
    blob read by ranges from its local file, the blob's checked ``header``.

    Uncompressed chunk: one part per 64 KiB segment. Compressed chunk: a single part, the whole plaintext, and no
    blob. Invariant: while ``missing > 0``, ``raw`` or ``header`` is set. Mutated only under
    ``ContentReads._lock``."""

    __slots__ = ("header", "missing", "parts", "raw", "size", "span")

    def __init__(self, raw: bytes | None, parts: list[bytes | None], span: int, header: bytes | None = None) -> None:
        self.raw = raw
        self.header = header
        self.parts = parts
        self.span = span
        self.missing = sum(1 for part in parts if part is None)
        self.size = (len(raw) if raw is not None else 0) + (len(header) if header is not None else 0) + sum(
            len(part) for part in parts if part is not None
        )


class ContentReads:
    """Reads byte ranges of :class:`Content` through ``get_blob`` (which verifies blob IDs, as
    ``Replica.get_blob`` does). Thread-safe: the caches are guarded by one lock; ``get_blob`` and decryption run
    outside it (two threads may then do the same work once; either result is verified and kept)."""

    def __init__(
        self, get_blob: GetBlob, *, read_ranges: ReadRanges | None = None, prefetch: Prefetch | None = None,
        cache_bytes: int = CHUNK_CACHE_BYTES,
    ) -> None:
        self._get_blob = get_blob
        self._read_ranges = read_ranges
        self._prefetch = prefetch
        # id(content) -> where its last read ended, and the last blob prefetched for it
        self._read_ends: OrderedDict[int, tuple[int, bytes | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._chunks: OrderedDict[bytes, _CachedChunk] = OrderedDict()  # blob ID -> chunk, least recent first
        self._chunk_bytes = 0
        self._cache_bytes = cache_bytes
        # id(content) -> (content, reader): holding the content keeps its id from being reused.
        self._readers: OrderedDict[int, tuple[Content, content_mod.ContentReader]] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()  # what failed -> when it was last logged

    # ------------------------------------------------------------------------------------------ errors
    def _fail(self, what: str, exc: Exception) -> FsError:
        """EIO for a read of ``what``, logged once per FAIL_LOG_INTERVAL_S for the same ``what`` and kind of
        failure (the repeats at DEBUG)."""
        if isinstance(exc, NotFound):
            level, text = logging.WARNING, "read failed: %s: %s"
        elif isinstance(exc, StoreError):  # the disk refused (EIO from the device, a permission, ...): not damage
            level, text = logging.ERROR, "I/O error while reading %s: %s"
        else:
            level, text = logging.ERROR, "integrity failure while reading %s: %s"
        key = f"{text} {what}"
        now = time.monotonic()
        with self._lock:
            last = self._failed.get(key)
            if last is None or now - last >= FAIL_LOG_INTERVAL_S:
                self._failed[key] = now
            else:
                level = logging.DEBUG
            self._failed.move_to_end(key)
            while len(self._failed) > FAILS_REMEMBERED:
                self._failed.popitem(last=False)
        log.log(level, text, what, exc)
        return FsError(errno.EIO, f"{what}: {exc}")

    # ------------------------------------------------------------------------------------------ chunks
    def chunk(self, ref: ChunkRef) -> bytes:
        """The verified plaintext of one whole chunk."""
        if ref.length == 0:
            return b""
        return _joined(self.chunk_range(ref, 0, ref.length))

    def chunk_range(self, ref: ChunkRef, start: int, end: int, *, sequential: bool = False) -> list[Slice]:
        """Verified plaintext of chunk bytes ``start:end`` (``0 <= start < end <= ref.length``), as consecutive
        slices of cached parts; decrypts only the segments not cached yet (and, for a ``sequential`` reader of a
        chunk read by ranges, a bounded read-ahead)."""
        cached = self._cached(ref, start // blobs.SEGMENT_SIZE, (end - 1) // blobs.SEGMENT_SIZE + 1, sequential)
        span = cached.span
        first, last = start // span, (end - 1) // span
        parts = self._parts(ref, cached, first, last + 1, sequential)
        slices: list[Slice] = []
        for index, part in enumerate(parts, first):
            lo = start - index * span if index == first else 0
            hi = end - index * span if index == last else len(part)
            slices.append(part if lo == 0 and hi == len(part) else memoryview(part)[lo:hi])
        return slices

    def _cached(self, ref: ChunkRef, first: int, stop: int, sequential: bool = False) -> _CachedChunk:
        """The cache entry of ``ref``'s chunk, fetched (and its envelope checked) on a miss. A local uncompressed
        blob is read by ranges: the miss reads the header and the segments ``first:stop`` (those the read needs)
        with one open, and the entry holds them decrypted."""
        with self._lock:
            hit = self._chunks.get(ref.blob)
            if hit is not None:
                self._chunks.move_to_end(ref.blob)
                return hit
        try:
            entry = self._read_partially(ref, first, stop) if self._read_ranges is not None else None
            if entry is None:
                raw = self._get_blob(ref.blob)  # has checked the blob ID already
                if blobs.is_compressed(raw, ref):
                    entry = _CachedChunk(None, [blobs.open_chunk(raw, ref, verify_id=False)], max(1, ref.length))
                else:
                    entry = _CachedChunk(raw, [None] * blobs.segment_count(ref.length), blobs.SEGMENT_SIZE)
        except RangesMissing as e:
            if sequential:
                raise _with_fetch_ahead(e, ref, stop) from None
            raise
        except BlobMissing:
            raise  # not an error of the data: the FUSE adapter has the sync layer fetch it and retries
        except (IntegrityError, NotFound, StoreError) as e:
            raise self._fail(f"blob {_blob_label(ref.blob)}", e) from None
        with self._lock:
            hit = self._chunks.get(ref.blob)
            if hit is not None:  # another thread got it meanwhile: keep one copy
                return hit
            if entry.size <= self._cache_bytes // 4:  # a huge chunk would push everything else out: use it once
                self._chunks[ref.blob] = entry
                self._chunk_bytes += entry.size
                self._evict()
        return entry

    def _read_partially(self, ref: ChunkRef, first: int, stop: int) -> _CachedChunk | None:
        """A new cache entry holding segments ``first:stop`` of an uncompressed chunk, read by ranges from its
        local blob file (or the groups held of its partial blob) and authenticated; None if the blob is not a
        local file or is compressed (read whole). :class:`RangesMissing` when the groups are not held."""
        assert self._read_ranges is not None
        span = blobs.segments_span(ref, first, stop)
        try:
            got = self._read_ranges(ref.blob, [(0, blobs.HEADER_LEN), span])
        except RangesMissing:
            # Not a whole blob file here: fetched by ranges, maybe without its first 16 KiB group. Use the
            # header an uncompressed blob must have, so that a read needs no fetch of that group.
            entry = self._read_without_header(ref, first, stop, span)
            if entry is not None:
                return entry
            # Not uncompressed, or a tag failed: the blob's own header decides (RangesMissing names its group).
            got = self._read_ranges(ref.blob, [(0, blobs.HEADER_LEN), span])
        if got is None:
            return None
        file_size, (header, sealed) = got
        flags, _, _ = blobs.check_header(header, file_size, ref)
        if flags & blobs.FLAG_ZSTD:
            return None  # whole-chunk zstd: only the whole blob can be opened
        parts: list[bytes | None] = [None] * blobs.segment_count(ref.length)
        parts[first:stop] = blobs.open_sealed_segments(header, file_size, sealed, ref, first, stop)
        return _CachedChunk(None, parts, blobs.SEGMENT_SIZE, header=header)

    def _read_without_header(self, ref: ChunkRef, first: int, stop: int, span: tuple[int, int]) -> _CachedChunk | None:
        """Segments ``first:stop`` of a blob held only in part, opened under :func:`blobs.uncompressed_header`
        (what its header must be if the blob is uncompressed: every segment's tag binds it, so a segment opens
        only if the real header is exactly that). None when the blob's length is not the uncompressed length or
        a tag fails (a compressed blob of that length, or damage): the caller then reads the real header.
        :class:`RangesMissing` (for ``span`` only) when the segments are not held either."""
        assert self._read_ranges is not None
        got = self._read_ranges(ref.blob, [span])
        if got is None:
            return None
        file_size, (sealed,) = got
        if file_size != blobs.uncompressed_blob_length(ref):
            return None
        header = blobs.uncompressed_header(ref)
        try:
            plains = blobs.open_sealed_segments(header, file_size, sealed, ref, first, stop)
        except AuthenticationFailed:
            return None
        parts: list[bytes | None] = [None] * blobs.segment_count(ref.length)
        parts[first:stop] = plains
        return _CachedChunk(None, parts, blobs.SEGMENT_SIZE, header=header)

    def _open_runs(self, ref: ChunkRef, cached_raw: bytes | None, header: bytes | None,
                   runs: list[tuple[int, int]]) -> list[tuple[int, list[bytes] | IntegrityError]]:
        """Decrypt each run ``(lo, hi)`` of segments: from the verified blob, or read by ranges from the local file
        (one open for all runs). A run that fails verification gives its error in place of its plaintexts."""
        if not runs:
            return []
        out: list[tuple[int, list[bytes] | IntegrityError]] = []
        if cached_raw is not None:
            for lo, hi in runs:
                try:
                    out.append((lo, blobs.open_segments(cached_raw, ref, lo, hi, verify_id=False)))
                except IntegrityError as e:
                    out.append((lo, e))
            return out
        assert header is not None and self._read_ranges is not None
        got = self._read_ranges(ref.blob, [blobs.segments_span(ref, lo, hi) for lo, hi in runs])
        if got is None:  # cannot happen for a blob once read from its file (files are not un-written)
            raise NotFound("blob file vanished")
        file_size, sealed_runs = got
        for (lo, hi), sealed in zip(runs, sealed_runs):
            try:
                out.append((lo, blobs.open_sealed_segments(header, file_size, sealed, ref, lo, hi)))
            except IntegrityError as e:
                out.append((lo, e))
        return out

    def _parts(self, ref: ChunkRef, cached: _CachedChunk, first: int, stop: int, sequential: bool) -> list[bytes]:
        """Parts ``first:stop`` of a chunk, decrypting (outside the lock) those not decrypted yet.

        A read decrypts only the segments it needs, so a random read stays cheap. Beyond them: a chunk held as a
        verified blob and read again is being read sequentially or is hot, so the rest of it is decrypted too and
        its blob dropped (it then costs no more than its plaintext in the cache); a chunk read by ranges gets the
        next READ_AHEAD_SEGMENTS when this read follows on from segments already decrypted."""
        with self._lock:
            parts = list(cached.parts)
            raw = cached.raw
            header = cached.header
        wanted = [part for part in parts[first:stop] if part is not None]
        if len(wanted) == stop - first:
            return wanted
        assert raw is not None or header is not None  # the invariant: both are dropped only when nothing is missing
        needed = _runs([i for i in range(first, stop) if parts[i] is None])
        if raw is not None:
            # A chunk read a second time: the rest of it too, and its blob dropped (at most one chunk).
            rest = (_runs([i for i, part in enumerate(parts) if part is None and not first <= i < stop])
                    if any(part is not None for part in parts) else [])
        else:
            # Read by ranges: nothing is gained by opening segments nobody asked for, unless the reader is
            # sequential (this read starts where its last read of the file ended): then a bounded read-ahead of the
            # next READ_AHEAD_SEGMENTS in the chunk, read with the same pread. (It used to be "the segment before
            # is decrypted already", which random readers meet more and more often as the cache fills: 5,000
            # random 4 KiB reads of a 256 MiB file then read 252 MiB from disk and decrypted most of it.)
            rest = (_runs([i for i in range(stop, min(stop + READ_AHEAD_SEGMENTS, len(parts))) if parts[i] is None])
                    if sequential else [])
        try:
            try:
                results = self._open_runs(ref, raw, header, needed + rest)
            except RangesMissing:
                if not rest:
                    raise
                # Held in part: the read-ahead is decrypted only where held; the read is served if its own
                # segments are, else they are fetched with FETCH_AHEAD_SEGMENTS after them.
                try:
                    results = self._open_runs(ref, raw, header, needed)
                except RangesMissing as e:
                    raise _with_fetch_ahead(e, ref, stop) from None
        except (NotFound, StoreError) as e:
            if isinstance(e, BlobMissing):
                raise
            raise self._fail(f"blob {_blob_label(ref.blob)}", e) from None
        opened: list[tuple[int, list[bytes]]] = []
        for n, (lo, result) in enumerate(results):
            if isinstance(result, IntegrityError):
                if n < len(needed):
                    raise self._fail(f"blob {_blob_label(ref.blob)}", result) from None
                continue  # not asked for: reported if and when a read needs these segments
            opened.append((lo, result))
        with self._lock:
            grown = 0
            for lo, plains in opened:
                for index, plain in enumerate(plains, lo):
                    if cached.parts[index] is None:
                        cached.parts[index] = plain
                        cached.missing -= 1
                        grown += len(plain)
            if cached.missing == 0 and cached.raw is not None:
                grown -= len(cached.raw)  # everything is decrypted: the blob is no longer needed
                cached.raw = None
            if cached.missing == 0 and cached.header is not None:
                grown -= len(cached.header)
                cached.header = None
            cached.size += grown
            if self._chunks.get(ref.blob) is cached:
                self._chunk_bytes += grown
                self._evict()
            return [part for part in cached.parts[first:stop] if part is not None]  # all filled now

    def _evict(self) -> None:
        """Drop least recently used chunks until the cache fits its bound (call with the lock held)."""
        while self._chunk_bytes > self._cache_bytes and self._chunks:
            _, old = self._chunks.popitem(last=False)
            self._chunk_bytes -= old.size

    @property
    def cached_bytes(self) -> int:
        """Bytes the chunk cache holds now (verified blobs and decrypted plaintext); at most ``cache_bytes``."""
        with self._lock:
            return self._chunk_bytes

    def drop_cache(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._chunk_bytes = 0
            self._readers.clear()
            self._read_ends.clear()

    # ------------------------------------------------------------------------------------------ contents
    def reader(self, content: Content) -> content_mod.ContentReader:
        key = id(content)
        with self._lock:
            hit = self._readers.get(key)
            if hit is not None and hit[0] is content:
                self._readers.move_to_end(key)
                return hit[1]
        try:
            reader = content_mod.ContentReader(content, self._get_blob, verify_ids=False)
        except BlobMissing:
            raise  # the manifest blob is not here yet: fetched and retried like a chunk
        except (IntegrityError, NotFound) as e:
            raise self._fail("content manifest", e) from None
        with self._lock:
            self._readers[key] = (content, reader)
            while len(self._readers) > READER_CACHE:
                self._readers.popitem(last=False)
        return reader

    def extents(self, content: Content) -> list[Extent]:
        """The extents of ``content`` (its manifest opened and checked); empty for inline content.
        :class:`BlobMissing` if the manifest blob is not on this device."""
        if content.inline or (not content.extents and content.manifest is None):
            return []
        return self.reader(content).extents

    def read(self, content: Content, offset: int, size: int) -> bytes:
        """Bytes ``offset:offset+size`` (shorter at EOF, empty past it); holes read as zeros.
        :class:`BlobMissing` (unchanged) if a blob it needs is not on this device; ``FsError(EIO)`` if one fails
        verification."""
        if offset >= content.size or size <= 0:
            return b""
        if content.inline or (not content.extents and content.manifest is None):
            end = min(offset + size, content.size)
            data = content.inline[offset:end]
            return data + bytes(end - offset - len(data))
        reader = self.reader(content)
        length, pieces = reader.plan(offset, size)
        sequential, prefetched = self._note_read(content, offset, offset + length)
        if sequential and self._prefetch is not None and pieces:
            self._prefetch_next(content, reader, offset + length, pieces[-1][1], prefetched)
        if len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][3] - pieces[0][2] == length:
            _, extent, start, stop = pieces[0]  # the common case: one chunk covers the whole read
            return _joined(self.chunk_range(extent.chunk, start, stop, sequential=sequential))
        slices: list[Slice] = []
        filled = 0
        for dest, extent, start, stop in pieces:
            if dest > filled:
                slices.append(bytes(dest - filled))  # a hole
            slices.extend(self.chunk_range(extent.chunk, start, stop, sequential=sequential))
            filled = dest + stop - start
        if length > filled:
            slices.append(bytes(length - filled))
        return _joined(slices)

    def _note_read(self, content: Content, offset: int, end: int) -> tuple[bool, bytes | None]:
        """Remember where this read of ``content`` ends; whether it is sequential (it starts where the last read
        of the same content ended), and the blob last prefetched for that reader."""
        key = id(content)
        with self._lock:
            previous = self._read_ends.get(key)
            prefetched = previous[1] if previous is not None else None
            self._read_ends[key] = (end, prefetched)
            self._read_ends.move_to_end(key)
            while len(self._read_ends) > SEQUENTIAL_READERS:
                self._read_ends.popitem(last=False)
        return previous is not None and previous[0] == offset, prefetched

    def _prefetch_next(self, content: Content, reader: content_mod.ContentReader, end: int, last: Extent,
                       prefetched: bytes | None) -> None:
        """For a sequential reader near the end of a chunk, have the next chunk's blob file read into the page
        cache now (once per chunk). Only the disk read starts early: the bytes are authenticated, as always, by
        the read that uses them."""
        assert self._prefetch is not None
        if last.offset + last.chunk.length - end > PREFETCH_BEFORE_END:
            return
        after = reader.extent_after(last.offset)
        if after is None or after.chunk.blob == prefetched:
            return
        key = id(content)
        with self._lock:
            if key in self._read_ends:
                self._read_ends[key] = (end, after.chunk.blob)
        self._prefetch(after.chunk.blob)

    def stored_bytes(self, content: Content) -> int:
        """Bytes of data the content really holds (holes and bytes past the size excluded)."""
        if content.inline:
            return len(content.inline)
        if content.manifest is not None:
            try:
                extents = self.extents(content)
            except (FsError, BlobMissing):
                return content.size  # manifest not here: assume dense rather than guess
        else:
            extents = content.extents
        total = 0
        for e in extents:
            if e.offset < content.size:
                total += min(e.offset + e.chunk.length, content.size) - e.offset
        return total

    def blocks(self, content: Content) -> int:
        return blocks_for(self.stored_bytes(content))

    def all_local(self, content: Content, has_blob: Callable[[bytes], bool]) -> bool:
        """Whether every blob of ``content`` is on this device."""
        if content.manifest is not None and not has_blob(content.manifest.blob):
            return False
        try:
            extents = self.extents(content)
        except (FsError, BlobMissing):
            return False
        return all(has_blob(e.chunk.blob) for e in extents)


def _with_fetch_ahead(missing: RangesMissing, ref: ChunkRef, stop: int) -> RangesMissing:
    """``missing`` widened by the FETCH_AHEAD_SEGMENTS segments from ``stop`` (those left in the chunk)."""
    ahead = min(stop + FETCH_AHEAD_SEGMENTS, blobs.segment_count(ref.length))
    if ahead <= stop:
        return missing
    return RangesMissing(missing.blob_id, (*missing.ranges, blobs.segments_span(ref, stop, ahead)), str(missing))


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted ``indices`` as ranges ``(lo, hi)`` of consecutive ones (each decrypted with one key set-up)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _joined(slices: list[Slice]) -> bytes:
    """One bytes object of ``slices`` (a single whole cached part is returned as is, without a copy)."""
    if len(slices) == 1:
        only = slices[0]
        return only if isinstance(only, bytes) else bytes(only)
    return b"".join(slices)
