"""``anysyncfs node``: a provider that stores and serves the ciphertext of many spaces for their members.

A node holds no space keys. It verifies everything it accepts — change signatures and IDs, the ACL rules, blob
hashes — through :class:`~anysyncfs.replica.ledger.Ledger`, answers only members of a space, enforces quotas
(per space, per owner account, spaces per account, in total: :mod:`anysyncfs.replica.quota`) and connection limits
(:mod:`anysyncfs.net.limits`), and pushes head announcements to every connection subscribed to a space when new
changes arrive. Beside :meth:`Node.serve`, :meth:`Node.collect_periodically` collects the blobs no accepted change
references (:mod:`~anysyncfs.replica.blob_gc`).

Data directory layout::

    <data>/node.identity   the node's own keys (transport identity only; no space keys), mode 0600
    <data>/node.db         SQLite store (same schema as a device's store.db; tree tables unused)
    <data>/blobs/          content-addressed blob files

With ``db`` a PostgreSQL URL and ``blobs`` an S3 location (:mod:`anysyncfs.store.blobstore`), the data directory
holds only the identity, and several node processes may serve the same database and bucket at once: each write
takes the database's write lock and bumps the space's generation (:class:`Ledger`), quotas are counted in the
database (:mod:`anysyncfs.replica.shared_quota`), and :meth:`Node.follow_other_processes` relays the other
processes' writes to this process's subscribers (PostgreSQL LISTEN/NOTIFY, :mod:`anysyncfs.store.pg_listen`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from ..core import acl as acl_mod
from ..core import bao, crypto, ids, keys, space
from ..core.address import PeerAddress
from ..core.blob import MAX_BLOB_LEN
from ..core.reconcile import IdSet, Reconciler
from ..errors import DecodeError, IntegrityError, KeyringCorrupt, NotFound, ProtocolError, StoreError
from ..protocol import messages as m
from ..replica import blob_gc, heads_board
from ..replica.address_board import AddressBoard
from ..replica.ledger import ForkRefused, IngestStatus, Ledger, QuotaExceeded
from ..replica.quota import QuotaPolicy
from ..replica.shared_quota import StoredQuotaBook, backfill_space_state
from ..replica.vault_board import VaultPolicy
from ..store.blobfiles import BlobFiles
from ..store.blobstore import BlobStore
from ..store.db import Store
from ..store.pg_listen import SpaceChangeListener
from ..store.files import atomic_write, read_bounded
from .connection import Connection, ServiceError
from .endpoint import Endpoint, serve_tcp
from .limits import ConnectionLimits
from .runner import Runner
from .tls import make_tls_identity
from . import vault_node

log = logging.getLogger(__name__)

IDENTITY_FILE = "node.identity"
IDENTITY_VERSION = 1
DEFAULT_QUOTA = 10 << 30  # bytes of changes, ACL records and blobs per space
DEFAULT_ACCOUNT_QUOTA = 10 << 30  # the same, over all the spaces one account owns
DEFAULT_TOTAL_QUOTA = 100 << 30  # the same, over every space held (or less: see Node._total_quota)
DISK_SHARE = 0.9  # of the room the node has on its disk (free + what it stores), the default total may use
DEFAULT_SPACES_PER_ACCOUNT = 100
DEFAULT_GC_INTERVAL = 3600.0  # seconds between two collections of unreferenced blobs while serving


class NodeIdentityFile(m._Msg, frozen=True):
    """``node.identity``: msgpack array [version, account seed, device seed, device certificate, name]."""

    version: int  # IDENTITY_VERSION
    account_seed: bytes  # 32-byte Ed25519 seed of the node's own account (signs only its device certificate)
    device_seed: bytes  # 32-byte Ed25519 seed of the node's device key (its transport identity)
    device_cert: bytes  # account -> device certificate
    name: str  # device name in the certificate


def load_or_create_identity(data: Path, name: str = "anysyncfs node") -> keys.Identity:
    """The node's identity from ``<data>/node.identity``, created on first use. Node processes that share a
    database and bucket share the file too (one node, one address key); two starting at once on an empty data
    directory create it once (under a lock file), never two different identities."""
    path = data / IDENTITY_FILE
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(data / (IDENTITY_FILE + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if not path.exists():
                return _create_identity(data, name)
        finally:
            os.close(fd)
    if path.exists():
        raw = read_bounded(path, 4096)
        try:
            f = m.decode(raw, NodeIdentityFile)
            if f.version != IDENTITY_VERSION:
                raise DecodeError(f"version {f.version}")
            return keys.Identity(crypto.SigningKey(f.account_seed), crypto.SigningKey(f.device_seed), f.device_cert,
                                 f.name)
        except (ProtocolError, DecodeError, ValueError) as e:
            raise KeyringCorrupt(f"node identity {path} is damaged: {e}") from None
    raise KeyringCorrupt(f"node identity {path} vanished while it was read")


def _create_identity(data: Path, name: str) -> keys.Identity:
    path = data / IDENTITY_FILE
    account = crypto.SigningKey.generate()
    device = crypto.SigningKey.generate()
    cert = keys.issue_device_cert(account, device.public, name, time.time_ns() // 1000)
    atomic_write(path, m.encode(NodeIdentityFile(IDENTITY_VERSION, account.seed, device.seed, cert, name)), mode=0o600)
    return keys.Identity(account, device, cert, name)


@dataclass
class _Sets:
    """A cached IdSet of one space's change, ACL or blob IDs (rebuilt when the space's generation moves)."""

    generation: tuple[int, int]  # (this process's count of writes to the space, the space's generation)
    ids: IdSet


class Node:
    def __init__(self, data: Path, *, db: str | None = None, blobs: BlobStore | None = None,
                 quota_bytes: int = DEFAULT_QUOTA,
                 account_quota_bytes: int | None = DEFAULT_ACCOUNT_QUOTA,
                 total_quota_bytes: int | None = None,
                 max_spaces_per_account: int | None = DEFAULT_SPACES_PER_ACCOUNT,
                 allowed_accounts: frozenset[bytes] | None = None, limits: ConnectionLimits | None = None,
                 gc_grace_us: int = blob_gc.DEFAULT_GRACE_US, gc_interval: float = DEFAULT_GC_INTERVAL,
                 clock: Callable[[], int] = blob_gc.now_us, vault_policy: VaultPolicy | None = None) -> None:
        """``gc_grace_us``: how long an uploaded blob may wait for a change that references it; ``gc_interval``:
        seconds between collections while serving (0: never); ``clock``: µs now (tests move it forward);
        ``db``: a PostgreSQL URL (default: SQLite ``<data>/node.db``); ``blobs``: where blob bytes go (default:
        the directory ``<data>/blobs``)."""
        self.data = Path(data).absolute()
        self.gc_grace_us = gc_grace_us
        self.gc_interval = gc_interval
        self.clock = clock
        self.allowed_accounts = allowed_accounts  # None: any authenticated member may store a new space here
        self.identity = load_or_create_identity(self.data)
        self.db = db or str(self.data / "node.db")
        self.store = Store(self.db)
        self.blobs: BlobStore = blobs if blobs is not None else BlobFiles(self.data / "blobs")
        # The token this process signs its change notices with, so it ignores its own (only on a shared database).
        self.notice = uuid.uuid4().hex if self.store.shared else None
        self.quota = quota_bytes
        self.vault_policy = vault_policy or VaultPolicy()  # account vaults: bytes per discovery ID, how many
        # Every space is charged to its owner account; ledgers check and update the figures in the database under
        # the write lock (one per database: every node process on it shares the quotas).
        policy = QuotaPolicy(per_space=quota_bytes, per_account=account_quota_bytes,
                             spaces_per_account=max_spaces_per_account)
        backfill_space_state(self.store)
        self.book = StoredQuotaBook(self.store, policy)
        self.book.policy = replace(policy, total=self._total_quota(total_quota_bytes))
        self.run = Runner()
        self.endpoint = Endpoint(self.identity, make_tls_identity(self.identity.device), limits=limits)
        self._ledgers: dict[bytes, Ledger] = {}
        self._generation: dict[bytes, int] = {}
        self._sets: dict[tuple[bytes, int], _Sets] = {}
        self._subscribers: dict[bytes, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.address_board = AddressBoard()

    def _total_quota(self, asked: int | None) -> int:
        """The total quota: ``asked`` (warned about when the disk cannot hold it), or by default the smaller of
        100 GiB and 90 % of the node's room on its disk — free space plus what it stores already, so the figure
        does not shrink as the node fills up."""
        if not isinstance(self.blobs, BlobFiles):  # an object store: no disk of ours to measure
            return asked if asked is not None else DEFAULT_TOTAL_QUOTA
        try:
            room = shutil.disk_usage(self.data).free + self.book.total_used
        except OSError:
            return asked if asked is not None else DEFAULT_TOTAL_QUOTA
        if asked is None:
            return min(DEFAULT_TOTAL_QUOTA, int(room * DISK_SHARE))
        if asked > room:
            log.warning("the total quota (%d bytes) is more than this disk can hold (about %d bytes)", asked, room)
        return asked

    def address(self, host: str, port: int) -> PeerAddress:
        return PeerAddress(self.identity.device_id, host, port)

    async def serve(self, host: str, port: int, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        await serve_tcp(self.endpoint, host, port, self._connection, handler=self.handle, task_status=task_status)

    # ------------------------------------------------------------------------------------------ blob collection
    async def collect_periodically(self) -> None:
        """Collect every ``gc_interval`` seconds (started beside :meth:`serve`; returns at once when 0)."""
        if self.gc_interval <= 0:
            return
        while True:
            await trio.sleep(self.gc_interval)
            try:
                await self.collect_garbage()
            except Exception as e:  # noqa: BLE001 - a failed collection is retried next time, serving goes on
                log.warning("blob collection failed: %s", e)

    async def collect_garbage(self) -> blob_gc.Collected:
        """Collect the blobs no accepted change references, linked longer than the grace period ago (one space
        at a time, each under the store lock, so uploads and requests go on in between)."""
        cutoff = self.clock() - self.gc_grace_us
        total = blob_gc.Collected()
        for row in await self.run(self.store.spaces):
            ledger = await self.run(self._ledger, row.id)
            collected = await self.run(ledger.collect_unreferenced, cutoff)
            if collected.unlinked:
                self._bump(row.id)
            total += collected
        # Files no space links (a crash between writing and linking): listed without the lock, decided under it.
        old = await trio.to_thread.run_sync(blob_gc.old_files, self.blobs, cutoff)
        for start in range(0, len(old), blob_gc.SWEEP_BATCH):
            n, size = await self.run(blob_gc.delete_unlinked_files, self.store, self.blobs,
                                     old[start:start + blob_gc.SWEEP_BATCH])
            total += blob_gc.Collected(files_deleted=n, file_bytes=size)
        return total

    def collect_garbage_now(self) -> blob_gc.Collected:
        """(blocking) :meth:`collect_garbage` for ``anysyncfs node gc`` (which holds the data directory's lock, so
        no node serves meanwhile)."""
        cutoff = self.clock() - self.gc_grace_us
        total = blob_gc.Collected()
        for row in self.store.spaces():
            total += self._ledger(row.id).collect_unreferenced(cutoff)
        return total + blob_gc.sweep_orphan_files(self.store, self.blobs, cutoff)

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------------------------------ other processes
    async def follow_other_processes(self, *, poll: float = 0.5) -> None:
        """On a shared database (started beside :meth:`serve`; returns at once otherwise): announce to this
        process's subscribers the changes other node processes accepted, as they commit."""
        if not self.store.shared:
            return
        listener = SpaceChangeListener(self.db)
        try:
            while True:
                try:
                    notices = await trio.to_thread.run_sync(listener.wait, poll)
                except StoreError as e:
                    log.warning("%s; retrying", e)
                    await trio.sleep(1.0)
                    continue
                if notices.reconnected:  # notices sent while we were not listening are lost: assume every change
                    changed = set(self._subscribers)
                else:
                    changed = {space_id for space_id, token in notices.changed if token != self.notice}
                for space_id in changed:
                    await self._changed_elsewhere(space_id)
        finally:
            listener.close()

    async def _changed_elsewhere(self, space_id: bytes) -> None:
        if not self._subscribers.get(space_id):
            return
        try:
            ledger = await self.run(self._ledger, space_id)  # refreshed from the database
        except (NotFound, StoreError) as e:
            log.info("space %s changed elsewhere, not readable here: %s", ids.space_text(space_id)[:20], e)
            return
        self._bump(space_id)
        await self._announce(space_id, ledger, None)

    # ------------------------------------------------------------------------------------------ connections
    async def _connection(self, conn: Connection) -> None:
        assert conn.peer is not None
        self.connections.add(conn)
        log.info("%s: connected (account %s)", conn.label, ids.account_text(conn.peer.peer_account)[:16])
        try:
            await conn.serve()
        except (ProtocolError, IntegrityError) as e:
            log.warning("%s: closed: %s", conn.label, e)
        except Exception as e:  # noqa: BLE001 - one connection never takes the node down
            log.info("%s: closed: %s", conn.label, e)
        finally:
            self.connections.discard(conn)
            for subs in self._subscribers.values():
                subs.discard(conn)

    # ------------------------------------------------------------------------------------------ spaces
    def _ledger(self, space_id: bytes) -> Ledger:
        """(blocking) The ledger of a space this node holds; NotFound otherwise."""
        ledger = self._ledgers.get(space_id)
        if ledger is None:
            if not any(r.id == space_id for r in self.store.spaces()):
                raise NotFound("this node does not hold that space")
            ledger = self._ledgers[space_id] = Ledger(self.store, self.blobs, space_id, quota_bytes=self.quota,
                                                      book=self.book, notice=self.notice)
        elif self.store.shared:
            ledger.refresh()  # another node process may have written the space since
        return ledger

    async def _member(self, conn: Connection, space_id: bytes, minimum: acl_mod.Role = acl_mod.Role.READER) -> Ledger:
        assert conn.peer is not None
        try:
            ledger = await self.run(self._ledger, space_id)
        except NotFound:
            raise ServiceError(m.ErrorCode.NOT_FOUND, f"this node does not hold {ids.space_text(space_id)}") from None
        role = ledger.role_of(conn.peer.peer_account)
        if role is None or role < minimum:
            raise ServiceError(m.ErrorCode.FORBIDDEN, "your account may not do that in this space")
        return ledger

    def _bump(self, space_id: bytes) -> None:
        self._generation[space_id] = self._generation.get(space_id, 0) + 1

    def _id_set(self, ledger: Ledger, kind: int) -> IdSet:
        """(blocking) The IDs of one set of a space, cached until the space changes."""
        key = (ledger.space_id, kind)
        gen = (self._generation.get(ledger.space_id, 0), ledger.generation)
        hit = self._sets.get(key)
        if hit is not None and hit.generation == gen:
            return hit.ids
        if kind == m.SetKind.CHANGES:
            source = ledger.change_ids()
        elif kind == m.SetKind.ACL:
            source = [rid for rid, _raw in ledger.acl_raws()]
        else:
            source = ledger.blob_ids()
        built = IdSet(source)
        self._sets[key] = _Sets(gen, built)
        return built

    async def _announce(self, space_id: bytes, ledger: Ledger, origin: Connection | None) -> None:
        heads = list(ledger.heads)[: 256]
        for conn in list(self._subscribers.get(space_id, ())):
            if conn is origin or conn.closed.is_set():
                continue
            try:
                await conn.notify(m.Heads(space_id, heads))
            except Exception as e:  # noqa: BLE001 - a dead subscriber must not stop the others
                log.info("%s: announce failed: %s", conn.label, e)

    # ------------------------------------------------------------------------------------------ requests
    async def handle(self, conn: Connection, body: object) -> object:
        """Answer one request. The database or the blob store failing (a PostgreSQL or S3 server down) is
        UNAVAILABLE, which devices retry later: nothing that failed was acknowledged."""
        try:
            return await self._dispatch(conn, body)
        except StoreError as e:
            # The details (database host, object keys) stay in the node's log; the peer learns only what to do.
            log.warning("%s: %s failed: %s", conn.label, type(body).__name__, e)
            raise ServiceError(m.ErrorCode.UNAVAILABLE, "storage unavailable, retry later") from None

    async def _dispatch(self, conn: Connection, body: object) -> object:
        assert conn.peer is not None
        if isinstance(body, m.PushSpace):
            return await self._push_space(conn, body)
        if isinstance(body, m.OpenSpace):
            if body.invite_proof:
                ledger = await self._invited(conn, body)
            else:
                ledger = await self._member(conn, body.space)
                self._subscribers.setdefault(body.space, set()).add(conn)
            if body.with_acl or body.invite_proof:
                await conn.reserve_reply((await self.run(ledger.usage)).acl_bytes)
            acl = await self.run(ledger.acl_raws) if body.with_acl or body.invite_proof else []
            return m.SpaceInfo(ledger.header_raw, [raw for _rid, raw in acl], list(ledger.heads)[: m.MAX_IDS])
        if isinstance(body, m.GetAcl):
            ledger = await self._member(conn, body.space)
            wanted = set(body.ids)
            await conn.reserve_reply((await self.run(ledger.usage)).acl_bytes)
            held = await self.run(ledger.acl_raws)
            return m.AclRecords([raw for rid, raw in held if rid in wanted])
        if isinstance(body, m.Reconcile):
            ledger = await self._member(conn, body.space)
            id_set = await self.run(self._id_set, ledger, body.set)
            # Pure CPU (up to a few hundred ms for a full 1 MiB message): off the trio thread, no lock needed.
            reply = await trio.to_thread.run_sync(Reconciler(id_set, initiator=False).reconcile, body.message)
            return m.ReconcileReply(reply or b"")
        if isinstance(body, m.GetChanges):
            ledger = await self._member(conn, body.space)
            await conn.reserve_reply(m.MAX_BATCH_BYTES)  # replies are bounded per connection, like requests
            return m.Changes(await self.run(ledger.get_changes, body.ids, m.MAX_BATCH_BYTES))
        if isinstance(body, m.PutChanges):
            ledger = await self._member(conn, body.space)
            try:
                results = await self.run(ledger.ingest_batch, body.changes)
            except QuotaExceeded as e:
                raise ServiceError(m.ErrorCode.QUOTA, str(e)) from None
            accepted = sum(r.status == IngestStatus.APPLIED for r in results)
            known = sum(r.status == IngestStatus.KNOWN for r in results)
            missing = sorted({p for r in results for p in r.missing})[: m.MAX_IDS]
            if any(r.status == IngestStatus.REJECTED for r in results):
                raise ServiceError(m.ErrorCode.INVALID,
                                   next(r.reason for r in results if r.status == IngestStatus.REJECTED))
            if accepted:
                self._bump(body.space)
                await self._announce(body.space, ledger, conn)
            return m.Accepted(accepted, known, missing)
        if isinstance(body, m.PutAcl):
            ledger = await self._member_or_joining(conn, body.space, body.records)
            try:
                added = await self.run(ledger.add_acl_records, body.records)
            except QuotaExceeded as e:
                raise ServiceError(m.ErrorCode.QUOTA, str(e)) from None
            except ForkRefused as e:  # a fork by a non-admin (replica/ledger.py refuse_forks)
                raise ServiceError(m.ErrorCode.FORBIDDEN, str(e)) from None
            if added:
                self._bump(body.space)
                await self._announce(body.space, ledger, conn)  # members pick up role and key changes at once
            return m.Accepted(added, len(body.records) - added, [])
        if isinstance(body, m.GetBlob):
            ledger = await self._member(conn, body.space)
            if not await self.run(ledger.has_blob, body.blob):
                raise ServiceError(m.ErrorCode.NOT_FOUND, "blob not held here")
            await conn.reserve_reply(await self.run(ledger.store.blob_size, body.blob) or MAX_BLOB_LEN)
            return m.Blob(await self.run(ledger.get_blob, body.blob))
        if isinstance(body, m.GetBlobRanges):
            return await self._blob_ranges(conn, body)
        if isinstance(body, m.PutBlob):
            ledger = await self._member(conn, body.space, acl_mod.Role.WRITER)
            try:
                if await self.run(ledger.put_blob, body.blob, body.data, body.outboard or None):
                    self._bump(body.space)
            except QuotaExceeded as e:
                raise ServiceError(m.ErrorCode.QUOTA, str(e)) from None
            return m.Ok()
        if isinstance(body, m.HasBlobs):
            ledger = await self._member(conn, body.space)
            flags = await self.run(self._has_blobs, ledger, body.ids)
            return m.Bits(m.bits_of(flags))
        if isinstance(body, (m.PutHeads, m.GetHeads)):
            return await self._signed_heads(conn, body)
        if isinstance(body, (m.PutVault, m.GetVault)):
            return await vault_node.handle(self, conn, body)
        if isinstance(body, (m.PutAddresses, m.GetAddresses)):  # members' address records (70.13)
            ledger = await self._member(conn, body.space)
            if isinstance(body, m.GetAddresses):
                return m.AddressRecords(self.address_board.served(body.space, ledger.role_of))
            outcome = self.address_board.offer(body.space, ledger.role_of, bytes(body.record))  # forged: closes
            if outcome in ("not-member", "full"):
                raise ServiceError(m.ErrorCode.FORBIDDEN, f"address record not kept: {outcome}")
            return m.Accepted(int(outcome == "stored"), int(outcome == "old"), [])
        raise ServiceError(m.ErrorCode.BAD_REQUEST, f"unsupported request {type(body).__name__}")

    def _has_blobs(self, ledger: Ledger, blob_ids: list[bytes]) -> list[bool]:
        """(blocking) :meth:`Ledger.has_blob` of many IDs at once: one database query for the space's links, and
        the blob store asked only about the linked ones, in one batch (concurrent requests on S3)."""
        linked = self.store.space_blobs_among(ledger.space_id, blob_ids)
        stored = self.blobs.has_many([b for b in blob_ids if b in linked]) if linked else set()
        return [b in stored for b in blob_ids]

    async def _blob_ranges(self, conn: Connection, body: m.GetBlobRanges) -> m.BlobSlice:
        """Byte ranges of a blob as a verified slice (protocol.md 70.12): checked against the blob's size and the
        slice bound before the reply's room is reserved and the groups are read (each verified on the way)."""
        ledger = await self._member(conn, body.space)
        size = await self.run(ledger.store.blob_size, body.blob) if await self.run(ledger.has_blob, body.blob) else None
        if size is None:
            raise ServiceError(m.ErrorCode.NOT_FOUND, "blob not held here")
        try:
            groups = bao.groups_of(bao.wanted(size, body.ranges))
        except bao.RangeOutside as e:
            raise ServiceError(m.ErrorCode.BAD_REQUEST, str(e)) from None
        if len(groups) > m.MAX_SLICE_GROUPS + 1:
            raise ServiceError(m.ErrorCode.BAD_REQUEST, f"ranges cover {len(groups)} groups, more than "
                                                        f"{m.MAX_SLICE_GROUPS} (ask in parts)")
        await conn.reserve_reply(len(groups) * bao.GROUP_LEN + bao.parent_count(size) * bao.NODE_LEN)
        try:
            return m.BlobSlice(await self.run(ledger.read_blob_slice, body.blob, body.ranges))
        except NotFound as e:
            raise ServiceError(m.ErrorCode.NOT_FOUND, str(e)) from None
        except IntegrityError as e:  # our own file is damaged: not the asker's fault (it must not be hung up on)
            log.error("blob %s: %s", body.blob.hex()[:16], e)
            raise ServiceError(m.ErrorCode.INTERNAL, "the blob is damaged here") from None

    async def _signed_heads(self, conn: Connection, body: m.PutHeads | m.GetHeads) -> object:
        """Keep the newest signed heads of each member device, and serve them to members (protocol.md 70.9)."""
        ledger = await self._member(conn, body.space)
        if isinstance(body, m.GetHeads):
            return m.HeadsRecords(await self.run(heads_board.served, ledger))
        outcome = await self.run(heads_board.offer, ledger, bytes(body.record))  # forged: the connection closes
        if outcome.status == "not-member":
            raise ServiceError(m.ErrorCode.FORBIDDEN, "those signed heads are not of a member's device")
        if outcome.status == "full":
            raise ServiceError(m.ErrorCode.QUOTA, "this space has the most signed heads records a node keeps")
        return m.Accepted(int(outcome.status == "stored"), int(outcome.status == "old"), list(outcome.missing))

    async def _invited(self, conn: Connection, body: m.OpenSpace) -> Ledger:
        """A joiner proving it holds the secret of an outstanding, unexpired invite may read header and ACL.

        FORBIDDEN names why a proven invite no longer works (used, revoked, expired); NOT_FOUND: no invite of
        the space matches the proof (not received yet, or none)."""
        assert conn.peer is not None
        try:
            ledger = await self.run(self._ledger, body.space)
        except NotFound:
            raise ServiceError(m.ErrorCode.NOT_FOUND, f"this node does not hold {ids.space_text(body.space)}") from None
        message = m.invite_proof_message(body.space, conn.peer.peer_account, conn.peer.peer_device)
        now = time.time_ns() // 1000
        for invite in ledger.acl.current.invites.values():
            try:
                crypto.verify(invite.invite_public, message, body.invite_proof)
            except IntegrityError:
                continue
            # The proof shows the peer holds this invite's secret: it may learn why the invite no longer works.
            if invite.used_by is not None:
                raise ServiceError(m.ErrorCode.FORBIDDEN, "this invite was already used")
            if invite.revoked:
                raise ServiceError(m.ErrorCode.FORBIDDEN, "this invite was revoked")
            if invite.expires_us and now > invite.expires_us:
                raise ServiceError(m.ErrorCode.FORBIDDEN, "this invite has expired")
            return ledger
        raise ServiceError(m.ErrorCode.NOT_FOUND, "this invite is not known here (the inviter's device may not "
                                                  "have pushed it yet)")

    async def _member_or_joining(self, conn: Connection, space_id: bytes, raws: list[bytes]) -> Ledger:
        """Members may offer ACL records (the ACL rules decide which count). Anyone else only records that make
        it a member — a join under a valid invite — judged before anything is stored, so strangers can't fill
        the node with records the fold would drop."""
        assert conn.peer is not None
        try:
            ledger = await self.run(self._ledger, space_id)
        except NotFound:
            raise ServiceError(m.ErrorCode.NOT_FOUND, f"this node does not hold {ids.space_text(space_id)}") from None
        account = conn.peer.peer_account
        if ledger.role_of(account) is not None:
            return ledger

        def joins() -> bool:
            offered = [acl_mod.parse_record(raw) for raw in raws]  # IntegrityError: the connection closes
            held = [acl_mod.parse_record(raw, rid) for rid, raw in ledger.acl_raws()]
            return acl_mod.fold(space_id, held + offered).current.role_of(account) is not None

        if not await self.run(joins):
            raise ServiceError(m.ErrorCode.FORBIDDEN, "only members, or a joiner with a valid join record, may add "
                                                      "ACL records")
        return ledger

    async def _push_space(self, conn: Connection, body: m.PushSpace) -> object:
        assert conn.peer is not None
        header = space.parse_space_header(body.header)  # IntegrityError -> the connection closes
        records = [acl_mod.parse_record(raw) for raw in body.acl]
        view = acl_mod.fold(header.id, records)
        if view.current.members.get(conn.peer.peer_account) is None:
            raise ServiceError(m.ErrorCode.FORBIDDEN, "only a member may store a space here")
        if (self.allowed_accounts is not None and conn.peer.peer_account not in self.allowed_accounts
                and not any(r.id == header.id for r in await self.run(self.store.spaces))):
            raise ServiceError(m.ErrorCode.FORBIDDEN, "this node stores new spaces only for the accounts it serves")

        def adopt() -> Ledger:
            ledger = Ledger.adopt(self.store, self.blobs, body.header, body.acl, quota_bytes=self.quota,
                                  book=self.book, notice=self.notice)
            self._ledgers[header.id] = ledger
            return ledger

        try:
            await self.run(adopt)
        except QuotaExceeded as e:
            log.info("%s: space %s refused: %s", conn.label, ids.space_text(header.id)[:20], e)
            raise ServiceError(m.ErrorCode.QUOTA, str(e)) from None
        self._bump(header.id)
        log.info("%s: now holding space %s", conn.label, ids.space_text(header.id))
        return m.Ok()
