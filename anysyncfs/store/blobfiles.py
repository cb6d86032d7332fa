"""Content-addressed blob files.

A blob with ID ``abcdef…`` (64 lowercase hex digits of its BLAKE3 hash) lives at ``<root>/ab/cdef…``: the first
byte names a directory (so no directory holds more than 1/256 of the blobs), the other 31 bytes the file.
Files are written atomically (temporary file, fsync, rename, fsync of the directory), mode 0o600, directories
0o700. :meth:`BlobFiles.get` re-hashes the bytes, so a corrupted file is reported (:class:`IdMismatch`) and never
served. :meth:`BlobFiles.read_ranges` reads only some bytes of a file and checks nothing: its caller (the read path
of a mount) authenticates every AES-GCM segment it decrypts from them instead (see :mod:`..core.blob`). It reads
through descriptors kept open between reads (a small LRU); a file replaced or deleted since is opened anew.
Temporary files start with a dot and are skipped by listings.

**Outboards** (docs/protocol.md 50.8): a blob larger than one 16 KiB group has its BLAKE3 tree's parent nodes
above the groups in ``<root>/ab/cdef….ob`` (pre-order, 64 bytes each, no length prefix: the blob file's size is
the length), written with the blob (before it) and replaced when found missing or damaged. It is what lets this
store serve verified byte ranges (:meth:`BlobFiles.read_slice`) without hashing the whole blob. A mount's write
path puts blobs with ``outboard=False`` (hashing the tree costs more than sealing the blob, and it runs under the
mount's lock there) and :meth:`BlobFiles.make_durable` writes the missing outboards in parallel threads before
the fsyncs: a blob that a committed change references has its outboard, barring damage (which is repaired).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import logging

from ..core import bao, crypto
from ..core.blob import MAX_BLOB_LEN
from ..errors import IdMismatch, IntegrityError, NotFound, StoreError
from .files import StrPath, _store_error, atomic_write, fsync_dir, fsync_paths, io_pool, read_bounded

BLOB_ID_LEN = crypto.HASH_LEN
OUTBOARD_SUFFIX = ".ob"
OPEN_BLOBS = 64  # blob file descriptors kept open for reads (a 64 MiB span of 1 MiB chunks)
_HEX = frozenset("0123456789abcdef")
log = logging.getLogger(__name__)


class BlobFiles:
    """Blob files under one root directory (created, mode 0o700, if missing)."""

    def __init__(self, root: StrPath, *, max_blob_len: int = MAX_BLOB_LEN) -> None:
        self.root = Path(root)
        self._root_text = os.fspath(self.root)
        self.max_blob_len = max_blob_len
        self._open_blobs = _OpenBlobs(self._root_text)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create blob directory {self.root}: {e.strerror or e}") from None

    def path_of(self, blob_id: bytes) -> Path:
        if len(blob_id) != BLOB_ID_LEN:
            raise ValueError("a blob ID is 32 bytes")
        text = blob_id.hex()
        return self.root / text[:2] / text[2:]

    def put(self, blob_id: bytes, data: bytes | bytearray | memoryview, *, verified: bool = False,
            durable: bool = True, nodes: bytes | None = None, outboard: bool = True) -> None:
        """Store ``data`` under ``blob_id`` after checking that it hashes to it (:class:`IdMismatch`; skipped
        when the caller has just checked it: ``verified``). Idempotent; a damaged existing copy is replaced.
        ``nodes``: the blob's outboard nodes when the caller has them (a fetch by ranges verified them on the way):
        checked against the ID (cheap: one hash per node; with the ID right, only the true tree passes) instead of
        being computed from the bytes.
        Safe to call from several threads (each write is a temporary file renamed into place). ``durable=False``
        leaves the fsyncs to a later :meth:`make_durable` (a mount's group commit does many at once);
        ``outboard=False`` (with ``durable=False`` only) leaves the outboard to it too."""
        if not outboard and durable:
            raise ValueError("a blob put without its outboard is completed by make_durable: durable=False")
        path = self.path_of(blob_id)
        if len(data) > self.max_blob_len:
            raise StoreError(f"blob of {len(data)} bytes exceeds the limit of {self.max_blob_len}")
        if not verified and crypto.blake3(data) != blob_id:
            raise IdMismatch("blob does not hash to the ID it is stored under")
        if self._intact(path, blob_id):
            if outboard and len(data) > bao.GROUP_LEN and not self._outboard_path(blob_id).is_file():
                self._write_outboard(blob_id, data, durable=durable, nodes=nodes)
            return
        directory = path.parent
        if not directory.is_dir():
            try:
                directory.mkdir(mode=0o700, exist_ok=True)
            except OSError as e:  # a new directory takes a block on most file systems: full is "disk full"
                raise _store_error("create", directory, e) from None
            if durable:
                fsync_dir(self.root)  # else make_durable does it
        if outboard and len(data) > bao.GROUP_LEN:  # before the blob: a blob file present has its outboard (barring damage)
            self._write_outboard(blob_id, data, durable=durable, nodes=nodes)
        self._open_blobs.forget(blob_id)  # a damaged copy is replaced: no read goes on from the old file
        try:
            atomic_write(path, data, 0o600, durable=durable)
        except StoreError:
            self._outboard_path(blob_id).unlink(missing_ok=True)  # no orphan (a full disk needs every byte back)
            raise

    # ------------------------------------------------------------------------------------------ outboards
    def _outboard_path(self, blob_id: bytes) -> Path:
        path = self.path_of(blob_id)
        return path.with_name(path.name + OUTBOARD_SUFFIX)

    def _write_outboard(self, blob_id: bytes, data: bytes | bytearray | memoryview, *, durable: bool = True,
                        nodes: bytes | None = None) -> bytes:
        if nodes is not None:
            try:
                bao.verify_outboard(blob_id, len(data), nodes)  # the ID of ``data`` was checked: this is its tree
            except IntegrityError as e:
                log.warning("outboard given for blob %s is wrong (%s): computing it", blob_id.hex()[:16], e)
                nodes = None
        if nodes is None:
            root, nodes = bao.outboard_nodes(data)
            if root != blob_id:  # the caller verified the ID; the tree must agree with it
                raise IdMismatch("blob tree does not hash to the ID it is stored under")
        if nodes:
            # Never fsynced: an outboard is derived data, checked on every use and rebuilt from the blob when a
            # crash left it short or empty, so it must not double the fsyncs of every blob written.
            atomic_write(self._outboard_path(blob_id), nodes, 0o600, durable=False)
        return nodes

    def outboard(self, blob_id: bytes) -> tuple[int, bytes]:
        """(blob size, outboard nodes), the nodes verified against the blob ID down to the groups. A missing or
        damaged outboard file is rebuilt from the (verified) blob, with a warning for a damaged one.
        :class:`NotFound` if the blob is absent, :class:`IdMismatch` if the blob file is damaged."""
        size = self.size_of(blob_id)
        want = bao.parent_count(size) * bao.NODE_LEN
        if want == 0:
            return size, b""
        try:
            nodes = read_bounded(self._outboard_path(blob_id), want)
            bao.verify_outboard(blob_id, size, nodes)
            return size, nodes
        except NotFound:
            pass
        except (StoreError, IntegrityError) as e:
            log.warning("outboard of blob %s is damaged (%s): rebuilding it", blob_id.hex()[:16], e)
        data = self.get(blob_id)
        return len(data), self._write_outboard(blob_id, data)

    def check_outboard(self, blob_id: bytes, *, repair: bool = False) -> str | None:
        """fsck: ``None`` when the blob's outboard file is present and is its tree (or the blob needs none), else
        what is wrong (rebuilt when ``repair``). The blob itself must be intact (check it first)."""
        size = self.size_of(blob_id)
        want = bao.parent_count(size) * bao.NODE_LEN
        path = self._outboard_path(blob_id)
        problem: str | None = None
        if want == 0:
            if path.exists():
                problem = "has an outboard file but is one group"
                if repair:
                    path.unlink(missing_ok=True)
            return problem
        try:
            nodes = read_bounded(path, want)
            bao.verify_blob(blob_id, nodes, self.get(blob_id))
        except NotFound:
            problem = "has no outboard file"
        except (StoreError, IntegrityError) as e:
            problem = f"outboard file is damaged ({e})"
        if problem is not None and repair:
            self._write_outboard(blob_id, self.get(blob_id))
        return problem

    def read_slice(self, blob_id: bytes, ranges: Sequence[bao.Range]) -> bytes:
        """The verified-streaming slice (50.8) of ``ranges``: length, the proof nodes and the 16 KiB groups that
        cover the ranges and the last byte. Every group read from the file is checked against its outboard
        chaining value first, so a damaged file is reported (:class:`IdMismatch`), never served.
        :class:`bao.RangeOutside` for a range outside the blob."""
        size, nodes = self.outboard(blob_id)
        want = bao.wanted(size, ranges)
        groups = bao.groups_of(want)
        if len(groups) * 2 > bao.group_count(size):
            # Most of the blob: read it whole and check it with one (SIMD, multithreaded) BLAKE3 = ID, which
            # vouches for every group at once, rather than hashing each group through the tree in C.
            data = self.get(blob_id)
            view = memoryview(data)
            return bao.encode_slice(lambda o, n: view[o : o + n], nodes, size, want)
        cvs = bao.group_cvs(blob_id, size, nodes)
        spans = [(g * bao.GROUP_LEN, min(bao.GROUP_LEN, size - g * bao.GROUP_LEN)) for g in groups]
        file_size, pieces = self.read_ranges(blob_id, spans)
        if file_size != size:
            raise IdMismatch(f"blob file {blob_id.hex()} changed size while read")
        by_offset = {}
        for g, (offset, length), piece in zip(groups, spans, pieces, strict=True):
            if len(piece) != length or not bao.verify_group(cvs[g], g, piece, is_root=len(cvs) == 1):
                raise IdMismatch(f"blob file {blob_id.hex()} is corrupted (group {g})")
            by_offset[offset] = piece
        return bao.encode_slice(lambda o, _n: by_offset[o], nodes, size, want)

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """:meth:`put` with ``verified`` and ``durable=False`` for many blobs, written in parallel threads."""
        if len(items) == 1:
            self.put(items[0][0], items[0][1], verified=True, durable=False)
            return
        for _ in io_pool().map(lambda item: self.put(item[0], item[1], verified=True, durable=False), items):
            pass

    def make_durable(self, blob_ids: Sequence[bytes]) -> None:
        """fsync the files of blobs written with ``durable=False`` (and their directories), after writing the
        outboards that ``put(outboard=False)`` left out."""
        self._complete_outboards(blob_ids)
        fsync_paths([self.path_of(b) for b in blob_ids], also=[self.root])  # the root: new subdirectories

    def _complete_outboards(self, blob_ids: Sequence[bytes]) -> None:
        """Write the outboard of each blob among ``blob_ids`` larger than a group that has none, from its file
        (the tree's root is checked against the ID, so a damaged file is refused: :class:`IdMismatch`). The
        hashing releases the GIL: the blobs are spread over the I/O threads."""
        missing: list[tuple[bytes, int]] = []
        for blob_id in blob_ids:
            try:
                size = os.stat(self.path_of(blob_id)).st_size
            except FileNotFoundError:
                raise NotFound(f"blob {blob_id.hex()} is not stored here") from None
            except OSError as e:
                raise _store_error("stat", self.path_of(blob_id), e) from None
            if size > bao.GROUP_LEN and not self._outboard_path(blob_id).is_file():
                missing.append((blob_id, size))
        if not missing:
            return

        def complete(item: tuple[bytes, int]) -> None:
            blob_id, _size = item
            data = read_bounded(self.path_of(blob_id), self.max_blob_len)
            try:
                self._write_outboard(blob_id, data)
            except IdMismatch:
                raise  # the blob file is damaged: the commit must not reference it
            except StoreError as e:
                # Derived data: a missing outboard is rebuilt on first use (and by fsck --repair). A full disk
                # must not hold back the commit of blobs that are written already.
                log.debug("outboard of blob %s not written (%s): rebuilt when needed", blob_id.hex()[:16], e)

        if len(missing) == 1:
            complete(missing[0])
            return
        for _ in io_pool().map(complete, missing):
            pass

    def _intact(self, path: Path, blob_id: bytes) -> bool:
        try:
            return crypto.blake3(read_bounded(path, self.max_blob_len)) == blob_id
        except (NotFound, StoreError):
            return False

    def get(self, blob_id: bytes) -> bytes:
        """The blob's bytes, verified: :class:`NotFound` if absent, :class:`IdMismatch` if the file is damaged."""
        data = read_bounded(self.path_of(blob_id), self.max_blob_len)
        if crypto.blake3(data) != blob_id:
            raise IdMismatch(f"blob file {blob_id.hex()} is corrupted")
        return data

    def read_ranges(self, blob_id: bytes, ranges: Sequence[tuple[int, int]]) -> tuple[int, list[bytes]]:
        """The file's size and the bytes at each ``(offset, size)`` of ``ranges``, read with a pread per range
        (adjacent ranges are read at once) through a descriptor kept open between reads (:class:`_OpenBlobs`).
        NOT verified: a range runs short where the file ends, and a damaged byte is returned as it is, so the
        caller must authenticate what it uses. :class:`NotFound` if absent; :class:`StoreError` for a file larger
        than the limit or a read error."""
        if len(blob_id) != BLOB_ID_LEN:
            raise ValueError("a blob ID is 32 bytes")
        opened: _OpenBlob | None = self._open_blobs.acquire(blob_id)
        try:
            assert opened is not None
            stat = os.fstat(opened.fd)
            if stat.st_nlink == 0:
                # Unlinked (deleted, or replaced by a rename) since it was opened, by another process: this store
                # drops its own descriptor when it does either. Read what the path names now.
                self._open_blobs.release(opened)
                opened = None
                self._open_blobs.forget(blob_id)
                opened = self._open_blobs.acquire(blob_id)
                stat = os.fstat(opened.fd)
            return _pread_ranges(opened.fd, opened.path, stat.st_size, self.max_blob_len, ranges)
        except OSError as e:
            raise _store_error("read", f"blob {blob_id.hex()}", e) from None
        finally:
            if opened is not None:
                self._open_blobs.release(opened)

    def close(self) -> None:
        """Close the descriptors kept open for reads (the store stays usable: later reads open files again)."""
        self._open_blobs.close_all()

    def prefetch(self, blob_id: bytes) -> None:
        """Ask the kernel to start reading ``blob_id``'s file into the page cache (posix_fadvise WILLNEED: the
        disk read runs while the caller decrypts the chunk before it). Best effort: a missing file or an error
        is ignored (the read that follows reports it)."""
        try:
            opened = self._open_blobs.acquire(blob_id)
        except (NotFound, StoreError):
            return
        try:
            os.posix_fadvise(opened.fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            self._open_blobs.release(opened)

    def has(self, blob_id: bytes) -> bool:
        """Whether a file exists for ``blob_id`` (its content is checked only by :meth:`get`)."""
        return self.path_of(blob_id).is_file()

    def has_many(self, blob_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``blob_ids`` with a file (a stat each: local, no round trips to save)."""
        return {b for b in blob_ids if self.has(b)}

    def size_of(self, blob_id: bytes) -> int:
        try:
            return self.path_of(blob_id).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {blob_id.hex()} is not stored here") from None
        except OSError as e:
            raise StoreError(f"cannot stat blob {blob_id.hex()}: {e.strerror or e}") from None

    def delete(self, blob_id: bytes) -> bool:
        """Remove the blob; ``False`` if it was not there."""
        self._open_blobs.forget(blob_id)
        try:
            os.unlink(self._outboard_path(blob_id))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"cannot delete the outboard of blob {blob_id.hex()}: {e.strerror or e}") from None
        try:
            os.unlink(self.path_of(blob_id))
        except FileNotFoundError:
            return False
        except OSError as e:
            raise StoreError(f"cannot delete blob {blob_id.hex()}: {e.strerror or e}") from None
        return True

    def ids_modified_before(self, modified_before_us: int) -> list[bytes]:
        """IDs of the blob files last written before ``modified_before_us`` (µs since the epoch)."""
        old: list[bytes] = []
        for entry, blob_id in self._scan():
            try:
                mtime_us = entry.stat().st_mtime_ns // 1000
            except FileNotFoundError:  # deleted meanwhile
                continue
            except OSError as e:
                raise StoreError(f"cannot stat {entry.path}: {e.strerror or e}") from None
            if mtime_us < modified_before_us:
                old.append(blob_id)
        return old

    def iter_ids(self) -> Iterator[bytes]:
        """Every stored blob ID (in no particular order); stray and temporary files are skipped."""
        for _, blob_id in self._scan():
            yield blob_id

    def total_size(self) -> int:
        """Bytes used by all blob files."""
        total = 0
        for entry, _ in self._scan():
            try:
                total += entry.stat().st_size
            except FileNotFoundError:  # deleted meanwhile
                continue
            except OSError as e:
                raise StoreError(f"cannot stat {entry.path}: {e.strerror or e}") from None
        return total

    def _scan(self) -> Iterator[tuple[os.DirEntry[str], bytes]]:
        try:
            tops = [e for e in os.scandir(self.root) if len(e.name) == 2 and set(e.name) <= _HEX and e.is_dir()]
        except OSError as e:
            raise StoreError(f"cannot list {self.root}: {e.strerror or e}") from None
        for top in tops:
            try:
                entries = list(os.scandir(top.path))
            except OSError as e:
                raise StoreError(f"cannot list {top.path}: {e.strerror or e}") from None
            for entry in entries:
                name = entry.name
                if len(name) == 2 * BLOB_ID_LEN - 2 and set(name) <= _HEX and entry.is_file():
                    yield entry, bytes.fromhex(top.name + name)


def _pread_ranges(fd: int, path: str, size: int, max_len: int,
                  ranges: Sequence[tuple[int, int]]) -> tuple[int, list[bytes]]:
    if size > max_len:
        raise StoreError(f"{path} is {size} bytes, more than the limit of {max_len}")
    out: list[bytes] = []
    at = 0
    while at < len(ranges):
        offset, length = ranges[at]
        group = at + 1  # merge the ranges that follow on directly
        while group < len(ranges) and ranges[group][0] == offset + length:
            length += ranges[group][1]
            group += 1
        data = os.pread(fd, length, offset) if length > 0 else b""
        while 0 < len(data) < length:  # a short read before EOF (rare): go on until EOF or done
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        if group == at + 1:
            out.append(data)
        else:
            cut = 0
            for _, part_length in ranges[at:group]:
                out.append(data[cut : cut + part_length])
                cut += part_length
        at = group
    return size, out


class _OpenBlob:
    __slots__ = ("fd", "forgotten", "path", "users")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.users = 0
        self.forgotten = False


class _OpenBlobs:
    """Read-only descriptors of recently read blob files, least recently used closed first.

    Why: a random 4 KiB read of a mount preads one 64 KiB segment; opening the file for it (a path walk of three
    components and a new file table entry) and closing it again cost as much as the pread from the page cache.

    Thread-safe. A descriptor is closed only when no reader holds it (``users``), so a pread never reaches a
    descriptor number that was closed and reused for another file. Correctness does not rest on this cache being
    fresh: every segment read through it is authenticated by its reader; ``read_ranges`` reopens a file unlinked
    since (st_nlink 0), and the store drops the descriptor of a blob it replaces or deletes."""

    def __init__(self, root: str, capacity: int = OPEN_BLOBS) -> None:
        self._root = root
        self._capacity = capacity
        self._lock = threading.Lock()
        self._open: OrderedDict[bytes, _OpenBlob] = OrderedDict()

    def acquire(self, blob_id: bytes) -> _OpenBlob:
        with self._lock:
            hit = self._open.get(blob_id)
            if hit is not None:
                self._open.move_to_end(blob_id)
                hit.users += 1
                return hit
        text = blob_id.hex()
        path = f"{self._root}/{text[:2]}/{text[2:]}"  # path_of without pathlib: this is every cold read's path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"blob {text} is not stored here") from None
        except OSError as e:
            raise _store_error("open", path, e) from None
        # Reads of a blob file ask for exactly the segments they need (a sequential reader asks for a run of them
        # and has the next file prefetched): the kernel's read-ahead would only read segments nobody uses.
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        except OSError:
            pass
        entry = _OpenBlob(fd, path)
        closing: list[int] = []
        with self._lock:
            hit = self._open.get(blob_id)
            if hit is not None:  # another thread opened it meanwhile: keep one
                closing.append(fd)
                entry = hit
            else:
                self._open[blob_id] = entry
                while len(self._open) > self._capacity:
                    _, old = self._open.popitem(last=False)
                    old.forgotten = True
                    if old.users == 0:
                        closing.append(old.fd)
            entry.users += 1
        for old_fd in closing:
            os.close(old_fd)
        return entry

    def release(self, entry: _OpenBlob) -> None:
        with self._lock:
            entry.users -= 1
            close = entry.forgotten and entry.users == 0
        if close:
            os.close(entry.fd)

    def forget(self, blob_id: bytes) -> None:
        with self._lock:
            entry = self._open.pop(blob_id, None)
            if entry is None:
                return
            entry.forgotten = True
            close = entry.users == 0
        if close:
            os.close(entry.fd)

    def __del__(self) -> None:
        try:
            self.close_all()
        except Exception:  # noqa: BLE001 - at interpreter exit os or the lock may be gone already
            pass

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._open.values())
            self._open.clear()
            closing = []
            for entry in entries:
                entry.forgotten = True
                if entry.users == 0:
                    closing.append(entry.fd)
        for fd in closing:
            os.close(fd)
