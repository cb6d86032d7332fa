"""A provider collects the blobs nothing references.

A provider holds no keys, but every change lists in its cleartext header the blobs its payload depends on
(``ChangeHeader.blob_refs``, see :mod:`anysyncfs.core.blob_refs`); the :class:`~.ledger.Ledger` records those lists
of the changes it accepts (``change_blobs``). A blob linked to a space (uploaded for it) that no change of the
space with status accepted lists, and that was linked longer than the grace period ago, is garbage: junk a member
uploaded, or the blobs of a commit that never came (a device that crashed or was cut off between uploading and
committing). Devices upload blobs just before the changes that use them, so the grace period (a day by default)
only has to cover the time between the two.

Collection unlinks such blobs from the space (its quota no longer counts them), then deletes each file no space
links any more. History is never pruned, so a blob that an accepted change lists is never collected; a change
that a later ACL reorganisation rejects stops counting. Blob files that no space links at all (a crash between
writing a file and linking it) are deleted once older than the grace period.

Every function here blocks (the database, the blob store); the node runs them one space at a time under its store lock,
so an upload never interleaves with a collection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..clock import now_us
from ..core import ids
from ..errors import NotFound
from ..store.blobstore import BlobStore
from ..store.db import Store

log = logging.getLogger(__name__)

DEFAULT_GRACE_US = 24 * 3600 * 1_000_000  # a blob may wait this long for the change that references it
SWEEP_BATCH = 500  # orphan files checked and deleted per store call


@dataclass(frozen=True, slots=True)
class Collected:
    """What one collection removed."""

    unlinked: int = 0  # blob links removed from spaces
    unlinked_bytes: int = 0  # bytes those links counted against the spaces' quotas
    files_deleted: int = 0  # blob files deleted (no space linked them any more)
    file_bytes: int = 0  # bytes those files took on disk

    def __add__(self, other: Collected) -> Collected:
        return Collected(self.unlinked + other.unlinked, self.unlinked_bytes + other.unlinked_bytes,
                         self.files_deleted + other.files_deleted, self.file_bytes + other.file_bytes)


def collect_space(store: Store, blobs: BlobStore, space_id: bytes, linked_before_us: int) -> Collected:
    """Unlink from a space the blobs linked before ``linked_before_us`` that no accepted change of it lists, and
    delete the files no space links any more."""
    victims = store.unreferenced_space_blobs(space_id, linked_before_us)
    if not victims:
        return Collected()
    blob_ids = [b for b, _size in victims]
    store.unlink_space_blobs(space_id, blob_ids)  # first: a crash now leaves files the orphan sweep deletes
    deleted, file_bytes = delete_unlinked_files(store, blobs, blob_ids)
    log.info("space %s: collected %d unreferenced blob(s), %d bytes", ids.space_text(space_id)[:20], len(victims),
             sum(size for _b, size in victims))
    return Collected(len(victims), sum(size for _b, size in victims), deleted, file_bytes)


def delete_unlinked_files(store: Store, blobs: BlobStore, candidates: Sequence[bytes]) -> tuple[int, int]:
    """Delete the files of those ``candidates`` no space links (and their index rows); (files, bytes). Under the
    provider write lock: another node process on the same database cannot link one of them meanwhile."""
    with store.transaction():
        store.lock_writes()
        return _delete_unlinked_files(store, blobs, candidates)


def _delete_unlinked_files(store: Store, blobs: BlobStore, candidates: Sequence[bytes]) -> tuple[int, int]:
    linked = store.linked_blob_ids(candidates)
    gone: list[bytes] = []
    total = 0
    for blob_id in candidates:
        if blob_id in linked:
            continue
        try:
            size = blobs.size_of(blob_id)
        except NotFound:
            size = 0
        if blobs.delete(blob_id):
            total += size
        gone.append(blob_id)
    store.forget_blobs(gone)
    return len(gone), total


def old_files(blobs: BlobStore, modified_before_us: int) -> list[bytes]:
    """IDs of the blobs last written before ``modified_before_us`` (no store access: the node lists them
    without holding its store lock; :func:`delete_unlinked_files` then decides under the lock)."""
    return blobs.ids_modified_before(modified_before_us)


def sweep_orphan_files(store: Store, blobs: BlobStore, modified_before_us: int) -> Collected:
    """Delete blob files no space links that were last written before ``modified_before_us``."""
    old = old_files(blobs, modified_before_us)
    deleted = total = 0
    for start in range(0, len(old), SWEEP_BATCH):
        n, size = delete_unlinked_files(store, blobs, old[start:start + SWEEP_BATCH])
        deleted += n
        total += size
    return Collected(files_deleted=deleted, file_bytes=total)


__all__ = ["DEFAULT_GRACE_US", "Collected", "collect_space", "delete_unlinked_files", "now_us", "old_files",
           "sweep_orphan_files"]
