"""Staged writes: a sparse local overlay of dirty byte ranges over a file's committed content.

Each node being written gets a :class:`Staged` overlay: the content it started from (``base``), its current
size, the dirty ranges (:class:`Intervals`) and sparse local files holding those ranges' bytes at their file
offsets. A read merges the three: dirty ranges from the staging files, other bytes from the base content up to
``base_limit`` (the smallest size the file was truncated to since staging began; base bytes past it were cut off
and read as zeros), zeros elsewhere. Truncation and holes cost nothing: nothing is written for them.

The staging bytes live in files of 1 TiB segments (``<node hex>.<segment>``), so any offset a file may have
(up to 2**63 - 1) maps to a file the local file system can hold (ext4 stops at 16 TiB per file).

Staging is a cache, not a journal: what is not committed when the process dies is lost, exactly like dirty
pages of a local disk that were never fsynced. Staging files left by a crash are removed at start.

The staged bytes are encrypted on disk (AES-256-CTR by file offset, ``crypto.ctr_at``) under a random key and
nonce per node that live only in this process's memory: plaintext never reaches the disk, and staging files a
crash leaves behind are unreadable (they are deleted at the next start anyway).
"""

from __future__ import annotations

import errno
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core import crypto
from ..core.ops import Content
from ..errors import FsError

SEGMENT_BITS = 40
SEGMENT_SIZE = 1 << SEGMENT_BITS
STAGING_SUFFIX = ".stage"

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


def _os_error(e: OSError, what: str) -> FsError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return FsError(errno.ENOSPC, f"staging {what}: disk full")
    if e.errno == errno.EFBIG:
        return FsError(errno.EFBIG, f"staging {what}: file too large")
    return FsError(errno.EIO, f"staging {what}: {e.strerror or e}")


class SegmentFiles:
    """The sparse local files holding one node's dirty bytes at their own offsets."""

    def __init__(self, directory: Path, stem: str) -> None:
        self._dir = directory
        self._stem = stem
        self._fds: dict[int, int] = {}
        self._key = crypto.random_bytes(crypto.KEY_LEN)  # in memory only: see the module doc
        self._nonce = crypto.random_bytes(crypto.CTR_NONCE_LEN)

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

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(crypto.ctr_at(self._key, self._nonce, offset, memoryview(data).cast("B")))
        while len(view):
            segment, inner = divmod(offset, SEGMENT_SIZE)
            n = min(len(view), SEGMENT_SIZE - inner)
            fd = self._fd(segment, True)
            assert fd is not None
            part = view[:n]
            try:
                while len(part):
                    written = os.pwrite(fd, part, inner)
                    part, inner = part[written:], inner + written
            except OSError as e:
                raise _os_error(e, "write") from None
            view, offset = view[n:], offset + n

    def read_into(self, out: memoryview, offset: int) -> None:
        """Fill ``out`` with the bytes at ``offset`` (zeros where nothing was written)."""
        done = 0
        while done < len(out):
            segment, inner = divmod(offset + done, SEGMENT_SIZE)
            n = min(len(out) - done, SEGMENT_SIZE - inner)
            fd = self._fd(segment, False)
            if fd is not None:
                got = 0
                try:
                    while got < n:
                        k = os.preadv(fd, [out[done + got : done + n]], inner + got)
                        if k == 0:
                            break
                        got += k
                except OSError as e:
                    raise _os_error(e, "read") from None
                if got:
                    piece = out[done : done + got]
                    piece[:] = crypto.ctr_at(self._key, self._nonce, offset + done, piece)
                out[done + got : done + n] = bytes(n - got)
            else:
                out[done : done + n] = bytes(n)
            done += n

    def truncate(self, size: int) -> None:
        """Drop the staged bytes at or after ``size``."""
        for segment in sorted(self._fds):
            start = segment * SEGMENT_SIZE
            if start >= size:
                self._drop(segment)
            elif start + SEGMENT_SIZE > size:
                try:
                    os.ftruncate(self._fds[segment], size - start)
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
        for segment in list(self._fds):
            self._drop(segment)


class Staged:
    """One node's uncommitted writes: an overlay over ``base`` (the content the writes started from), and the
    attribute changes made while the file was open (``attrs``: SetAttr fields), committed with the data."""

    def __init__(self, node: bytes, base: Content, mtime_ns: int, ctime_ns: int, directory: Path) -> None:
        self.node = node
        self.base = base
        self.size = base.size
        self.base_limit = base.size  # base bytes at or after this offset were truncated away (read as zeros)
        self.dirty = Intervals()
        self.files = SegmentFiles(directory, node.hex())
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.data_changed = False  # writes or truncation happened (else only attributes are pending)
        self.attrs: dict[str, int] = {}  # pending SetAttr fields: mode, uid, gid, atime_ns, mtime_ns

    def write(self, offset: int, data: bytes, now_ns: int) -> None:
        if not data:
            return
        self.files.write(offset, data)
        self.dirty.add(offset, offset + len(data))
        self.size = max(self.size, offset + len(data))
        self.mtime_ns = self.ctime_ns = now_ns
        self.attrs.pop("mtime_ns", None)  # the write's own time supersedes an mtime set before it
        self.data_changed = True

    def truncate(self, size: int, now_ns: int | None) -> None:
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
        base_end = min(end, self.base_limit, self.base.size)
        if offset < base_end:
            data = read_base(self.base, offset, base_end - offset)
            view[: len(data)] = data
        for lo, hi in self.dirty.overlapping(offset, end):
            self.files.read_into(view[lo - offset : hi - offset], lo)
        return bytes(out)

    def stored_bytes(self, base_stored: int) -> int:
        """A fair estimate of the bytes this file occupies (for st_blocks): base data plus dirty bytes."""
        return min(self.size, base_stored + self.dirty.total())

    def close(self) -> None:
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
