"""Partial blobs: the verified 16 KiB groups of a blob this device is still fetching (docs/protocol.md 50.9).

A fetch by ranges (:mod:`anysyncfs.net.range_fetch`) records every group and proof node as soon as
:class:`~anysyncfs.core.bao.SliceDecoder` has verified it, so an interrupted fetch resumes where it stopped (from
any peer) and the groups held can be served to others. Under ``<blobs>/partial/`` (skipped by blob listings), per
blob ``<64 hex>``:

* ``.data``: the blob's bytes at their offsets (a sparse file of the blob's length);
* ``.nodes``: the outboard's parent nodes at their pre-order index (sparse; only nodes on paths to held groups are
  meaningful);
* ``.have``: the record of verified groups: u64 LE blob length ‖ bitmap (bit g, LSB first, = group g verified).

Nothing here is trusted when read back: :meth:`PartialBlobs.read_slice` verifies the slice it builds against the
blob ID before returning it, and a completed blob is verified whole when it moves into the blob files. A crash may
leave ``.have`` ahead of the data (no fsync: losing a partial costs a re-fetch only); that is caught the same way,
and the partial is then dropped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from ..core import bao
from ..errors import IntegrityError, NotFound, StoreError
from .files import atomic_write, read_bounded

_LEN = bao.LENGTH_PREFIX_LEN
# Disk the partial blobs of a device may take (reads of uncached chunks keep ~83 KB of groups each): past it the
# least recently recorded ones are dropped whole (:meth:`PartialBlobs.prune`; a mount does it every cache tick).
# Dropping costs only a re-fetch; the blob cache's own limit counts blob files, not these.
PARTIAL_BYTES = 256 << 20


class PartialBlobs:
    """Partial blobs under one directory (created, mode 0o700, on first use)."""

    def __init__(self, root: Path, *, max_blob_len: int) -> None:
        self.root = Path(root)
        self.max_blob_len = max_blob_len
        # record() reads, extends and rewrites ``.have``: two fetches of one blob (a read's ranges and a whole
        # fetch, from worker threads) would otherwise lose each other's bits.
        self._lock = threading.Lock()

    def _path(self, blob_id: bytes, suffix: str) -> Path:
        if len(blob_id) != 32:
            raise ValueError("a blob ID is 32 bytes")
        return self.root / f"{blob_id.hex()}{suffix}"

    # ------------------------------------------------------------------------------------------ the record
    def state(self, blob_id: bytes) -> tuple[int, set[int]] | None:
        """(blob length, verified group indices), or None when nothing is held. A record that does not parse is
        dropped (None)."""
        path = self._path(blob_id, ".have")
        max_groups = bao.group_count(self.max_blob_len)
        try:
            raw = read_bounded(path, _LEN + (max_groups + 7) // 8)
        except NotFound:
            return None
        length = int.from_bytes(raw[:_LEN], "little")
        bits = raw[_LEN:]
        if len(raw) < _LEN or length > self.max_blob_len or len(bits) != (bao.group_count(length) + 7) // 8:
            self.delete(blob_id)
            return None
        return length, {g for g in range(bao.group_count(length)) if bits[g // 8] >> (g % 8) & 1}

    def record(self, blob_id: bytes, length: int, items: Sequence[bao.VerifiedNode | bao.VerifiedGroup]) -> set[int]:
        """Write verified nodes and groups (from a :class:`bao.SliceDecoder` for this blob with
        ``expected_length`` or a verified length), then the record; returns the groups now held."""
        if length > self.max_blob_len:
            raise StoreError(f"blob of {length} bytes exceeds the limit of {self.max_blob_len}")
        with self._lock:
            return self._record(blob_id, length, items)

    def _record(self, blob_id: bytes, length: int, items: Sequence[bao.VerifiedNode | bao.VerifiedGroup]) -> set[int]:
        held = self.state(blob_id)
        have = held[1] if held is not None and held[0] == length else set()
        if held is not None and held[0] != length:  # a record for another length cannot be (the ID fixes it)
            self.delete(blob_id)
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Not O_APPEND: pwrite on an O_APPEND descriptor appends on Linux, whatever the offset.
            data_fd = os.open(self._path(blob_id, ".data"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                node_fd = os.open(self._path(blob_id, ".nodes"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    if os.fstat(data_fd).st_size != length:
                        os.ftruncate(data_fd, length)
                    for item in items:
                        if isinstance(item, bao.VerifiedGroup):
                            os.pwrite(data_fd, item.data, item.offset)
                            have.add(item.offset // bao.GROUP_LEN)
                        else:
                            os.pwrite(node_fd, item.node, item.index * bao.NODE_LEN)
                finally:
                    os.close(node_fd)
            finally:
                os.close(data_fd)
            bits = bytearray((bao.group_count(length) + 7) // 8)
            for g in have:
                bits[g // 8] |= 1 << (g % 8)
            atomic_write(self._path(blob_id, ".have"), length.to_bytes(_LEN, "little") + bytes(bits), 0o600,
                         durable=False)
        except OSError as e:
            raise StoreError(f"cannot write partial blob {blob_id.hex()[:16]}: {e.strerror or e}") from None
        return have

    def complete_data(self, blob_id: bytes) -> tuple[bytes, bytes] | None:
        """(the blob's bytes, its outboard nodes) when every group is held (not verified here: the caller stores
        them through :meth:`BlobFiles.put`, which hashes the bytes and checks the nodes), else None."""
        held = self.state(blob_id)
        if held is None or len(held[1]) != bao.group_count(held[0]):
            return None
        try:
            with open(self._path(blob_id, ".data"), "rb") as f:
                data = f.read(held[0] + 1)
            nodes = _read_sparse(self._path(blob_id, ".nodes"), bao.parent_count(held[0]) * bao.NODE_LEN)
        except OSError as e:
            raise StoreError(f"cannot read partial blob {blob_id.hex()[:16]}: {e.strerror or e}") from None
        return (data, nodes) if len(data) == held[0] else None

    def delete(self, blob_id: bytes) -> None:
        for suffix in (".have", ".data", ".nodes"):
            try:
                os.unlink(self._path(blob_id, suffix))
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StoreError(f"cannot delete partial blob {blob_id.hex()[:16]}: {e.strerror or e}") from None

    def prune(self, max_bytes: int = PARTIAL_BYTES) -> int:
        """Drop whole partial blobs, least recently recorded first (a record without ``.have``, left by a crash,
        before any), until what they take on disk (allocated blocks: the data files are sparse) is at most
        ``max_bytes``; returns how many were dropped. Under the record lock, so that a fetch never writes a
        record over files dropped meanwhile."""
        with self._lock:
            try:
                entries = list(os.scandir(self.root))
            except FileNotFoundError:
                return 0
            except OSError as e:
                raise StoreError(f"cannot list partial blobs: {e.strerror or e}") from None
            blobs: dict[str, list[float]] = {}  # 64 hex -> [mtime of .have (0: none), bytes on disk]
            for entry in entries:
                hex_id, suffix = entry.name[:64], entry.name[64:]
                if len(hex_id) != 64 or suffix not in (".have", ".data", ".nodes"):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                held = blobs.setdefault(hex_id, [0.0, 0])
                held[1] += st.st_blocks * 512
                if suffix == ".have":
                    held[0] = st.st_mtime
            total = sum(int(held[1]) for held in blobs.values())
            dropped = 0
            for hex_id, (_mtime, used) in sorted(blobs.items(), key=lambda kv: kv[1][0]):
                if total <= max_bytes:
                    break
                try:
                    self.delete(bytes.fromhex(hex_id))
                except ValueError:
                    continue  # not a blob ID: not ours to drop
                total -= int(used)
                dropped += 1
            return dropped

    # ------------------------------------------------------------------------------------------ reading
    def missing_groups(self, blob_id: bytes, ranges: Sequence[bao.Range]) -> tuple[int | None, list[int]]:
        """(the blob's length if known, the groups covering ``ranges`` that are not held, in order). Unknown
        length: every group the ranges touch counts as missing. Bytes past a known length need no group."""
        held = self.state(blob_id)
        if held is None:
            return None, sorted({g for offset, size in ranges if size > 0
                                 for g in range(offset // bao.GROUP_LEN, (offset + size - 1) // bao.GROUP_LEN + 1)})
        length, have = held
        return length, [g for g in _groups_within(length, ranges) if g not in have]

    def read_ranges(self, blob_id: bytes, ranges: Sequence[bao.Range]) -> tuple[int, list[bytes]] | None:
        """(the blob's length, the bytes at each ``(offset, size)``, short where the blob ends), as
        :meth:`BlobFiles.read_ranges` gives them for a whole blob file, when every group they touch is held;
        else None. NOT verified again here: every group was verified against the blob ID when it was recorded,
        and the read path authenticates each AES-GCM segment it opens from these bytes (a damaged ``.data`` file
        gives an authentication error there, never wrong bytes)."""
        held = self.state(blob_id)
        if held is None:
            return None
        length, have = held
        if any(g not in have for g in _groups_within(length, ranges)):
            return None
        try:
            with open(self._path(blob_id, ".data"), "rb") as f:
                out = []
                for offset, size in ranges:
                    size = max(0, min(offset + size, length) - offset)
                    out.append(os.pread(f.fileno(), size, offset) if size else b"")
        except FileNotFoundError:
            return None  # dropped meanwhile (completed, or deleted as damaged)
        except OSError as e:
            raise StoreError(f"cannot read partial blob {blob_id.hex()[:16]}: {e.strerror or e}") from None
        return length, out

    # ------------------------------------------------------------------------------------------ serving
    def read_slice(self, blob_id: bytes, ranges: Sequence[bao.Range]) -> bytes:
        """The slice of ``ranges`` (as :meth:`BlobFiles.read_slice`) from the groups held: :class:`NotFound` when a
        group it needs is not held; verified against the blob ID before it is returned (a damaged partial is
        dropped and reported as :class:`IntegrityError`)."""
        held = self.state(blob_id)
        if held is None:
            raise NotFound(f"no part of blob {blob_id.hex()[:16]} is held here")
        length, have = held
        want = bao.wanted(length, ranges)
        groups = bao.groups_of(want)
        if not set(groups) <= have:
            raise NotFound(f"blob {blob_id.hex()[:16]}: {len(set(groups) - have)} of the groups asked are not held")
        try:
            with open(self._path(blob_id, ".data"), "rb") as f:
                pieces = {g * bao.GROUP_LEN: os.pread(f.fileno(), bao.GROUP_LEN, g * bao.GROUP_LEN) for g in groups}
            nodes = _read_sparse(self._path(blob_id, ".nodes"), bao.parent_count(length) * bao.NODE_LEN)
        except OSError as e:
            raise StoreError(f"cannot read partial blob {blob_id.hex()[:16]}: {e.strerror or e}") from None
        out = bao.encode_slice(lambda o, n: pieces[o][:n], nodes, length, want)
        try:
            decoder = bao.SliceDecoder(blob_id, ranges, expected_length=length)
            decoder.feed(out)
            decoder.finish()
        except IntegrityError:
            self.delete(blob_id)
            raise
        return out


def _groups_within(length: int, ranges: Sequence[bao.Range]) -> list[int]:
    """The groups holding the bytes of ``ranges`` that lie inside a blob of ``length`` bytes, in order."""
    groups: set[int] = set()
    for offset, size in ranges:
        end = min(offset + size, length)
        if offset < end:
            groups.update(range(offset // bao.GROUP_LEN, (end - 1) // bao.GROUP_LEN + 1))
    return sorted(groups)


def _read_sparse(path: Path, size: int) -> bytes:
    """A file of ``size`` bytes whose unwritten tail reads as zeros (a sparse file need not reach its size)."""
    with open(path, "rb") as f:
        data = f.read(size)
    return data.ljust(size, b"\0")
