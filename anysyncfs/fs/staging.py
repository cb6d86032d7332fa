"""Staged writes: a sparse local overlay of dirty byte ranges over a file's committed content.

Each node being written gets a :class:`Staged` overlay: the content it started from (``base``), its current
size, the dirty ranges (:class:`Intervals`) and sparse local files holding those ranges' bytes at their file
offsets. A read merges the three: dirty ranges from the staging files, other bytes from the base content up to
``base_limit`` (the smallest size the file was truncated to since staging began; base bytes past it were cut off
and read as zeros), zeros elsewhere. Truncation and holes cost nothing: nothing is written for them.

The staging bytes live in files of 1 TiB segments (``<node hex>.<segment>``; a segment file is slightly larger,
by the seal of each block), so any offset a file may have (up to 2**63 - 1) maps to a file the local file system
can hold (ext4 stops at 16 TiB per file).

A file whose staged bytes stay small (at most MEMORY_BLOCKS_PER_NODE blocks, and while every node's in-memory
blocks together stay within MEMORY_BUDGET_BLOCKS) keeps them in this process's memory (:class:`MemoryBlocks`) and
never opens a staging file: an untar of small files paid for a file open, a seal, a pwrite, a pread, an open of
the seal, a close and an unlink per file. The first write past either bound moves the node's blocks into its
staging files (sealed as below) for the rest of its staging.

Staging is a cache, not a journal: what is not committed when the process dies is lost, exactly like dirty
pages of a local disk that were never fsynced. Staging files left by a crash are removed at start.

The staged bytes are sealed on disk in blocks of BLOCK_SIZE plaintext bytes, each with AES-256-GCM under a random
key per staged node that lives only in this process's memory, a nonce that is a counter (so each write of a
block uses a new one: two snapshots of the disk never share keystream) and associated data binding the block to
its node and index (docs/protocol.md 60.4). Plaintext never reaches the disk, a modified, swapped or stale
block reads as EIO rather than as wrong bytes, and staging files a crash leaves behind are unreadable (they are
deleted at the next start anyway). Holes stay holes: a block nobody wrote has no slot on disk.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core import crypto
from ..core.ops import Content
from ..errors import FsError, IntegrityError
from .stream import SealStream

log = logging.getLogger(__name__)

SEGMENT_BITS = 40
SEGMENT_SIZE = 1 << SEGMENT_BITS  # plaintext bytes per segment file
BLOCK_SIZE = 4 << 10  # plaintext bytes per sealed block: a page, so page-aligned writes never read a block back
SLOT_SIZE = crypto.NONCE_LEN + BLOCK_SIZE + crypto.TAG_LEN  # bytes of one sealed block on disk
BLOCKS_PER_SEGMENT = SEGMENT_SIZE // BLOCK_SIZE
STAGING_SUFFIX = ".stage"
STAGING_AAD = b"anysyncfs staging block v1\x00"  # || node id (16) || block index (u64 big-endian)

MEMORY_BLOCKS_PER_NODE = 16  # 64 KiB: a node with more staged blocks moves them to its (sealed) staging files
MEMORY_BUDGET_BLOCKS = 4096  # 16 MiB: staged bytes all nodes together may keep in memory

ReadBase = Callable[[Content, int, int], bytes]


class Intervals:
    """A set of disjoint, non-touching half-open ranges [start, end), kept sorted. Appending right after the
    last range (a sequential writer) is O(1)."""

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self.starts, self.ends
        if starts and start >= starts[-1]:  # fast path: at or after the last range
            if start <= ends[-1]:
                if end > ends[-1]:
                    ends[-1] = end
                return
            starts.append(start)
            ends.append(end)
            return
        i = bisect_left(ends, start)  # first range ending at or after start (touching ranges merge)
        j = bisect_right(starts, end)  # ranges starting at or before end
        if i == j:
            starts.insert(i, start)
            ends.insert(i, end)
            return
        new_start = min(start, starts[i])
        new_end = max(end, ends[j - 1])
        starts[i:j] = [new_start]
        ends[i:j] = [new_end]

    def cut(self, limit: int) -> None:
        """Forget everything at or after ``limit``."""
        i = bisect_left(self.starts, limit)
        del self.starts[i:]
        del self.ends[i:]
        if self.ends and self.ends[-1] > limit:
            self.ends[-1] = limit

    def overlapping(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of the ranges inside [start, end)."""
        i = bisect_right(self.ends, start)  # first range ending after start
        while i < len(self.starts) and self.starts[i] < end:
            yield max(self.starts[i], start), min(self.ends[i], end)
            i += 1

    def pairs(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends))

    def total(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))


