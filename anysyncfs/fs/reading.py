"""Verified reads of committed file content, with a small cache of opened chunks.

Every byte handed out comes from a blob that was verified (BLAKE3 of the blob, then the AES-GCM tag of every
segment, by ``blob.open_chunk``). Opened chunk plaintexts are kept in an LRU bounded in bytes: a kernel reads a
file in pieces of at most 128 KiB while a chunk is about 1 MiB, and without the cache each piece would read,
hash and decrypt the whole blob again.

A blob that is missing or fails verification gives ``FsError(EIO)`` and one log line; never wrong bytes.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from ..core import blob as blobs
from ..core import content as content_mod
from ..core import ids
from ..core.ops import ChunkRef, Content, Extent
from ..errors import FsError, IntegrityError, NotFound
from .attrs import blocks_for

log = logging.getLogger(__name__)

CHUNK_CACHE_BYTES = 64 << 20
READER_CACHE = 256  # contents whose (manifest-loaded) extent lists are kept

GetBlob = Callable[[bytes], bytes]


def _blob_label(blob_id: bytes) -> str:
    return ids.to_text(ids.PREFIX_BLOB, blob_id)[:20] + "…"


class ContentReads:
    """Reads byte ranges of :class:`Content` through ``get_blob`` (which verifies blob IDs, as
    ``Replica.get_blob`` does). Thread-safe."""

    def __init__(self, get_blob: GetBlob, *, cache_bytes: int = CHUNK_CACHE_BYTES) -> None:
        self._get_blob = get_blob
        self._lock = threading.Lock()
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._chunk_bytes = 0
        self._cache_bytes = cache_bytes
        # id(content) -> (content, reader): holding the content keeps its id from being reused.
        self._readers: OrderedDict[int, tuple[Content, content_mod.ContentReader]] = OrderedDict()

    # ------------------------------------------------------------------------------------------ errors
    def _fail(self, what: str, exc: Exception) -> FsError:
        if isinstance(exc, NotFound):
            log.warning("read failed: %s: %s", what, exc)
        else:
            log.error("integrity failure while reading %s: %s", what, exc)
        return FsError(errno.EIO, f"{what}: {exc}")

    # ------------------------------------------------------------------------------------------ chunks
    def chunk(self, ref: ChunkRef) -> bytes:
        """The verified plaintext of one chunk (cached)."""
        with self._lock:
            hit = self._chunks.get(ref.blob)
            if hit is not None:
                self._chunks.move_to_end(ref.blob)
                return hit
        try:
            # get_blob has checked the blob ID already; open_chunk checks the envelope and every segment tag.
            plain = blobs.open_chunk(self._get_blob(ref.blob), ref, verify_id=False)
        except (IntegrityError, NotFound) as e:
            raise self._fail(f"blob {_blob_label(ref.blob)}", e) from None
        with self._lock:
            if ref.blob not in self._chunks and len(plain) <= self._cache_bytes // 4:
                self._chunks[ref.blob] = plain
                self._chunk_bytes += len(plain)
                while self._chunk_bytes > self._cache_bytes:
                    _, old = self._chunks.popitem(last=False)
                    self._chunk_bytes -= len(old)
        return plain

    def drop_cache(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._chunk_bytes = 0
            self._readers.clear()

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
        except (IntegrityError, NotFound) as e:
            raise self._fail("content manifest", e) from None
        with self._lock:
            self._readers[key] = (content, reader)
            while len(self._readers) > READER_CACHE:
                self._readers.popitem(last=False)
        return reader

    def extents(self, content: Content) -> list[Extent]:
        """The extents of ``content`` (its manifest opened and checked); empty for inline content."""
        if content.inline or (not content.extents and content.manifest is None):
            return []
        return self.reader(content).extents

    def read(self, content: Content, offset: int, size: int) -> bytes:
        """Bytes ``offset:offset+size`` (shorter at EOF, empty past it); holes read as zeros."""
        if offset >= content.size or size <= 0:
            return b""
        if content.inline or (not content.extents and content.manifest is None):
            end = min(offset + size, content.size)
            data = content.inline[offset:end]
            return data + bytes(end - offset - len(data))
        length, pieces = self.reader(content).plan(offset, size)
        if len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][3] - pieces[0][2] == length:
            _, extent, start, stop = pieces[0]
            return self.chunk(extent.chunk)[start:stop]
        out = bytearray(length)
        for dest, extent, start, stop in pieces:
            out[dest : dest + stop - start] = memoryview(self.chunk(extent.chunk))[start:stop]
        return bytes(out)

    def stored_bytes(self, content: Content) -> int:
        """Bytes of data the content really holds (holes and bytes past the size excluded)."""
        if content.inline:
            return len(content.inline)
        if content.manifest is not None:
            try:
                extents = self.extents(content)
            except FsError:
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
        except FsError:
            return False
        return all(has_blob(e.chunk.blob) for e in extents)
