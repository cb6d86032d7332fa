"""Store queries of sync and of the blob cache (peers, LRU eviction, pins): a mixin of
:class:`~anysyncfs.store.db.Store`, split off to keep modules small. Still the one place with SQL, with db.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, select, update

from ..clock import now_us
from . import schema as S

_TOUCH_BLOB = update(S.blobs).where(S.blobs.c.id == bindparam("i")).values(last_access_us=bindparam("t"))


def _batches(ids: Sequence[bytes]) -> Iterator[list[bytes]]:
    for i in range(0, len(ids), IN_BATCH):
        yield list(ids[i : i + IN_BATCH])


@dataclass(frozen=True, slots=True)
class PeerRow:
    space: bytes
    address: str
    device_key: bytes  # pinned device public key
    added_us: int
    last_sync_us: int | None  # last successful sync (None: never)
    last_attempt_us: int | None  # last attempt, successful or not (None: never)
    last_error: str | None  # why the last attempt failed (None after a success)


@dataclass(frozen=True, slots=True)
class SeenPeer:
    """What the sync engine learnt of a peer it reached (table ``peers_seen``)."""

    address: str
    device_key: bytes
    via: str  # "manual", "address record" or "mdns"
    kind: str  # "device" (a member's) or "provider"
    seen_us: int
    last_sync_us: int | None


@dataclass(frozen=True, slots=True)
class BlobRow:
    id: bytes
    size: int  # bytes (ciphertext)
    local: bool  # the file is on this device (location BLOB_LOCAL)
    remote_confirmed: bool  # a provider confirmed storing it
    last_access_us: int


IN_BATCH = 500  # IDs per "IN (…)" query: well below SQLite's limit on bound parameters


class SyncQueries:
    """Needs ``_run`` (and ``transaction``) from the Store it is mixed into."""

    _upsert: Any  # provided by Store: INSERT with ON CONFLICT for its dialect

    def _run(self, stmt: Any, params: Any = None) -> Any:  # provided by Store
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ blob cache
    def blob_rows(self, blob_ids: Sequence[bytes]) -> dict[bytes, BlobRow]:
        """The index rows of those ``blob_ids`` that are indexed."""
        b = S.blobs.c
        out: dict[bytes, BlobRow] = {}
        for part in _batches(blob_ids):
            q = select(b.id, b.size, b.location, b.remote_confirmed, b.last_access_us).where(b.id.in_(part))
            out.update({r[0]: BlobRow(r[0], r[1], r[2] == S.BLOB_LOCAL, bool(r[3]), r[4])
                        for r in self._run(q).fetchall()})
        return out

    def local_blob_bytes(self) -> int:
        """Bytes of every indexed blob whose file is on this device (all spaces: they share the blob directory)."""
        b = S.blobs.c
        q = select(func.coalesce(func.sum(b.size), 0)).where(b.location == S.BLOB_LOCAL)
        return int(self._run(q).scalar_one())

    def eviction_candidates(self, limit: int, after: tuple[int, bytes] | None = None) -> list[BlobRow]:
        """Up to ``limit`` local blobs a provider has confirmed and no space pins, least recently used first;
        ``after`` = (last_access_us, id) of the last row of the previous page."""
        b, pb = S.blobs.c, S.pinned_blobs.c
        q = select(b.id, b.size, b.last_access_us).where(
            b.location == S.BLOB_LOCAL, b.remote_confirmed == 1, b.pinned == 0,
            b.id.not_in(select(pb.blob).scalar_subquery()),
        )
        if after is not None:
            q = q.where((b.last_access_us > after[0]) | ((b.last_access_us == after[0]) & (b.id > after[1])))
        rows = self._run(q.order_by(b.last_access_us, b.id).limit(limit)).fetchall()
        return [BlobRow(r[0], r[1], True, True, r[2]) for r in rows]

    def mark_evicted(self, blob_ids: Sequence[bytes]) -> None:
        """The cache is deleting these blob files (the rows stay: size, confirmation and access time)."""
        b = S.blobs.c
        with self.transaction():
            for part in _batches(blob_ids):
                self._run(update(S.blobs).where(b.id.in_(part)).values(location=S.BLOB_EVICTED))

    def note_blob_access(self, accessed: dict[bytes, int]) -> None:
        """Record reads: blob ID -> time (µs), in one transaction (the cache batches them in memory)."""
        if accessed:
            self._run(_TOUCH_BLOB, [{"i": blob_id, "t": t} for blob_id, t in accessed.items()])

    def pins(self, space_id: bytes) -> list[bytes]:
        """Node IDs pinned in a space, in ID order."""
        p = S.pins.c
        return [r[0] for r in self._run(select(p.node).where(p.space == space_id).order_by(p.node)).fetchall()]

    def add_pin(self, space_id: bytes, node_id: bytes) -> bool:
        """Pin a node; False if it was pinned already."""
        p = S.pins.c
        with self.transaction():
            if self._run(select(p.node).where(p.space == space_id, p.node == node_id)).first() is not None:
                return False
            self._run(insert(S.pins).values(space=space_id, node=node_id, pinned_us=now_us()))
        return True

    def remove_pins(self, space_id: bytes, node_ids: Sequence[bytes]) -> None:
        p = S.pins.c
        with self.transaction():
            for part in _batches(node_ids):
                self._run(delete(S.pins).where(p.space == space_id, p.node.in_(part)))

    def pinned_blob_ids(self, space_id: bytes) -> set[bytes]:
        pb = S.pinned_blobs.c
        return {r[0] for r in self._run(select(pb.blob).where(pb.space == space_id)).fetchall()}

    def update_pinned_blobs(self, space_id: bytes, added: Sequence[bytes], removed: Sequence[bytes]) -> None:
        """Change the blobs a space's pins keep, in one transaction."""
        pb = S.pinned_blobs.c
        with self.transaction():
            for part in _batches(removed):
                self._run(delete(S.pinned_blobs).where(pb.space == space_id, pb.blob.in_(part)))
            if added:
                self._run(self._upsert(S.pinned_blobs).on_conflict_do_nothing(),
                          [{"space": space_id, "blob": b} for b in added])

    # ------------------------------------------------------------------------------------------ peers
    def add_peer(self, space_id: bytes, address: str, device_key: bytes) -> None:
        """Remember a peer of a space. Idempotent; adding a known address again replaces its pinned key."""
        if len(device_key) != 32:
            raise ValueError("a device key is 32 bytes")
        stmt = self._upsert(S.peers).values(space=space_id, address=address, device_key=device_key,
                                             added_us=now_us())
        self._run(stmt.on_conflict_do_update(index_elements=[S.peers.c.space, S.peers.c.address],
                                             set_={"device_key": stmt.excluded.device_key}))

    def remove_peer(self, space_id: bytes, address: str) -> bool:
        """Forget a peer; False if it was not known."""
        p = S.peers.c
        with self.transaction():
            row = self._run(select(p.device_key).where(p.space == space_id, p.address == address)).first()
            if row is None:
                return False
            self._run(delete(S.peers).where(p.space == space_id, p.address == address))
            self._run(delete(S.peers_seen).where(S.peers_seen.c.space == space_id,
                                                 S.peers_seen.c.address == address))
            if self._run(select(p.address).where(p.space == space_id, p.device_key == row[0])).first() is None:
                self.forget_confirmations_of(space_id, row[0])  # type: ignore[attr-defined]  # (db_uploads.py)
        return True

    def peers(self, space_id: bytes) -> list[PeerRow]:
        """The peers of a space, in the order they were added."""
        p = S.peers.c
        return self._peer_rows(select(S.peers).where(p.space == space_id).order_by(p.added_us, p.address))

    def all_peers(self) -> list[PeerRow]:
        p = S.peers.c
        return self._peer_rows(select(S.peers).order_by(p.space, p.added_us, p.address))

    def _peer_rows(self, q: Any) -> list[PeerRow]:
        return [
            PeerRow(r.space, r.address, r.device_key, r.added_us, r.last_sync_us, r.last_attempt_us, r.last_error)
            for r in self._run(q).fetchall()
        ]

    def note_peer_sync(self, space_id: bytes, address: str, ok: bool, error: str | None = None,
                       synced_us: int | None = None) -> None:
        """Record an attempt to sync with a peer: on success the sync time (and no error), else the error.
        ``synced_us``: when the successful round started (default now); every change stored before it reached
        the peer (changes stored later count as its backlog: :meth:`change_backlog`)."""
        p = S.peers.c
        now = now_us()
        values: dict[str, Any] = {"last_attempt_us": now}
        if ok:
            values.update(last_sync_us=synced_us if synced_us is not None else now, last_error=None)
        else:
            # One bounded line: the text may come from a peer.
            values["last_error"] = ((error or "").strip().splitlines() or ["failed"])[0][:500]
        self._run(update(S.peers).where(p.space == space_id, p.address == address).values(**values))
        if ok:  # a discovered peer has no peers row: its last sync is kept beside what it was judged to be
            v = S.peers_seen.c
            self._run(update(S.peers_seen).where(v.space == space_id, v.address == address)
                      .values(last_sync_us=values["last_sync_us"]))

    def note_peer_seen(self, space_id: bytes, address: str, device_key: bytes, via: str, kind: str) -> None:
        """Record what a peer reached at ``address`` was judged to be (``kind``) and how it was found (``via``),
        keeping at most :data:`~.schema.MAX_PEERS_SEEN` rows of found peers per space (the least recently judged
        go; a recorded peer's row goes with its peers row)."""
        if via not in S.PEER_VIA or kind not in S.PEER_KINDS or len(device_key) != 32:
            raise ValueError(f"peer seen: bad via {via!r}, kind {kind!r} or device key")
        v = S.peers_seen.c
        now = now_us()
        with self.transaction():  # type: ignore[attr-defined]
            stmt = self._upsert(S.peers_seen).values(space=space_id, address=address, device_key=device_key,
                                                     via=via, kind=kind, seen_us=now)
            self._run(stmt.on_conflict_do_update(
                index_elements=[v.space, v.address],
                set_={"device_key": stmt.excluded.device_key, "via": stmt.excluded.via, "kind": stmt.excluded.kind,
                      "seen_us": stmt.excluded.seen_us}))
            # Recorded peers are bounded by the peers table (remove_peer deletes their row); found ones by this.
            found = and_(v.space == space_id, v.via != "manual")
            kept = select(v.address).where(found).order_by(v.seen_us.desc(), v.address) \
                .limit(S.MAX_PEERS_SEEN).scalar_subquery()
            self._run(delete(S.peers_seen).where(found, v.address.not_in(kept)))
            if kind == "device":  # a recorded device no longer holds the upload queue back (db_uploads.py)
                self.settle_uploads(space_id)  # type: ignore[attr-defined]

    def peers_seen(self, space_id: bytes) -> list[SeenPeer]:
        """What the engine learnt of the peers of a space it reached, most recently judged first."""
        v = S.peers_seen.c
        rows = self._run(select(S.peers_seen).where(v.space == space_id).order_by(v.seen_us.desc(), v.address))
        return [SeenPeer(r.address, r.device_key, r.via, r.kind, r.seen_us, r.last_sync_us) for r in rows.fetchall()]