def _tampered(index: int) -> FsError:
    log.error("a staging block (%d) failed its integrity check: the staging folder was modified", index)
    return FsError(errno.EIO, "staging read: a staged block does not authenticate (the staging file was modified)")


def _os_error(e: OSError, what: str) -> FsError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return FsError(errno.ENOSPC, f"staging {what}: disk full")
    if e.errno == errno.EFBIG:
        return FsError(errno.EFBIG, f"staging {what}: file too large")
    return FsError(errno.EIO, f"staging {what}: {e.strerror or e}")


def seal_block(aead: crypto.Aead, node: bytes, index: int, counter: int,
               plain: bytes | bytearray | memoryview) -> bytes:
    """One slot: ``nonce || AES-256-GCM(plain) || tag`` with nonce = ``counter`` (96-bit big-endian) and associated
    data ``STAGING_AAD || node || index (u64 big-endian)``. ``counter`` must never repeat under ``aead``'s key."""
    if len(plain) != BLOCK_SIZE or not 0 < counter < 1 << 96 or not 0 <= index < 1 << 64:
        raise ValueError("seal_block: bad block, counter or index")
    nonce = counter.to_bytes(crypto.NONCE_LEN, "big")
    return nonce + aead.encrypt(nonce, plain, STAGING_AAD + node + index.to_bytes(8, "big"))


def open_block(aead: crypto.Aead, node: bytes, index: int, counter: int, slot: bytes) -> bytes:
    """The plaintext of a slot sealed by :func:`seal_block` with exactly these arguments; IntegrityError for a
    slot of the wrong size, with another nonce (an older version of the block), or that does not authenticate."""
    nonce = counter.to_bytes(crypto.NONCE_LEN, "big")
    if len(slot) != SLOT_SIZE or not crypto.ct_equal(slot[: crypto.NONCE_LEN], nonce):
        raise IntegrityError("staging block has another size or nonce than the one last written")
    return aead.decrypt(nonce, memoryview(slot)[crypto.NONCE_LEN :], STAGING_AAD + node + index.to_bytes(8, "big"))


