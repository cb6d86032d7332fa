"""The sync engine of one space on a device: keeps connections to the space's peers and providers, reconciles,
pushes new changes at once, uploads own blobs, and fetches blobs on demand for reads.

Every replica call is blocking (SQLite, signatures, decryption) and goes through a :class:`Runner` — in a mount,
the FUSE adapter's lock, so sync and file-system calls never overlap. The engine runs in the mount's trio loop
(:meth:`SpaceSync.run`) or once for ``anysyncfs sync`` (:meth:`SpaceSync.sync_once`).
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ..core import bao, crypto, ids
from ..core.address import PeerAddress, parse_address
from ..core.reconcile import IdSet, Reconciler
from ..core.vault import VaultKeys
from ..errors import AnysyncError, IdMismatch, IntegrityError, NetworkError, NotFound, ProtocolError, UsageError
from ..protocol import messages as m
from ..replica import Replica
from ..replica.ledger import IngestStatus
from . import providers
from ..store.partial import PartialBlobs
from . import range_fetch
from .connection import Connection, RemoteError, while_serving
from .endpoint import Endpoint
from .runner import Runner
from .withholding import HeadsWitness

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ROUNDS = 64  # reconciliation messages per set; a correct peer needs ~log16(n) + 2
POLL_S = 0.05  # how often the engine looks for local commits (a read of one attribute)
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
HOSTILE_BACKOFF_S = 60.0  # after a peer sent invalid data
PEERS_POLL_S = 0.5  # how often a running engine re-reads the space's peers (a removed one is dropped at once)
VAULT_EVERY_S = 30.0  # the vault is exchanged with a connected device of this account at most this often
DISCOVERED_BACKOFF_MAX_S = 300.0  # a discovered address that keeps failing is tried at most this often
BLOB_ATTEMPT_S = 10.0  # one peer's turn at a blob fetch: a dead path is left after this, the next peer asked
TRANSFERS_IN_FLIGHT = 4  # concurrent blob uploads / content fetches per sync

Changed = Callable[[], Awaitable[None]]
Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass
class PeerStatus:
    address: str
    connected: bool = False
    last_sync_us: int | None = None
    last_error: str = ""
    to_fetch: int = 0  # changes the peer has that we lacked at the last reconciliation
    to_send: int = 0  # changes we had that the peer lacked
    rounds: int = 0  # reconciliation round trips of the last run
    next_attempt: float = 0.0
    blobs_to_backfill: int = 0  # blobs of the space the provider lacks, still being back-filled (net/providers.py)
    bytes_to_backfill: int = 0
    via: str = "manual"  # how it was found: manual (peers table), address record, mdns
    kind: str = ""  # once connected: "device" (a member's device) or "provider"


@dataclass
class SyncReport:
    peers: int = 0
    reached: int = 0
    fetched: int = 0
    sent: int = 0
    blobs_uploaded: int = 0
    errors: list[str] = field(default_factory=list)


class SpaceSync:
    def __init__(
        self,
        replica: Replica,
        endpoint: Endpoint,
        run: Runner,
        *,
        on_changed: Changed | None = None,
        interval: float = 30.0,
        fetch_timeout: float = 30.0,
    ) -> None:
        self.replica = replica
        self.space_id = replica.space_id
        self.endpoint = endpoint
        self.run = run
        self.on_changed = on_changed
        self.interval = interval
        self.fetch_timeout = fetch_timeout
        self.peers: dict[str, PeerStatus] = {}
        self._conns: dict[str, Connection] = {}
        self._wake: dict[str, trio.Event] = {}
        self._conn_changed = trio.Event()  # set (and replaced) whenever a peer connection is established
        self._fetching: dict[bytes, trio.Event] = {}
        self._fetching_ranges: dict[tuple[bytes, tuple[tuple[int, int], ...]], trio.Event] = {}
        self._partials: PartialBlobs = replica.partials  # shared with the read path, which reads what they hold
        self._known_heads = replica.heads
        self.pending_uploads = 0
        self.referenced = providers.ReferencedBlobs(replica)  # what every provider should hold (back-fill)
        self.witness = HeadsWitness(replica, run)  # signed heads: catches a provider keeping changes back
        self.first_sync_progress: Progress | None = None
        self.exchange_addresses: Callable[[SpaceSync, Connection], Awaitable[None]] | None = None  # address records
        self.discovered: dict[str, tuple[PeerAddress, str]] = {}  # found by address records or mDNS, with how
        self._new_address = trio.Event()
        self._retry: dict[str, trio.Event] = {}  # peer key -> set to cut the backoff of its dial short
        self._connected_devices: dict[bytes, str] = {}  # device key -> the address we are connected to it by
        self._is_device: dict[str, bool] = {}  # peer key -> a member's device (True) or a provider
        self._seen_noted: dict[str, tuple[int, str, str]] = {}  # peer key -> (connection, via, kind) last stored
        self._vault_exchanged: dict[int, tuple[float, Connection]] = {}  # connection -> when the vault was last
        self._vault_keys: VaultKeys | None = None  # exchanged with it (a device of this account only)

    # ------------------------------------------------------------------------------------------ addresses
    async def addresses(self) -> list[PeerAddress]:
        rows = await self.run(self.replica.store.peers, self.space_id)
        out = []
        for r in rows:
            try:
                out.append(parse_address(r.address))
            except UsageError as e:
                log.warning("ignoring peer %r: %s", r.address, e)
        return out

    def add_discovered(self, addr: PeerAddress, via: str) -> None:
        """An address found by an address record or on the LAN: dialled like a recorded peer (this device's own
        addresses are ignored)."""
        if addr.device == self.endpoint.identity.device_id:
            return
        key = str(addr)
        if key not in self.discovered:
            self.discovered[key] = (addr, via)
            self._new_address.set()
        else:  # heard of again (back on the LAN): a dial waiting out its backoff tries at once
            retry = self._retry.get(key)
            if retry is not None:
                retry.set()

    # ------------------------------------------------------------------------------------------ long-running
    async def run_forever(self) -> None:
        """Keep every known peer connected and in sync until cancelled. The peers table is read again every
        :data:`PEERS_POLL_S`: a new peer is dialled, a removed one (``space remove-peer`` in another process) is
        disconnected and no longer dialled, without a remount."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_local_commits)
            running: dict[str, trio.CancelScope] = {}
            while True:
                try:
                    wanted = {str(addr): (addr, "manual") for addr in await self.addresses()}
                except AnysyncError as e:  # the store is busy or failing: keep the current peers, try again
                    log.warning("cannot read the peers of the space: %s", e)
                    wanted = {key: (parse_address(key), "manual") for key in running}
                # Found by address records or mDNS: dialled as well, never "removed" by the peers table.
                for key, found in self.discovered.items():
                    wanted.setdefault(key, found)
                for key in [k for k in running if k not in wanted]:
                    log.info("%s: no longer a peer of the space; disconnecting", key)
                    running.pop(key).cancel()  # its connection is closed by _peer_loop's cleanup
                    self.peers.pop(key, None)
                for key, (addr, via) in wanted.items():
                    if key not in running:
                        running[key] = await nursery.start(self._peer_task, addr, via)
                with trio.move_on_after(PEERS_POLL_S):  # a newly discovered address is dialled at once
                    await self._new_address.wait()
                self._new_address = trio.Event()

    async def _peer_task(self, addr: PeerAddress, via: str, *,
                         task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self._peer_loop(addr, via)

    async def _watch_local_commits(self) -> None:
        """Live push: when our heads move (a local commit, or changes fetched from another peer), wake every
        peer task so the peer hears of them at once."""
        while True:
            await trio.sleep(POLL_S)
            heads = self.replica.heads  # a tuple replaced atomically by the replica: safe to read unlocked
            if heads != self._known_heads:
                self._known_heads = heads
                for ev in self._wake.values():
                    ev.set()

    async def _peer_loop(self, addr: PeerAddress, via: str = "manual") -> None:
        key = str(addr)
        st = self.peers.setdefault(key, PeerStatus(key, via=via))
        backoff = BACKOFF_MIN_S
        most = BACKOFF_MAX_S if via == "manual" else DISCOVERED_BACKOFF_MAX_S
        while True:
            other = self._connected_devices.get(addr.device)
            if other is not None and other != key:
                await trio.sleep(BACKOFF_MAX_S * (0.5 + random.random()))  # already connected by another address
                continue
            try:
                conn = await self.endpoint.dial(addr, on_notify=self._on_notify)
            except (NetworkError, IntegrityError, ProtocolError) as e:
                st.last_error = str(e)
                await self._note(key, ok=False, error=str(e))
                wait = backoff * (0.5 + random.random())
                st.next_attempt = time.time() + wait
                log.info("%s: %s (retry in %.1f s)", key, e, wait)
                retry = self._retry[key] = trio.Event()
                with trio.move_on_after(wait):
                    await retry.wait()
                backoff = min(backoff * 2, most)
                continue
            backoff = BACKOFF_MIN_S
            hostile = False
            self._connected_devices.setdefault(addr.device, key)
            try:
                hostile = await self._connected_session(key, conn, st)
            finally:
                st.connected = False
                self._conns.pop(key, None)
                self._wake.pop(key, None)
                if self._connected_devices.get(addr.device) == key:
                    del self._connected_devices[addr.device]
                await conn.abort("done")
            await trio.sleep(HOSTILE_BACKOFF_S if hostile else BACKOFF_MIN_S)

    async def _connected_session(self, key: str, conn: Connection, st: PeerStatus) -> bool:
        """Serve one connection: sync, then keep it in sync until it breaks. True if the peer misbehaved."""
        wake = self._wake[key] = trio.Event()

        async def keep_in_sync() -> None:
            nonlocal wake
            self._conns[key] = conn  # blob fetches may use it while the first sync runs
            st.connected = True
            self._conn_changed.set()
            self._conn_changed = trio.Event()
            # Only the engine's first round gets the progress callback (a foreground mount draws it on a terminal).
            progress, self.first_sync_progress = self.first_sync_progress, None
            await self.sync_with(conn, st, progress)
            while True:
                with trio.move_on_after(self.interval):
                    await wake.wait()
                wake = self._wake[key] = trio.Event()
                await self.sync_with(conn, st)

        try:
            await while_serving(conn, keep_in_sync)  # ends only by an error (or the connection's end: NetworkError)
        except (IntegrityError, ProtocolError) as e:
            log.warning("%s sent invalid data, disconnecting: %s", key, e)
            st.last_error = f"invalid data: {e}"
            await self._note(key, ok=False, error=st.last_error)
            return True
        except (NetworkError, RemoteError) as e:
            log.info("%s: %s", key, e)
            st.last_error = str(e)
            await self._note(key, ok=False, error=str(e))
        except AnysyncError as e:  # e.g. the store failed: this round ends, the engine and other peers go on
            log.warning("%s: sync failed: %s", key, e)
            st.last_error = str(e)
            await self._note(key, ok=False, error=str(e))
        return False

    async def _on_notify(self, conn: Connection, body: object) -> None:
        if isinstance(body, m.Heads) and body.space == self.space_id:
            # New changes or new ACL records on the peer: one sync round (two round trips when nothing differs).
            ev = self._wake.get(conn.label)
            if ev is not None:
                ev.set()

    async def _note(self, key: str, *, ok: bool, error: str | None = None, synced_us: int | None = None) -> None:
        try:
            await self.run(self.replica.store.note_peer_sync, self.space_id, key, ok, error, synced_us)
        except AnysyncError as e:
            log.warning("cannot record the sync state of %s: %s", key, e)

    # ------------------------------------------------------------------------------------------ one sync
    async def sync_with(self, conn: Connection, st: PeerStatus | None = None, progress: Progress | None = None
                        ) -> tuple[int, int, int]:
        """Bring ``conn``'s peer and us to the same changes; returns (fetched, sent, blobs uploaded).

        A failure while fetching from the peer (bad data, a refusal, a batch that does not apply) never stops
        sending: the ACL records, blobs and changes the peer lacks are still sent, then the first such failure is
        raised (so a peer that sent invalid data is still disconnected and backed off)."""
        if await self.run(self.replica.refresh_acl) and self.on_changed is not None:
            await self.on_changed()  # another process (the CLI) changed the ACL: roles or keys may have moved
        started_us = time.time_ns() // 1000  # every change stored before this reaches the peer in this round
        await self._open(conn)
        fetch_failures: list[AnysyncError] = []
        await self._sync_acl(conn, fetch_failures)
        # After the ACL round: a space first fetched from a member's device learns only now that it is one.
        device = self.peer_is_device(conn)
        if st is not None:
            st.kind = "device" if device else "provider"
        await self._note_seen(conn, st.via if st is not None else "manual", device)
        if self.exchange_addresses is not None:
            await self.exchange_addresses(self, conn)
        if device and conn.peer is not None and conn.peer.peer_account == self.endpoint.identity.account.public:
            await self._exchange_vault(conn)
        # Blobs go up to providers only: a device fetches what it reads, and an upload confirmed by a device must
        # not count as safe on a provider.
        uploaded = providers.Uploaded([]) if device else await providers.upload_queued(self, conn, progress)

        async def changes_round() -> tuple[int, int, int]:
            # Everything the peer lacks is sent before the first fetch failure is raised; the witness then judges
            # the provider as for any failed round.
            result = await self._sync_changes(conn, progress, fetch_failures)
            if fetch_failures:
                raise fetch_failures[0]
            return result

        if device:  # signed heads judge providers; a member's device is no provider
            fetched, sent, rounds = await changes_round()
        else:
            fetched, sent, rounds = await self.witness.checked_round(conn, changes_round)
            await providers.backfill(self, conn, st, uploaded)  # blobs made before this provider was added, or lost
            await providers.confirm(self, conn, uploaded.held)
        if st is not None:
            st.last_sync_us = started_us
            st.last_error = ""
            st.rounds = rounds
        await self._note(conn.label, ok=True, synced_us=started_us)
        return fetched, sent, uploaded.sent

    async def _note_seen(self, conn: Connection, via: str, device: bool) -> None:
        """Store what the peer was judged to be and how it was found (``peers_seen``): ``anysyncfs status`` shows
        it while no engine runs, and a recorded device stops holding the upload queue back. Written once per
        connection and whenever the judgement changes, not in every live-push round."""
        assert conn.peer is not None
        kind = "device" if device else "provider"
        if self._seen_noted.get(conn.label) == (id(conn), via, kind):
            return
        try:
            await self.run(self.replica.store.note_peer_seen, self.space_id, conn.label, conn.peer.peer_device,
                           via, kind)
        except AnysyncError as e:  # informational: the round goes on
            log.warning("cannot record what %s is: %s", conn.label, e)
            return
        self._seen_noted[conn.label] = (id(conn), via, kind)

    async def _exchange_vault(self, conn: Connection) -> None:
        """With another device of this account (its certificate is signed by our account key): fetch its vault,
        merge, keep the result here and push it there (docs/protocol.md 70.16), so a space created on one device
        reaches the other's vault without a provider. Once per connection, then at most every
        :data:`VAULT_EVERY_S` (not in every live-push round). A failure is logged, never ends the round."""
        from .vault_sync import sync_vault_with_device, vault_keys

        now = time.monotonic()
        last = self._vault_exchanged.get(id(conn))
        if last is not None and now - last[0] < VAULT_EVERY_S and last[1] is conn:
            return
        self._vault_exchanged = {k: v for k, v in self._vault_exchanged.items() if now - v[0] < VAULT_EVERY_S}
        self._vault_exchanged[id(conn)] = (now, conn)
        if self._vault_keys is None:
            self._vault_keys = vault_keys(self.endpoint.identity.account.seed)
        try:
            report = await sync_vault_with_device(conn, self.replica.store, self._vault_keys, self.run)
        except AnysyncError as e:  # our own vault row does not open, or the store failed: the space syncs on
            log.warning("%s: vault not exchanged: %s", conn.label, e)
            return
        for line in report.warnings:  # a forged record; a device merely behind (it slept) is brought up to date
            (log.warning if "does not verify" in line else log.info)("%s", line)
        for line in report.errors:  # e.g. an older version of anysyncfs, which refuses PutVault
            log.info("vault not exchanged: %s", line)

    def peer_is_device(self, conn: Connection) -> bool:
        """A member's device (its account is in the space's ACL), not a provider (whose account never is)."""
        assert conn.peer is not None
        # Asked again each round (a cheap lookup): the ACL may have arrived or changed since the last one.
        known = self._is_device[conn.label] = self.replica.role_of(conn.peer.peer_account) is not None
        return known

    async def _sync_acl(self, conn: Connection, fetch_failures: list[AnysyncError]) -> None:
        """Reconcile ACL record IDs by ranges; fetch the records we lack (verified on adding), send theirs."""
        ours = await self.run(lambda: IdSet(self.replica.acl_ids()))
        have, need, _rounds = await self.reconcile(conn, m.SetKind.ACL, ours)
        await fetch_then_send(fetch_failures, self._fetch_acl(conn, need), None)
        if have:
            raws = dict(await self.run(self.replica.acl_raws))
            # Only canonical records: a fork loser is of no use to the peer, and a node refuses a non-admin's.
            send = [raws[rid] for rid in sorted(have) if rid in raws and self.replica.acl.position(rid) is not None]
            for i in range(0, len(send), m.MAX_BATCH):
                try:
                    await conn.request(m.PutAcl(self.space_id, send[i:i + m.MAX_BATCH]))
                except RemoteError as e:
                    if e.code != m.ErrorCode.FORBIDDEN:
                        raise
                    log.warning("%s: refused ACL records: %s", conn.label, e.remote_message)

    async def _fetch_acl(self, conn: Connection, need: set[bytes]) -> None:
        if need:
            reply = await conn.request(m.GetAcl(self.space_id, sorted(need)[: 4 * m.MAX_BATCH]))
            if not isinstance(reply, m.AclRecords):
                raise ProtocolError(f"expected AclRecords, got {type(reply).__name__}")
            added = await self.run(self.replica.add_acl_records, [bytes(r) for r in reply.records])
            if added:
                log.info("%s: %d new ACL records", conn.label, added)
                if self.on_changed is not None:
                    await self.on_changed()

    async def _open(self, conn: Connection) -> m.SpaceInfo:
        try:
            info = await conn.request(m.OpenSpace(self.space_id, with_acl=False))
        except RemoteError as e:
            if e.code != m.ErrorCode.NOT_FOUND:
                raise
            acl = await self.run(self.replica.acl_raws)
            await conn.request(m.PushSpace(self.replica.header_raw, [raw for _rid, raw in acl]))
            info = await conn.request(m.OpenSpace(self.space_id))
        if not isinstance(info, m.SpaceInfo):
            raise ProtocolError(f"expected SpaceInfo, got {type(info).__name__}")
        return info

    async def reconcile(self, conn: Connection, kind: m.SetKind, id_set: IdSet) -> tuple[set[bytes], set[bytes], int]:
        """Run range-based set reconciliation as the initiator: (we have, we need, round trips)."""
        rec = Reconciler(id_set, initiator=True)
        message: bytes | None = await trio.to_thread.run_sync(rec.initiate)
        rounds = 0
        while message is not None:
            rounds += 1
            if rounds > MAX_ROUNDS:
                raise ProtocolError(f"set reconciliation did not finish in {MAX_ROUNDS} rounds")
            reply = await conn.request(m.Reconcile(self.space_id, int(kind), message))
            if not isinstance(reply, m.ReconcileReply):
                raise ProtocolError(f"expected ReconcileReply, got {type(reply).__name__}")
            if not reply.message:
                break
            message = await trio.to_thread.run_sync(rec.reconcile, reply.message)  # pure CPU: not on the trio thread
        return rec.have, rec.need, rounds

    async def _sync_changes(self, conn: Connection, progress: Progress | None, fetch_failures: list[AnysyncError]
                            ) -> tuple[int, int, int]:
        ours, rejected = await self.run(lambda: (IdSet(self.replica.change_ids()), self.replica.rejected_ids()))
        have, need, rounds = await self.reconcile(conn, m.SetKind.CHANGES, ours)
        need -= rejected
        st = self.peers.get(conn.label)
        if st is not None:
            st.to_fetch, st.to_send = len(need), len(have)
        fetched = await fetch_then_send(fetch_failures, self._fetch_changes(conn, sorted(need), progress), 0)
        if st is not None:
            st.to_fetch = 0
        sent = await self._send_changes(conn, have, progress)
        if st is not None:
            st.to_send = 0
        return fetched, sent, rounds

    async def _fetch_changes(self, conn: Connection, need: list[bytes], progress: Progress | None) -> int:
        if not need:
            return 0
        raws: list[bytes] = []
        todo = need
        while todo:
            asked = todo[: m.MAX_IDS]
            reply = await conn.request(m.GetChanges(self.space_id, asked))
            if not isinstance(reply, m.Changes):
                raise ProtocolError(f"expected Changes, got {type(reply).__name__}")
            if not reply.changes:
                raise ProtocolError("peer returned no changes for IDs it announced")
            got = [bytes(c) for c in reply.changes]
            # The peer answers in the order asked, each change under the ID asked for: one it slips in unasked is
            # refused even when well signed (ingest checks signatures, not what we asked for).
            if len(got) > len(asked) or any(not crypto.ct_equal(crypto.blake3(r), c) for r, c in zip(got, asked)):
                raise IdMismatch("peer answered GetChanges with changes other than those asked for")
            raws.extend(got)
            todo = todo[len(got):]
            if progress:
                progress("changes", len(raws), len(need))
        results = await self.run(self.replica.ingest_batch, raws)
        applied = sum(r.status == IngestStatus.APPLIED for r in results)
        rejected = [r for r in results if r.status == IngestStatus.REJECTED]
        if rejected:
            log.warning("%s: %d changes rejected (%s)", conn.label, len(rejected), rejected[0].reason)
        if applied and self.on_changed is not None:
            await self.on_changed()
        self._known_heads = self.replica.heads
        return applied

    async def _send_changes(self, conn: Connection, have: set[bytes], progress: Progress | None) -> int:
        if not have:
            return 0
        dag = self.replica.dag
        order = sorted(have, key=lambda c: (dag.lamport(c) or 0, c))  # parents first
        sent = 0
        while order:
            batch = await self.run(self.replica.get_changes, order[: m.MAX_BATCH], m.MAX_BATCH_BYTES)
            if not batch:
                break
            reply = await conn.request(m.PutChanges(self.space_id, batch))
            if not isinstance(reply, m.Accepted):
                raise ProtocolError(f"expected Accepted, got {type(reply).__name__}")
            order = order[len(batch):]
            sent += len(batch)
            if progress:
                progress("send", sent, len(have))
        return sent

    # ------------------------------------------------------------------------------------------ blobs
    async def fetch_blob(self, blob_id: bytes, timeout: float | None = None) -> None:
        """Get a blob this device lacks from any connected peer (the next on failure), verify and store it.

        Concurrent calls for one blob share one fetch. Raises NotFound when no peer has it or none is reachable
        within the timeout."""
        ev = self._fetching.get(blob_id)
        if ev is not None:
            with trio.move_on_after(timeout if timeout is not None else self.fetch_timeout):
                await ev.wait()
            if not self.replica.blobs.has(blob_id):
                raise NotFound(f"blob {ids.to_text(ids.PREFIX_BLOB, blob_id)[:20]}… could not be fetched")
            return
        ev = self._fetching[blob_id] = trio.Event()
        try:
            await self._fetch_blob(blob_id, timeout if timeout is not None else self.fetch_timeout)
        finally:
            ev.set()
            del self._fetching[blob_id]

    async def _fetch_blob(self, blob_id: bytes, timeout: float) -> None:
        label = ids.to_text(ids.PREFIX_BLOB, blob_id)[:20] + "…"
        deadline = trio.current_time() + timeout
        tried: set[str] = set()
        errors: list[str] = []
        while True:
            candidates = [(k, c) for k, c in self._conns.items() if k not in tried and not c.closed.is_set()]
            # Path choice: a member's device (on the LAN, found by mDNS, or by its address record) before a
            # provider; each peer gets a bounded turn, so a dead path is left for the next one.
            candidates.sort(key=lambda kc: (not self._is_device.get(kc[0], False), self._via_rank(kc[0])))
            for key, conn in candidates:
                tried.add(key)
                try:
                    with trio.fail_at(min(deadline, trio.current_time() + BLOB_ATTEMPT_S)):
                        if self._is_device.get(key, False):  # a member's device answers GetBlob
                            reply = await conn.request(m.GetBlob(self.space_id, blob_id))
                            if not isinstance(reply, m.Blob):
                                raise ProtocolError(f"expected Blob, got {type(reply).__name__}")
                            data, nodes = bytes(reply.data), None
                        else:  # a provider: by verified ranges, each group checked on arrival (70.12)
                            data, nodes = await range_fetch.fetch_whole(conn, self.space_id, blob_id, self._partials)
                    await self._store_whole(key, blob_id, data, nodes)
                    return
                except (IntegrityError, ProtocolError) as e:
                    log.warning("%s sent a bad blob %s: %s; disconnecting", key, label, e)
                    errors.append(f"{key}: {e}")
                    await conn.abort("sent a blob that does not match its ID")
                except (RemoteError, NetworkError, trio.TooSlowError) as e:
                    errors.append(f"{key}: {e or 'timed out'}")
            if trio.current_time() >= deadline:
                break
            # Nobody had it (yet: the writer may still be uploading) or nobody is connected: wait for a new
            # connection or a second, then ask everyone again.
            with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
                await self._conn_changed.wait()
            tried.clear()
        raise NotFound(f"blob {label} could not be fetched ({'; '.join(errors[-2:]) or 'no peer reachable'})")

    async def _store_whole(self, key: str, blob_id: bytes, data: bytes, nodes: bytes | None) -> None:
        """Store a blob fetched whole from ``key``: verify and write the file without the mount's lock (hashing
        and fsync take milliseconds: file-system requests go on meanwhile), then index it under the lock. A
        provider answers only with blobs it stores: the cache may evict it. A device may evict its own copy: not
        a confirmation."""
        await trio.to_thread.run_sync(self.replica.write_fetched_blob, blob_id, data, nodes)
        await trio.to_thread.run_sync(self._partials.delete, blob_id)
        confirmed = not self._is_device.get(key, False)
        await self.run(functools.partial(self.replica.index_fetched_blob, remote_confirmed=confirmed),
                       blob_id, len(data))

    async def fetch_blob_ranges(self, blob_id: bytes, ranges: Sequence[tuple[int, int]],
                                timeout: float | None = None) -> None:
        """Get the 16 KiB groups holding ``ranges`` of a blob this device lacks, by verified ranges (70.12) from
        a connected provider (the next one when a provider fails or sends bad data), into the partial blob that
        the read path reads (50.9). Only the groups not held yet are asked for, in one ``GetBlobRanges``: a
        4 KiB read of an uncached chunk moves the 5 (rarely 6) groups of one sealed 64 KiB segment, the blob's
        last group (which proves its length) and their proof nodes, ~83 KB, not the ~1 MiB blob. Every group is
        verified before a byte of it is recorded; a provider that sends a bad one is disconnected and the next
        one asked.

        When no provider is connected but a member's device is (devices answer whole ``GetBlob`` only), or when
        the ranges do not fit the blob (a compressed chunk's blob is shorter than the read assumed), the whole
        blob is fetched instead (:meth:`fetch_blob`). Returns once the ranges are held (or the whole blob);
        :class:`NotFound` as :meth:`fetch_blob`."""
        if self.replica.blobs.has(blob_id):
            return
        deadline = trio.current_time() + (timeout if timeout is not None else self.fetch_timeout)
        # Readers of the same ranges at once (the kernel sends reads in parallel) share one request: a later one
        # waits for it, then asks only for what is still missing (usually nothing).
        key = (blob_id, tuple((int(o), int(n)) for o, n in ranges))
        ev = self._fetching_ranges.get(key)
        if ev is not None:
            with trio.move_on_at(deadline):
                await ev.wait()
            return await self._fetch_ranges(blob_id, ranges, deadline)
        ev = self._fetching_ranges[key] = trio.Event()
        try:
            await self._fetch_ranges(blob_id, ranges, deadline)
        finally:
            ev.set()
            del self._fetching_ranges[key]

    async def _fetch_ranges(self, blob_id: bytes, ranges: Sequence[tuple[int, int]], deadline: float) -> None:
        label = ids.to_text(ids.PREFIX_BLOB, blob_id)[:20] + "…"
        tried: set[str] = set()
        errors: list[str] = []
        while True:
            length, missing = await trio.to_thread.run_sync(self._partials.missing_groups, blob_id, ranges)
            if not missing:
                return
            wanted = _group_runs(missing, length)
            if len(wanted) > m.MAX_RANGES or len(missing) > m.MAX_SLICE_GROUPS:
                break  # more than one answer can hold: the whole blob, in windows
            open_conns = [(k, c) for k, c in self._conns.items() if not c.closed.is_set()]
            providers_ = [(k, c) for k, c in open_conns if not self._is_device.get(k, False) and k not in tried]
            if not providers_ and any(self._is_device.get(k, False) for k, _ in open_conns):
                break  # only members' devices: they serve whole blobs
            for key, conn in providers_:
                tried.add(key)
                try:
                    with trio.fail_at(min(deadline, trio.current_time() + BLOB_ATTEMPT_S)):
                        got_length, items = await range_fetch.fetch_ranges(
                            conn, self.space_id, blob_id, wanted, length=length,
                            max_length=self._partials.max_blob_len)
                except (IntegrityError, ProtocolError) as e:
                    log.warning("%s sent a bad blob %s: %s; disconnecting", key, label, e)
                    errors.append(f"{key}: {e}")
                    await conn.abort("sent a blob that does not match its ID")
                    continue
                except RemoteError as e:
                    if e.code == m.ErrorCode.BAD_REQUEST:  # the ranges run outside the blob: not a chunk read by
                        return await self._fetch_whole_for_read(blob_id, deadline)  # ranges (compressed)
                    errors.append(f"{key}: {e}")
                    continue
                except (NetworkError, trio.TooSlowError) as e:
                    errors.append(f"{key}: {e or 'timed out'}")
                    continue
                await trio.to_thread.run_sync(self._partials.record, blob_id, got_length, items)
                done = await trio.to_thread.run_sync(self._partials.complete_data, blob_id)
                if done is not None:  # every group is here now (a small blob, or read through): a blob file
                    await self._store_whole(key, blob_id, *done)
                return
            if trio.current_time() >= deadline:
                raise NotFound(f"blob {label} could not be fetched ({'; '.join(errors[-2:]) or 'no peer reachable'})")
            with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
                await self._conn_changed.wait()
            tried.clear()
        await self._fetch_whole_for_read(blob_id, deadline)

    async def _fetch_whole_for_read(self, blob_id: bytes, deadline: float) -> None:
        await self.fetch_blob(blob_id, timeout=max(0.0, deadline - trio.current_time()))

    def _via_rank(self, key: str) -> int:
        st = self.peers.get(key)
        return {"mdns": 0, "address record": 1}.get(st.via if st else "", 2)

    async def hold_connection(self, addr: PeerAddress) -> None:
        """Keep one connection open for blob fetches (no sync), until cancelled or it breaks."""
        key = str(addr)
        try:
            conn = await self.endpoint.dial(addr)
        except (NetworkError, IntegrityError, ProtocolError) as e:
            log.info("%s: %s", key, e)
            return
        try:
            self._conns[key] = conn
            self._conn_changed.set()
            self._conn_changed = trio.Event()
            await conn.serve()
        except (NetworkError, IntegrityError, ProtocolError) as e:
            log.info("%s: %s", key, e)
        finally:
            self._conns.pop(key, None)
            await conn.abort("done")

    # ------------------------------------------------------------------------------------------ one-shot
    async def sync_once(self, progress: Progress | None = None, *, per_peer_timeout: float = 600.0) -> SyncReport:
        """One full reconciliation with every known peer, then return (``anysyncfs sync``)."""
        report = SyncReport()
        addresses = await self.addresses()
        report.peers = len(addresses)
        for addr in addresses:
            key = str(addr)
            st = self.peers.setdefault(key, PeerStatus(key))
            try:
                with trio.fail_after(per_peer_timeout):
                    conn = await self.endpoint.dial(addr, on_notify=None)
                    try:
                        work = functools.partial(self.sync_with, conn, st, progress)
                        fetched, sent, uploaded = await while_serving(conn, work)
                    finally:
                        await conn.abort("sync done")
                report.reached += 1
                report.fetched += fetched
                report.sent += sent
                report.blobs_uploaded += uploaded
            except (AnysyncError, trio.TooSlowError) as e:  # one peer's failure never ends the others' sync
                msg = str(e) or "timed out"
                report.errors.append(f"{key}: {msg}")
                await self._note(key, ok=False, error=msg)
        return report

    def status(self) -> dict[str, object]:
        return {
            "space": ids.space_text(self.space_id),
            "pending_uploads": self.pending_uploads,
            "warnings": list(self.witness.warnings),
            **self.replica.unreadable.status(),  # accepted changes whose payload does not open or decode here
            "peers": [vars(p) | {"next_attempt": p.next_attempt if math.isfinite(p.next_attempt) else 0}
                      for p in self.peers.values()],
        }


def _group_runs(groups: list[int], length: int | None) -> list[tuple[int, int]]:
    """Byte ranges covering runs of consecutive ``groups`` (sorted), cut at ``length`` when it is known."""
    runs: list[list[int]] = []
    for g in groups:
        if runs and runs[-1][1] == g:
            runs[-1][1] = g + 1
        else:
            runs.append([g, g + 1])
    out = []
    for lo, hi in runs:
        start, end = lo * bao.GROUP_LEN, hi * bao.GROUP_LEN
        if length is not None:
            end = min(end, length)
        out.append((start, end - start))
    return out


async def fetch_then_send(failures: list[AnysyncError], fetching: Awaitable[T], default: T) -> T:
    """Await a fetching step of a sync round; if it fails but the connection may still carry requests, note the
    failure in ``failures`` and return ``default``, so that the sending steps that follow still run (one bad change
    or a refused fetch must never stop this device's pushes). A broken connection (NetworkError) and cancellation
    propagate at once: nothing could be sent anyway."""
    try:
        return await fetching
    except NetworkError:
        raise
    except AnysyncError as e:  # IntegrityError, ProtocolError, RemoteError, StoreError, …
        log.warning("fetching failed (%s); still sending what the peer lacks", e)
        failures.append(e)
        return default


async def for_each_limited(items: Sequence[T], fn: Callable[[T], Awaitable[None]], limit: int) -> None:
    """Run ``fn`` on every item, at most ``limit`` at once; the first failure cancels the rest and is raised as
    itself (not wrapped in an ExceptionGroup, so callers' ``except NetworkError`` keep working)."""
    failure: list[BaseException] = []
    sem = trio.Semaphore(limit)

    async def one(item: T, cancel: trio.CancelScope) -> None:
        try:
            await fn(item)
        except Exception as e:  # noqa: BLE001 - handed to the caller below
            if not failure:
                failure.append(e)
            cancel.cancel()
        finally:
            sem.release()

    async with trio.open_nursery() as nursery:
        for item in items:
            await sem.acquire()
            if failure:
                sem.release()
                break
            nursery.start_soon(one, item, nursery.cancel_scope)
    if failure:
        raise failure[0]
