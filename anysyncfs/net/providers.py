"""Many providers per space, on the device: every blob reaches every provider (docs/protocol.md 70.10).

Three parts of a sync round with one provider (:meth:`~anysyncfs.net.sync.SpaceSync.sync_with`) live here:

* :func:`upload_queued` — the blobs made here that *this* provider has not confirmed (``upload_queue`` minus its
  ``upload_confirmations``). It first asks which of them the provider holds already (``HasBlobs``: another device
  or an interrupted round may have put them there) and sends only the others. :func:`confirm` records them for
  this provider once the round's changes went out too; a blob leaves the queue only when every provider recorded
  for the space has it (``store/db_uploads.py``).
* :func:`backfill` — a provider added later, or one that lost blobs, is owed the blobs made before it was
  recorded. After the changes, the device reconciles by ranges (``Reconcile`` over ``SetKind.BLOBS``, the same
  range-based set reconciliation as for change IDs, ``core/reconcile.py``) the blobs every accepted change of
  the space lists in its header (:class:`ReferencedBlobs`) against the blobs the provider holds for the space,
  and uploads what it lacks. A blob not on this device (evicted, or never fetched) is relayed: fetched from
  another connected provider, verified, and sent on.
* :func:`backlog` — what a provider is behind, for ``anysyncfs status``: accepted changes stored here after its
  last successful round started, and blobs queued here it has not confirmed.

Only members who may write upload blobs (a node refuses ``PutBlob`` from readers), so readers skip both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ..core import acl as acl_mod
from ..core import ids
from ..core.change import parse_change
from ..core.reconcile import IdSet
from ..errors import IntegrityError, NotFound, ProtocolError
from ..protocol import messages as m
from ..replica import Replica
from ..store.db import Store
from .connection import Connection

if TYPE_CHECKING:
    from .sync import PeerStatus, Progress, SpaceSync

log = logging.getLogger(__name__)

UPLOAD_BATCH = 64  # queued blobs listed (and asked about with one HasBlobs) per step
SCAN_BATCH = 256  # changes read per query when listing the blobs they reference
RELAY_TIMEOUT_S = 30.0  # per blob fetched from another provider to back-fill this one


class ReferencedBlobs:
    """The blob IDs the accepted changes of a space list in their headers (``blob_refs``): what every provider
    of the space should hold. Kept in memory and brought up to date incrementally (only changes not seen yet are
    read, and verified again like anything read back from disk, outside the runner's lock); rebuilt when a change
    left the accepted set (an ACL change can reject changes accepted before)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._seen: set[bytes] = set()
        self._blobs: set[bytes] = set()
        self._ids: IdSet | None = None
        self._lock = trio.Lock()  # one refresh at a time (each provider's round asks)

    async def refresh(self, sync: SpaceSync) -> IdSet:
        """The current set, as an :class:`IdSet` for reconciliation."""
        async with self._lock:
            new = await sync.run(self._unseen)
            for i in range(0, len(new), SCAN_BATCH):
                raws = await sync.run(self.replica.store.change_raws_by_ids, self.replica.space_id,
                                      new[i:i + SCAN_BATCH])
                await trio.to_thread.run_sync(self._add, raws)
            if self._ids is None:
                self._ids = await trio.to_thread.run_sync(IdSet, self._blobs)
            return self._ids

    def _unseen(self) -> list[bytes]:
        accepted = self.replica.change_ids()
        if len(self._seen) > len(accepted) or not self._seen.issubset(accepted):
            self._seen, self._blobs, self._ids = set(), set(), None
        return [c for c in accepted if c not in self._seen]

    def _add(self, raws: dict[bytes, bytes]) -> None:
        for change_id, raw in raws.items():
            try:
                self._blobs.update(parse_change(raw, change_id).header.blob_refs)
            except IntegrityError as e:  # damaged on this disk (not the peer's doing): fsck reports it
                log.warning("stored change %s does not verify (%s); its blobs are not back-filled (run anysyncfs "
                            "fsck)", ids.change_text(change_id), e)
            self._seen.add(change_id)
            self._ids = None


@dataclass
class Uploaded:
    """What one round put on one provider."""

    held: list[bytes]  # queued blobs the provider holds now (sent, or found there): confirmed after the changes
    sent: int = 0  # blobs actually sent (queued and back-filled)
    sent_bytes: int = 0


def may_upload(replica: Replica) -> bool:
    role = replica.role
    return role is not None and role >= acl_mod.Role.WRITER


async def _held_by(conn: Connection, space_id: bytes, blob_ids: list[bytes]) -> set[bytes]:
    reply = await conn.request(m.HasBlobs(space_id, blob_ids))
    if not isinstance(reply, m.Bits):
        raise ProtocolError(f"expected Bits, got {type(reply).__name__}")
    return {b for b, held in zip(blob_ids, m.flags_of(bytes(reply.bits), len(blob_ids))) if held}


async def _put(sync: SpaceSync, conn: Connection, blob_id: bytes, out: Uploaded) -> bool:
    """Send one local blob; False when its file is not on this device."""
    try:
        data = await sync.run(sync.replica.get_blob, blob_id)
        # Its outboard, checked against the ID (rebuilt if missing): the provider then need not compute it.
        _, nodes = await trio.to_thread.run_sync(sync.replica.blobs.outboard, blob_id)
    except NotFound:
        return False
    await conn.request(m.PutBlob(sync.space_id, blob_id, data, nodes))
    out.sent += 1
    out.sent_bytes += len(data)
    return True


async def upload_queued(sync: SpaceSync, conn: Connection, progress: Progress | None = None) -> Uploaded:
    """Send the queued blobs this provider has not confirmed (before the round's changes: see the module doc)."""
    from .sync import TRANSFERS_IN_FLIGHT, for_each_limited

    assert conn.peer is not None
    provider = conn.peer.peer_device
    store: Store = sync.replica.store
    out = Uploaded([])
    gone: list[bytes] = []
    if not may_upload(sync.replica):
        return out
    while True:
        pending = await sync.run(store.pending_uploads_for, sync.space_id, provider, UPLOAD_BATCH,
                                 len(out.held) + len(gone))
        if not pending:
            break
        held = await _held_by(conn, sync.space_id, pending)

        async def upload(blob_id: bytes) -> None:
            if await _put(sync, conn, blob_id, out):
                out.held.append(blob_id)
            else:
                gone.append(blob_id)  # gone (fsck, eviction): nothing to upload; a back-fill relays it if needed

        out.held.extend(b for b in pending if b in held)
        # Several in flight: reading, hashing and storing on both sides overlap with the transfer.
        await for_each_limited([b for b in pending if b not in held], upload, TRANSFERS_IN_FLIGHT)
        if progress:
            left, _size = await sync.run(store.upload_backlog, sync.space_id, provider)  # this round's too
            progress("upload", len(out.held), left - len(gone))
    if gone:
        await sync.run(store.mark_uploaded, sync.space_id, gone)
    return out


async def confirm(sync: SpaceSync, conn: Connection, held: list[bytes]) -> None:
    """The round that put ``held`` on the provider also sent it our changes: record it for this provider."""
    assert conn.peer is not None
    if held:
        await sync.run(sync.replica.store.confirm_uploads, sync.space_id, conn.peer.peer_device, held)
    sync.pending_uploads = await sync.run(sync.replica.store.count_pending_uploads, sync.space_id)


async def backfill(sync: SpaceSync, conn: Connection, st: PeerStatus | None, out: Uploaded) -> None:
    """Upload every blob the space's changes reference that the provider lacks (after the round's changes, so
    the provider never counts them as unreferenced)."""
    from .sync import TRANSFERS_IN_FLIGHT, for_each_limited

    if not may_upload(sync.replica):
        return
    referenced = await sync.referenced.refresh(sync)
    lacking, _extra, _rounds = await sync.reconcile(conn, m.SetKind.BLOBS, referenced)
    if not lacking:
        return
    todo = sorted(lacking)
    sizes = await sync.run(sync.replica.store.blob_rows, todo)
    if st is not None:
        st.blobs_to_backfill = len(todo)
        st.bytes_to_backfill = sum(r.size for r in sizes.values())
    log.info("%s: back-filling %d blob(s) it lacks", conn.label, len(todo))
    unavailable: list[bytes] = []

    async def one(blob_id: bytes) -> None:
        if not await _put(sync, conn, blob_id, out):
            if not await _relay(sync, conn, blob_id) or not await _put(sync, conn, blob_id, out):
                unavailable.append(blob_id)
        if st is not None:
            st.blobs_to_backfill -= 1
            st.bytes_to_backfill = max(0, st.bytes_to_backfill - (sizes[blob_id].size if blob_id in sizes else 0))

    await for_each_limited(todo, one, TRANSFERS_IN_FLIGHT)
    if unavailable:
        log.warning("%s lacks %d blob(s) of the space that neither this device nor another connected provider "
                    "has now; retried next round", conn.label, len(unavailable))


async def _relay(sync: SpaceSync, target: Connection, blob_id: bytes) -> bool:
    """Fetch a blob this device lacks from another connected provider (verified and stored like any fetch)."""
    if not any(key != target.label and not c.closed.is_set() for key, c in sync._conns.items()):
        return False
    try:
        await sync.fetch_blob(blob_id, timeout=RELAY_TIMEOUT_S)
    except NotFound:
        return False
    return True


@dataclass(frozen=True)
class Backlog:
    """What one provider of a space may lack (upper bounds: other devices may have sent it some)."""

    changes: int  # accepted changes stored here after its last successful round started (all: never synced)
    change_bytes: int
    blobs: int  # blobs queued here that it has not confirmed
    blob_bytes: int

    @property
    def bytes(self) -> int:
        return self.change_bytes + self.blob_bytes


def backlog(store: Store, space_id: bytes, provider: bytes, last_sync_us: int | None) -> Backlog:
    """(blocking) :class:`Backlog` of one provider (its device key; ``last_sync_us`` from its peers row)."""
    changes, change_bytes = store.change_backlog(space_id, last_sync_us)
    blobs, blob_bytes = store.upload_backlog(space_id, provider)
    return Backlog(changes, change_bytes, blobs, blob_bytes)