class SegmentFiles:
    """The sparse local files holding one node's dirty bytes, sealed block by block (see the module doc).

    Block ``i`` (plaintext bytes ``i*BLOCK_SIZE`` up to the next block) lives in slot ``i`` of the segment files:
    ``nonce (12) || AES-256-GCM ciphertext (BLOCK_SIZE) || tag (16)``. Every write of a block seals the whole block
    again under the next value of a counter (the nonce), so no key/nonce pair is ever used twice; the counter value
    of each written block is kept in memory, so a block swapped for an older one of the same slot, zeroed or
    cut off fails the check as surely as a modified one.

    Small writes into one block whose slot is already on disk (a log appended to a few bytes at a time) change
    that block in memory only (``_tail``): sealing and writing 4 KiB per 4-byte write was most of the cost of
    such a write. The block is sealed and written when a write goes elsewhere and when the node's staging closes
    (it is discarded then); reads take it from memory. Its slot is already allocated, so writing it later cannot
    fail for lack of space where the write itself succeeded (ENOSPC still reaches the write that needs a slot)."""

    def __init__(self, directory: Path, stem: str, node: bytes) -> None:
        self._dir = directory
        self._stem = stem
        self._fds: dict[int, int] = {}
        self._aead = crypto.Aead(crypto.random_bytes(crypto.KEY_LEN))  # in memory only: see the module doc
        self._node = node
        self._counter = 0  # nonce of the last sealed block; the key is fresh, so counting from 0 is safe
        self._sealed: dict[int, int] = {}  # block index -> counter value it was last sealed with
        self._tail: tuple[int, bytearray] | None = None  # (block index, plaintext) newer than the block's slot

    def _path(self, segment: int) -> Path:
        return self._dir / f"{self._stem}.{segment}{STAGING_SUFFIX}"

    def _fd(self, segment: int, create: bool) -> int | None:
        fd = self._fds.get(segment)
        if fd is None and create:
            try:
                fd = os.open(self._path(segment), os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise _os_error(e, "open") from None
            self._fds[segment] = fd
        return fd

    def _seal(self, index: int, plain: bytes | bytearray | memoryview) -> bytes:
        self._counter += 1
        self._sealed[index] = self._counter
        return seal_block(self._aead, self._node, index, self._counter, plain)

    def _open_block(self, index: int) -> bytes:
        """The plaintext of block ``index`` (zeros if it was never written); EIO if the slot fails its check."""
        if self._tail is not None and self._tail[0] == index:
            return bytes(self._tail[1])
        counter = self._sealed.get(index)
        if counter is None:
            return bytes(BLOCK_SIZE)
        segment, slot = divmod(index, BLOCKS_PER_SEGMENT)
        fd = self._fd(segment, False)
        raw = b""
        if fd is not None:
            try:
                raw = os.pread(fd, SLOT_SIZE, slot * SLOT_SIZE)
            except OSError as e:
                raise _os_error(e, "read") from None
        try:
            return open_block(self._aead, self._node, index, counter, raw)
        except IntegrityError:
            raise _tampered(index) from None

    def _write_tail(self) -> None:
        """Seal and write the block kept in memory (see the class doc)."""
        if self._tail is None:
            return
        index, plain = self._tail
        self._write_blocks(index, index, index * BLOCK_SIZE, memoryview(plain))  # on error it stays in memory
        self._tail = None

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        end = offset + len(view)
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        if first == last and len(view) < BLOCK_SIZE and first in self._sealed:
            start = first * BLOCK_SIZE
            if self._tail is None or self._tail[0] != first:
                plain = bytearray(self._open_block(first))
                self._write_tail()
                self._tail = (first, plain)
            self._tail[1][offset - start : end - start] = view
            return
        self._write_tail()
        self._write_blocks(first, last, offset, view)

    def _write_blocks(self, first: int, last: int, offset: int, view: memoryview) -> None:
        end = offset + len(view)
        index = first
        while index <= last:
            # One run of slots per segment file: sealed into one buffer, written with one pwrite.
            segment, slot = divmod(index, BLOCKS_PER_SEGMENT)
            run_last = min(last, (segment + 1) * BLOCKS_PER_SEGMENT - 1)
            fd = self._fd(segment, True)
            assert fd is not None
            sealed = bytearray()
            before = {i: self._sealed.get(i) for i in range(index, run_last + 1)}
            for i in range(index, run_last + 1):
                start = i * BLOCK_SIZE
                lo, hi = max(offset, start), min(end, start + BLOCK_SIZE)
                if hi - lo == BLOCK_SIZE:
                    plain: bytes | bytearray | memoryview = view[lo - offset : hi - offset]
                else:  # a partial block: merge with what the block holds (read-modify-write)
                    plain = bytearray(self._open_block(i))
                    plain[lo - start : hi - start] = view[lo - offset : hi - offset]
                sealed += self._seal(i, plain)
            out, at = memoryview(sealed), slot * SLOT_SIZE
            try:
                while len(out):
                    written = os.pwrite(fd, out, at)
                    out, at = out[written:], at + written
            except OSError as e:
                # The write did not happen (it is not added to the dirty ranges): expect each slot's previous seal
                # again. A slot the failed pwrite did overwrite in part then reads as EIO, never as wrong bytes.
                for i, counter in before.items():
                    if counter is None:
                        self._sealed.pop(i, None)
                    else:
                        self._sealed[i] = counter
                raise _os_error(e, "write") from None
            index = run_last + 1

    def read_into(self, out: memoryview, offset: int) -> None:
        """Fill ``out`` with the bytes at ``offset`` (zeros where nothing was written); EIO if a block read back
        does not authenticate."""
        end = offset + len(out)
        index = offset // BLOCK_SIZE
        while index * BLOCK_SIZE < end:
            start = index * BLOCK_SIZE
            lo, hi = max(offset, start), min(end, start + BLOCK_SIZE)
            block = self._open_block(index)
            out[lo - offset : hi - offset] = memoryview(block)[lo - start : hi - start]
            index += 1

    def truncate(self, size: int) -> None:
        """Drop the staged blocks wholly at or after ``size`` (the block holding ``size`` keeps its bytes past it:
        they are outside every dirty range, so nothing reads them)."""
        keep = -(-size // BLOCK_SIZE)  # blocks [0, keep) stay
        if self._tail is not None and self._tail[0] >= keep:
            self._tail = None
        for index in [i for i in self._sealed if i >= keep]:
            del self._sealed[index]
        for segment in sorted(self._fds):
            first = segment * BLOCKS_PER_SEGMENT
            if first >= keep:
                self._drop(segment)
            elif first + BLOCKS_PER_SEGMENT > keep:
                try:
                    os.ftruncate(self._fds[segment], (keep - first) * SLOT_SIZE)
                except OSError as e:
                    raise _os_error(e, "truncate") from None

    def _drop(self, segment: int) -> None:
        fd = self._fds.pop(segment)
        os.close(fd)
        try:
            os.unlink(self._path(segment))
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Close and remove every staging file of this node."""
        self._tail = None
        for segment in list(self._fds):
            self._drop(segment)
        self._sealed.clear()


class MemoryBudget:
    """Blocks taken by every node's :class:`MemoryBlocks`, process-wide (bounds the memory staging may hold)."""

    lock = threading.Lock()
    used = 0

    @classmethod
    def take(cls, blocks: int) -> bool:
        with cls.lock:
            if cls.used + blocks > MEMORY_BUDGET_BLOCKS:
                return False
            cls.used += blocks
            return True

    @classmethod
    def give_back(cls, blocks: int) -> None:
        with cls.lock:
            cls.used -= blocks


class MemoryBlocks:
    """A small node's staged blocks, in plaintext in this process's memory (the same interface as
    :class:`SegmentFiles`). ``write`` returns False, changing nothing, when the blocks it needs would pass the
    node's bound or the process-wide budget: the caller then moves the node to its staging files."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytearray] = {}

    def write(self, offset: int, data: bytes | memoryview) -> bool:
        view = memoryview(data).cast("B")
        end = offset + len(view)
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        blocks = self.blocks
        new = [i for i in range(first, last + 1) if i not in blocks]
        if new and (len(blocks) + len(new) > MEMORY_BLOCKS_PER_NODE or not MemoryBudget.take(len(new))):
            return False
        for i in new:
            blocks[i] = bytearray(BLOCK_SIZE)
        index = first
        while index <= last:
            start = index * BLOCK_SIZE
            lo, hi = max(offset, start), min(end, start + BLOCK_SIZE)
            blocks[index][lo - start : hi - start] = view[lo - offset : hi - offset]
            index += 1
        return True

    def read_into(self, out: memoryview, offset: int) -> None:
        end = offset + len(out)
        index = offset // BLOCK_SIZE
        while index * BLOCK_SIZE < end:
            start = index * BLOCK_SIZE
            lo, hi = max(offset, start), min(end, start + BLOCK_SIZE)
            block = self.blocks.get(index)
            if block is None:
                out[lo - offset : hi - offset] = bytes(hi - lo)
            else:
                out[lo - offset : hi - offset] = memoryview(block)[lo - start : hi - start]
            index += 1

    def truncate(self, size: int) -> None:
        """As :meth:`SegmentFiles.truncate`: blocks wholly at or after ``size`` go."""
        keep = -(-size // BLOCK_SIZE)
        gone = [i for i in self.blocks if i >= keep]
        for i in gone:
            del self.blocks[i]
        if gone:
            MemoryBudget.give_back(len(gone))

    def move_to(self, files: SegmentFiles) -> None:
        """Seal every block into ``files`` (consecutive blocks in one write); on an error the blocks stay here."""
        indexes = sorted(self.blocks)
        run_start = 0
        for k in range(1, len(indexes) + 1):
            if k == len(indexes) or indexes[k] != indexes[k - 1] + 1:
                run = indexes[run_start:k]
                data = b"".join(self.blocks[i] for i in run)
                files.write(run[0] * BLOCK_SIZE, data)
                run_start = k
        self.close()

    def close(self) -> None:
        if self.blocks:
            MemoryBudget.give_back(len(self.blocks))
            self.blocks.clear()


class Staged:
    """One node's uncommitted writes: an overlay over ``base`` (the content the writes started from), and the
    attribute changes made while the file was open (``attrs``: SetAttr fields), committed with the data."""

    def __init__(self, node: bytes, base: Content, mtime_ns: int, ctime_ns: int, directory: Path) -> None:
        self.node = node
        self.base = base
        self.size = base.size
        self.base_limit = base.size  # base bytes at or after this offset were truncated away (read as zeros)
        self.dirty = Intervals()
        self._directory = directory
        self.files: MemoryBlocks | SegmentFiles = MemoryBlocks()  # SegmentFiles once past the memory bounds
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.data_changed = False  # writes or truncation happened (else only attributes are pending)
        self.attrs: dict[str, int] = {}  # pending SetAttr fields: mode, uid, gid, atime_ns, mtime_ns
        # A sequential writer's front layer (see .stream): every byte below its end comes from it. Only set while
        # nothing is dirty and the file ends at the stream's end; anything else settles it first.
        self.stream: SealStream | None = None

    def settle(self) -> None:
        """Turn the stream into the ordinary overlay: its sealed prefix becomes the base content, its buffered
        tail an ordinary dirty range of the staging files."""
        stream = self.stream
        if stream is None:
            return
        stream.drain()
        tail = stream.tail()
        if len(tail):
            self._write_files(stream.start, tail)  # may fail (disk full): the stream then stays as it is
            self.dirty.add(stream.start, stream.end)
        self.stream = None
        self.base = Content(size=stream.start, extents=stream.sealed) if stream.sealed else Content(size=stream.start)
        self.base_limit = stream.start

    def _write_files(self, offset: int, data: bytes | memoryview) -> None:
        """Write into the staged blocks: in memory while within the bounds, else (moving them first) on disk."""
        files = self.files
        if isinstance(files, MemoryBlocks):
            if files.write(offset, data):
                return
            on_disk = SegmentFiles(self._directory, self.node.hex(), self.node)
            try:
                files.move_to(on_disk)
            except BaseException:
                on_disk.close()  # the blocks stay in memory; this write fails (ENOSPC, EIO)
                raise
            self.files = on_disk
        self.files.write(offset, data)

    def write(self, offset: int, data: bytes, now_ns: int) -> None:
        if not data:
            return
        stream = self.stream
        if stream is not None and offset == stream.end == self.size and not self.dirty:
            try:
                stream.append(data)
            finally:  # on a failed put (disk full) the bytes taken so far are the file's: the size says so
                if stream.end > self.size:
                    self.size = stream.end
                    self.mtime_ns = self.ctime_ns = now_ns
                    self.attrs.pop("mtime_ns", None)
                    self.data_changed = True
            return
        self.settle()
        self._write_files(offset, data)
        self.dirty.add(offset, offset + len(data))
        self.size = max(self.size, offset + len(data))
        self.mtime_ns = self.ctime_ns = now_ns
        self.attrs.pop("mtime_ns", None)  # the write's own time supersedes an mtime set before it
        self.data_changed = True

    def truncate(self, size: int, now_ns: int | None) -> None:
        if size == 0 and self.stream is not None:
            # Nothing of the stream stays: its chunks in flight are not stored (on a full disk, truncating the
            # file that filled it must work) and its sealed blobs are no longer reached (the commit drops them).
            self.stream.abandon()
            self.stream = None
            self.base, self.base_limit = Content(size=0), 0
        self.settle()
        if size < self.size:
            self.dirty.cut(size)
            self.files.truncate(size)
            self.base_limit = min(self.base_limit, size)
        self.size = size
        if now_ns is not None:
            self.mtime_ns = self.ctime_ns = now_ns
            self.attrs.pop("mtime_ns", None)
        self.data_changed = True

    def set_attrs(self, fields: dict[str, int], now_ns: int) -> None:
        """Attribute changes to commit with the data (mode, uid, gid, atime_ns, mtime_ns)."""
        self.attrs.update(fields)
        if "mtime_ns" in fields:
            self.mtime_ns = fields["mtime_ns"]
        self.ctime_ns = now_ns

    def read(self, offset: int, size: int, read_base: ReadBase) -> bytes:
        """Merged bytes ``offset:offset+size`` (clipped to the staged size)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        view = memoryview(out)
        stream = self.stream
        if stream is not None:  # nothing is dirty, and the file ends at the stream's end
            stream.drain()
            if offset < stream.start:
                prefix = Content(size=stream.start, extents=list(stream.sealed))
                data = read_base(prefix, offset, min(end, stream.start) - offset)
                view[: len(data)] = data
            lo = max(offset, stream.start)
            if lo < end:
                view[lo - offset : end - offset] = stream.tail()[lo - stream.start : end - stream.start]
            return bytes(out)
        base_end = min(end, self.base_limit, self.base.size)
        if offset < base_end:
            data = read_base(self.base, offset, base_end - offset)
            view[: len(data)] = data
        for lo, hi in self.dirty.overlapping(offset, end):
            self.files.read_into(view[lo - offset : hi - offset], lo)
        return bytes(out)

    def stored_bytes(self, base_stored: int) -> int:
        """A fair estimate of the bytes this file occupies (for st_blocks): base data plus dirty bytes."""
        if self.stream is not None:
            return min(self.size, self.stream.end)  # the base is cut away below the stream's end
        return min(self.size, base_stored + self.dirty.total())

    def close(self) -> None:
        self.stream = None
        self.files.close()


def clear_leftovers(directory: Path) -> int:
    """Remove staging files a crashed process left behind; returns how many."""
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.endswith(STAGING_SUFFIX):
            try:
                os.unlink(directory / name)
                removed += 1
            except OSError:
                pass
    return removed
