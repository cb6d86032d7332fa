"""Store queries of a provider's blob collection (which blobs accepted changes reference, which are collectable):
a mixin of :class:`~anysyncfs.store.db.Store`. Still the one place with SQL, with db.py and db_sync.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, exists, select

from . import schema as S
from .db_sync import _batches


class GcQueries:
    """Needs ``_run`` and ``transaction`` from the Store it is mixed into."""

    _upsert: Any  # provided by Store: INSERT with ON CONFLICT for its dialect

    def _run(self, stmt: Any, params: Any = None) -> Any:  # provided by Store
        raise NotImplementedError

    def add_change_blobs(self, space_id: bytes, change_id: bytes, blob_ids: Sequence[bytes]) -> None:
        """Record the blobs an accepted change's header lists (idempotent; call in the storing transaction)."""
        if blob_ids:
            self._run(self._upsert(S.change_blobs).on_conflict_do_nothing(),
                      [{"space": space_id, "blob": b, "change": change_id} for b in blob_ids])

    def unreferenced_space_blobs(self, space_id: bytes, linked_before_us: int) -> list[tuple[bytes, int]]:
        """(blob, size) of the blobs linked to a space before ``linked_before_us`` that no change of the space
        with status accepted lists, in ID order."""
        sb, cb, c = S.space_blobs.c, S.change_blobs.c, S.changes.c
        referenced = exists().where(
            cb.space == space_id, cb.blob == sb.blob, c.id == cb.change, c.status == S.CHANGE_ACCEPTED
        )
        q = (select(sb.blob, sb.size).where(sb.space == space_id, sb.added_us < linked_before_us, ~referenced)
             .order_by(sb.blob))
        return [(r[0], int(r[1])) for r in self._run(q).fetchall()]

    def unlink_space_blobs(self, space_id: bytes, blob_ids: Sequence[bytes]) -> None:
        """The space no longer holds these blobs (its quota no longer counts them)."""
        sb = S.space_blobs.c
        with self.transaction():  # type: ignore[attr-defined]
            for part in _batches(blob_ids):
                self._run(delete(S.space_blobs).where(sb.space == space_id, sb.blob.in_(part)))

    def linked_blob_ids(self, blob_ids: Sequence[bytes]) -> set[bytes]:
        """Those of ``blob_ids`` that some space still links."""
        sb = S.space_blobs.c
        out: set[bytes] = set()
        for part in _batches(blob_ids):
            out.update(r[0] for r in self._run(select(sb.blob).where(sb.blob.in_(part)).distinct()).fetchall())
        return out

    def forget_blobs(self, blob_ids: Sequence[bytes]) -> None:
        """Drop the index rows of blobs whose files were deleted."""
        b = S.blobs.c
        with self.transaction():  # type: ignore[attr-defined]
            for part in _batches(blob_ids):
                self._run(delete(S.blobs).where(b.id.in_(part)))
