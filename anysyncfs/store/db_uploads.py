"""Store queries of uploads to many providers per space (docs/protocol.md 70.10): a mixin of
:class:`~anysyncfs.store.db.Store`. Still the one place with SQL, with db.py and its other mixins.

A blob made on this device is queued once (``upload_queue``). Each provider of the space that confirms storing it
gets an ``upload_confirmations`` row; the blob leaves the queue (and becomes evictable: ``blobs.remote_confirmed``)
only once every provider recorded for the space (``peers.device_key``) confirmed it. A provider added later is
therefore owed every blob still queued, and a provider removed no longer holds the queue back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import schema as S
from .db_sync import _batches


class UploadQueries:
    """Needs ``_run`` and ``transaction`` from the Store it is mixed into."""

    def _run(self, stmt: Any, params: Any = None) -> Any:  # provided by Store
        raise NotImplementedError

    def _not_confirmed_by(self, space_id: bytes, provider: bytes) -> Any:
        u, c = S.upload_queue.c, S.upload_confirmations.c
        return ~exists().where(c.space == space_id, c.provider == provider, c.blob == u.blob)

    def pending_uploads_for(self, space_id: bytes, provider: bytes, limit: int, offset: int = 0) -> list[bytes]:
        """Up to ``limit`` queued blobs of a space that ``provider`` (a device key) has not confirmed, oldest first,
        after the first ``offset`` (a round pages through them while leaving them untouched)."""
        u = S.upload_queue.c
        q = (select(u.blob).where(u.space == space_id, self._not_confirmed_by(space_id, provider))
             .order_by(u.queued_us, u.blob).limit(limit).offset(offset))
        return [r[0] for r in self._run(q).fetchall()]

    def upload_backlog(self, space_id: bytes, provider: bytes) -> tuple[int, int]:
        """(blobs, bytes) queued for a space that ``provider`` has not confirmed (a blob not indexed counts 0 B)."""
        u, b = S.upload_queue.c, S.blobs.c
        q = (select(func.count(), func.coalesce(func.sum(b.size), 0))
             .select_from(S.upload_queue.outerjoin(S.blobs, b.id == u.blob))
             .where(u.space == space_id, self._not_confirmed_by(space_id, provider)))
        n, size = self._run(q).first()
        return int(n), int(size)

    def change_backlog(self, space_id: bytes, since_us: int | None) -> tuple[int, int]:
        """(changes, bytes) of the accepted changes this device stored after ``since_us`` (None: all of them):
        what a provider last brought level at ``since_us`` may lack (an upper bound: another device may have
        sent it some of them)."""
        c = S.changes.c
        q = select(func.count(), func.coalesce(func.sum(func.length(c.raw)), 0)).where(
            c.space == space_id, c.status == S.CHANGE_ACCEPTED)
        if since_us is not None:
            q = q.where(c.received_us >= since_us)
        n, size = self._run(q).first()
        return int(n), int(size)

    def confirm_uploads(self, space_id: bytes, provider: bytes, blob_ids: Sequence[bytes]) -> list[bytes]:
        """``provider`` stores these queued blobs (and the changes that reference them): record it, then take off
        the queue every blob all providers of the space confirmed. Returns those blobs."""
        u = S.upload_queue.c
        with self.transaction():  # type: ignore[attr-defined]
            for part in _batches(blob_ids):
                queued = [r[0] for r in self._run(select(u.blob).where(u.space == space_id, u.blob.in_(part)))]
                if queued:
                    self._run(sqlite_insert(S.upload_confirmations).on_conflict_do_nothing(),
                              [{"space": space_id, "provider": provider, "blob": b} for b in queued])
            return self.settle_uploads(space_id)

    def settle_uploads(self, space_id: bytes) -> list[bytes]:
        """Unqueue (and mark evictable) the queued blobs of a space that at least one provider confirmed and no
        provider recorded for the space lacks (a recorded peer the engine judged a member's device is none).
        Returns them."""
        u, c, p, b = S.upload_queue.c, S.upload_confirmations.c, S.peers.c, S.blobs.c
        someone = exists().where(c.space == space_id, c.blob == u.blob)
        # (correlated two levels up: SQLAlchemy's automatic correlation only reaches the enclosing query)
        confirmed_by_peer = exists().where(
            and_(c.space == space_id, c.provider == p.device_key, c.blob == u.blob)).correlate_except(
            S.upload_confirmations)
        # A device recorded with space add-peer is no provider (the engine judged it a member's, peers_seen): it is
        # never asked to store uploads, so its missing confirmation must not keep blobs queued for ever.
        v = S.peers_seen.c
        judged_device = exists().where(
            and_(v.space == space_id, v.address == p.address, v.kind == "device")).correlate_except(S.peers_seen)
        lacking = exists().where(p.space == space_id, ~confirmed_by_peer, ~judged_device)
        with self.transaction():  # type: ignore[attr-defined]
            done = [r[0] for r in self._run(select(u.blob).where(u.space == space_id, someone, ~lacking)).fetchall()]
            for part in _batches(done):
                self._run(delete(S.upload_queue).where(u.space == space_id, u.blob.in_(part)))
                self._run(delete(S.upload_confirmations).where(c.space == space_id, c.blob.in_(part)))
                self._run(update(S.blobs).where(b.id.in_(part)).values(remote_confirmed=1))
        return done

    def forget_confirmations_of(self, space_id: bytes, provider: bytes) -> None:
        """A provider is no longer recorded for the space: drop its confirmations, then settle the queue (the
        providers left may hold everything)."""
        c = S.upload_confirmations.c
        with self.transaction():  # type: ignore[attr-defined]
            self._run(delete(S.upload_confirmations).where(c.space == space_id, c.provider == provider))
            if self._run(select(S.peers.c.address).where(S.peers.c.space == space_id)).first() is not None:
                self.settle_uploads(space_id)
