"""One space on this device: verified ACL, DAG and folded tree, backed by the store and the blob files.

Every change that enters — made here (:meth:`Replica.commit`) or received (:meth:`Replica.ingest_batch`) — is
verified (ID, signature, ACL) before it is stored, stored before it is applied, and applied in fold order. The
folded tree is cached in the store (``nodes``/``entries``) together with the heads it was folded at, so opening a
replica never replays the DAG unless the cache is stale.

Received changes go through the same checks as on a provider (:mod:`.ledger`), and a Replica offers the sync
layer the same interface as a :class:`~.ledger.Ledger` (:class:`~.ledger.SpaceData`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Iterable, Sequence

from ..clock import now_us
from ..core import acl as acl_mod
from ..core import blob, blob_refs, crypto, ids, ops, space, tree, validate
from ..core.change import MAX_PARENTS, Change, make_change, parse_change
from ..core.chunking import ChunkParams, chunker_key
from ..core.dag import Dag
from ..errors import BlobMissing, DecodeError, IntegrityError, NotFound, PermissionDenied, RangesMissing, UsageError
from ..store import schema
from ..store.blobfiles import BlobFiles
from ..store.db import Store
from ..store.partial import PartialBlobs
from . import ledger, treecache
from .home import Unlocked
from .ledger import IngestResult  # lives in ledger now; importing it from here keeps working
from .unreadable import UnreadableChanges

log = logging.getLogger(__name__)

FOLD_VERSION = 3  # bump when fold rules or the node/entry serialisation change: cached trees are rebuilt
# (2: rows sealed under their own ID and covered by a keyed stamp, docs/protocol.md 60.3)


def heads_digest(heads: Iterable[bytes]) -> bytes:
    return crypto.blake3(b"".join(sorted(heads)))


def _empty_tree_stamp(unlocked: Unlocked, space_id: bytes) -> bytes:
    """The stamp of the empty cached tree of a new space (no heads, no rows)."""
    codec = treecache.TreeCodec(unlocked.identity.account.seed, space_id)
    return codec.stamp(heads_digest(()), 0, FOLD_VERSION, treecache.RowSet())


def create_space(unlocked: Unlocked, name: str, *, chunking: space.Chunking | None = None) -> "Replica":
    """Create a new space owned by this identity; remember its epoch-0 key in the keyring."""
    store = unlocked.home.store()
    if any(r.name == name for r in store.spaces()):
        raise UsageError(f"a space named {name!r} already exists here")
    owner = unlocked.identity.account
    created = now_us()
    header = space.make_space_header(owner, created, chunking=chunking)
    parsed = space.parse_space_header(header)
    epoch0 = crypto.random_bytes(crypto.KEY_LEN)
    genesis = acl_mod.make_genesis(owner, header, epoch0, created)
    record = acl_mod.parse_record(genesis)
    unlocked.remember_keys(parsed.id, {0: epoch0})
    with store.transaction():
        store.add_space(parsed.id, name, header)
        store.add_acl_record(parsed.id, record.id, genesis)
        store.set_tree_meta(parsed.id, _empty_tree_stamp(unlocked, parsed.id), 0, FOLD_VERSION)
    return Replica(unlocked, store, unlocked.home.blobs(), parsed.id)


def adopt_space(unlocked: Unlocked, name: str, header_raw: bytes, acl_raws: Sequence[bytes]) -> "Replica":
    """Start holding an existing space from its signed header and ACL records (all verified first).

    Changes then arrive through :meth:`Replica.ingest`; this is how a second device or a new member begins.
    """
    store = unlocked.home.store()
    parsed = space.parse_space_header(header_raw)
    records = [acl_mod.parse_record(raw) for raw in acl_raws]
    acl_mod.fold(parsed.id, records)  # raises unless there is a valid genesis for this space
    if any(r.id == parsed.id for r in store.spaces()):
        raise UsageError("this device already holds that space")
    with store.transaction():
        store.add_space(parsed.id, name, header_raw)
        for r in records:
            store.add_acl_record(parsed.id, r.id, r.raw)
        store.set_tree_meta(parsed.id, _empty_tree_stamp(unlocked, parsed.id), 0, FOLD_VERSION)
    return Replica(unlocked, store, unlocked.home.blobs(), parsed.id)


def resolve_space(store: Store, text: str) -> bytes:
    """A space by ID text (``sp-…``) or by its local name."""
    rows = store.spaces()
    for r in rows:
        if r.name == text or ids.space_text(r.id) == text:
            return r.id
    raise NotFound(f"unknown space {text!r}")


def open_replica(unlocked: Unlocked, text: str) -> "Replica":
    store = unlocked.home.store()
    return Replica(unlocked, store, unlocked.home.blobs(), resolve_space(store, text))


class Replica:
    def __init__(
        self, unlocked: Unlocked, store: Store, blobs: BlobFiles, space_id: bytes, *, read_only: bool = False
    ) -> None:
        """Open a space. ``read_only`` (fsck) never writes: a stale tree cache is refolded in memory only."""
        self.read_only = read_only
        self.unlocked = unlocked
        self.identity = unlocked.identity
        self.store = store
        self.blobs = blobs
        # The verified 16 KiB groups of blobs fetched by ranges (protocol.md 50.9): reads use them like blob files.
        self.partials = PartialBlobs(blobs.root / "partial", max_blob_len=blobs.max_blob_len)
        self.space_id = space_id
        row = store.space(space_id)
        self.name = row.name
        self.header = space.parse_space_header(row.header, space_id)
        self.acl = self._fold_acl()
        self.keys = self._epoch_keys()
        self._dag: Dag | None = None
        self._codec = treecache.TreeCodec(self.identity.account.seed, space_id)
        self._rows = treecache.RowSet()  # what the stamp covers of the stored rows (kept current by _persist)
        self.tree_cache_problem: str | None = None  # why the cached tree was not used at open (fsck reports it)
        self.heads: tuple[bytes, ...] = store.heads(space_id)
        self.unreadable = UnreadableChanges(store, space_id)
        # A mount sets this to a TreeDelta: what changes it did not make itself altered in the tree (received ones,
        # other processes' commits picked up, refolds) collects there until the mount takes it to invalidate the
        # kernel's caches. Its own commits applied on top are not recorded: the kernel saw them happen.
        self.landed: tree.TreeDelta | None = None
        self.tree = self._load_tree()

    # ------------------------------------------------------------------------------------------ ACL and keys
    def _fold_acl(self) -> acl_mod.AclView:
        records = []
        for rid, raw in self.store.acl_records(self.space_id):
            records.append(acl_mod.parse_record(raw, rid))
        self._acl_stored = len(records)
        return acl_mod.fold(self.space_id, records)

    def refresh_acl(self) -> bool:
        """Pick up ACL records another process stored meanwhile (``anysyncfs space invite/role/remove`` while
        the space is mounted); True if the canonical chain moved."""
        if self.store.count_acl_records(self.space_id) == self._acl_stored:
            return False
        old_acl, old_keys = self.acl, self.keys
        self.acl = self._fold_acl()
        self.keys = self._epoch_keys()
        if self._needs_refold(old_acl, old_keys):
            self.refold(revalidate=True)
        return self.acl.head != old_acl.head

    def _needs_refold(self, old: acl_mod.AclView, old_keys: dict[int, bytes]) -> bool:
        """Whether accepted changes must be re-validated and the tree refolded after the ACL moved from ``old``.

        Records appended to the chain leave every accepted change valid (each was judged at the head it cites),
        except a removal or a demotion below writer (their last-changes rule can invalidate backdated changes); a
        fork switch can drop the records changes cite; new epoch keys can reveal changes that could not be read
        before. Anything else — an invite, a join, a role change — needs no refold (measured: a refold costs ~0.26 ms per change)."""
        new = self.acl
        if new.head == old.head:
            return False
        pos = new.position(old.head)
        if pos is None:
            return True
        for i in range(pos + 1, len(new.chain)):  # a removal, or a demotion below writer (reduction rule)
            before = new.state_at(new.chain[i - 1])
            assert before is not None
            if acl_mod.reduces_below_writer(new.records[i].kind, before) is not None:
                return True
        return set(self.keys) != set(old_keys)

    def _epoch_keys(self) -> dict[int, bytes]:
        keys = self.unlocked.epoch_keys(self.space_id)
        try:
            from_acl = acl_mod.epoch_keys(self.acl, self.identity.account)
        except IntegrityError as e:
            log.warning("space %s: cannot open epoch keys from the ACL: %s", ids.space_text(self.space_id), e)
            from_acl = {}
        if any(keys.get(e) != k for e, k in from_acl.items()):
            keys.update(from_acl)
            if not self.read_only:
                self.unlocked.remember_keys(self.space_id, keys)
        return keys

    def add_acl_record(self, raw: bytes, expected_id: bytes | None = None) -> bool:
        """Verify and store an ACL record; re-validate changes and refold if the canonical chain moved."""
        return self._add_acl([acl_mod.parse_record(raw, expected_id)]) == 1

    def add_acl_records(self, raws: Sequence[bytes]) -> int:
        """Verify every record first (:class:`IntegrityError`: nothing stored), store the new ones, then refold
        the ACL once (and the tree, re-validating changes, if the canonical chain moved). Returns how many were new."""
        return self._add_acl([acl_mod.parse_record(raw) for raw in raws])

    def _add_acl(self, records: Sequence[acl_mod.AclRecord]) -> int:
        try:
            with self.store.transaction():
                added = ledger.store_acl_records(self.store, self.space_id, records)
                if added:
                    old_acl, old_keys = self.acl, self.keys
                    self.acl = self._fold_acl()
                    self.keys = self._epoch_keys()
                    if self._needs_refold(old_acl, old_keys):
                        self.refold(revalidate=True)
        except BaseException:
            self.acl = self._fold_acl()
            self._reload()
            raise
        return added

    def acl_raws(self) -> list[tuple[bytes, bytes]]:
        """(id, raw) of every stored ACL record, in ID order."""
        return self.store.acl_records(self.space_id)

    def acl_ids(self) -> list[bytes]:
        return [rid for rid, _raw in self.store.acl_records(self.space_id)]

    @property
    def header_raw(self) -> bytes:
        """The signed space header, verbatim."""
        return self.header.raw

    @property
    def role(self) -> acl_mod.Role | None:
        return self.acl.current.members.get(self.identity.account_id)

    def role_of(self, account: bytes) -> acl_mod.Role | None:
        """The current role of an account (None: not a member)."""
        return self.acl.current.role_of(account)

    # ------------------------------------------------------------------------------------------ DAG
    @property
    def dag(self) -> Dag:
        if self._dag is None:
            self._dag = ledger.load_dag(self.store, self.space_id)
        return self._dag

    def change_ids(self) -> list[bytes]:
        """IDs of the accepted changes, in ID order."""
        return self.store.accepted_change_ids(self.space_id)

    def rejected_ids(self) -> set[bytes]:
        return set(self.store.rejected_change_ids(self.space_id))

    def unreadable_changes(self) -> dict[bytes, str]:
        """{id: reason} of the accepted changes whose payload does not open or decode here (skipped by the fold)."""
        return dict(self.unreadable.marks)

    def get_changes(self, change_ids: Sequence[bytes], max_bytes: int) -> list[bytes]:
        """Raws of accepted changes of this space among ``change_ids`` (in that order), stopping before
        ``max_bytes`` would be exceeded (at least one)."""
        return ledger.select_changes(self.store, self.space_id, change_ids, max_bytes)

    # ------------------------------------------------------------------------------------------ tree cache
    def _load_tree(self) -> tree.TreeState:
        for _attempt in range(3):  # the mount may commit between these reads (another process): then read again
            meta = self.store.tree_meta(self.space_id)
            if meta is None or meta[2] != FOLD_VERSION:
                break  # no cache, or one of an older build: rebuilt without a word
            try:
                state, rows = self._tree_from_rows()
            except DecodeError as e:
                self.tree_cache_problem = f"is unreadable ({e})"
            else:
                stamp = self._codec.stamp(heads_digest(self.heads), meta[1], FOLD_VERSION, rows)
                if crypto.ct_equal(meta[0], stamp):
                    self._rows, self.tree_cache_problem = rows, None
                    return state
                self.tree_cache_problem = "does not match its keyed stamp (stale or modified rows)"
            heads = self.store.heads(self.space_id)
            if heads == self.heads and self.store.tree_meta(self.space_id) == meta:
                break  # nothing moved meanwhile: the rows themselves are wrong
            self.heads = heads
        if self.tree_cache_problem is not None:
            log.warning("space %s: cached tree %s; refolding", ids.space_text(self.space_id), self.tree_cache_problem)
        if self.read_only:
            return self.fresh_fold()
        return self.refold()

    def _tree_from_rows(self) -> tuple[tree.TreeState, treecache.RowSet]:
        # Loading allocates hundreds of thousands of objects with no cycles: pausing the cyclic GC meanwhile
        # avoids repeated full collections (measured: a large share of the reopen time of a big tree).
        enabled = gc.isenabled()
        gc.disable()
        try:
            node_rows, entry_rows = self.store.tree_rows(self.space_id)
            return self._codec.decode_tree([(node, state) for _inode, node, state in node_rows], entry_rows)
        finally:
            if enabled:
                gc.enable()

    def _persist(self, state: tree.TreeState, touched: set[bytes] | None) -> None:
        """Write the folded tree rows (all of them, or those of ``touched`` nodes) and the cache stamp."""
        codec = self._codec
        if touched is None:
            self.store.clear_tree(self.space_id)
            node_list = list(state.nodes.values())
            entry_list = list(state.entries.values())
            rows, old_nodes, old_entries = treecache.RowSet(), {}, {}
        else:
            node_list = [state.nodes[n] for n in touched if n in state.nodes]
            entry_list = list({e.id: e for n in touched for e in state.entries_of(n)}.values())  # each row once
            rows = dataclasses.replace(self._rows)  # adopted below, once the rows and the stamp are written
            old_nodes, old_entries = self.store.tree_row_states(
                self.space_id, [n.id for n in node_list], [e.id for e in entry_list])
        node_rows = [(n.id, n.kind, n.content.size, n.version, codec.encode_node(n)) for n in node_list]
        entry_rows = [(e.id, e.parent, e.node, e.live, codec.encode_entry(e)) for e in entry_list]
        for r in node_rows:
            codec.replace(rows, treecache.KIND_NODE, r[0], old_nodes.get(r[0]), r[4])
        for r in entry_rows:
            codec.replace(rows, treecache.KIND_ENTRY, r[0], old_entries.get(r[0]), r[4])
        self.store.upsert_nodes(self.space_id, node_rows)
        self.store.upsert_entries(self.space_id, entry_rows)
        count = len(self.dag)
        self.store.set_tree_meta(self.space_id, codec.stamp(heads_digest(self.heads), count, FOLD_VERSION, rows),
                                 count, FOLD_VERSION)
        self.unreadable.flush()
        self._rows = rows

    def fresh_fold(self, heads: Sequence[bytes] | None = None) -> tree.TreeState:
        """Fold the accepted changes (all, or the ancestors of ``heads``) from scratch, verifying each one."""
        wanted = None if heads is None else self.dag.ancestors(heads)
        state = tree.TreeState()
        for cid, raw in self.store.iter_change_raws(self.space_id):
            if wanted is not None and cid not in wanted:
                continue
            change = parse_change(raw, cid)
            self._apply(state, change)
        return state

    def refold(self, *, revalidate: bool = False) -> tree.TreeState:
        """Rebuild the cached tree from the DAG (after a change arrived out of order or the ACL moved)."""
        with self.store.transaction():
            if revalidate:
                self._revalidate()
            self._replace_tree(self.fresh_fold())
            self._persist(self.tree, None)
        return self.tree

    def _replace_tree(self, state: tree.TreeState) -> None:
        """Adopt a new fold (refold, reload): a mount is told what differs from the tree it showed."""
        old: tree.TreeState | None = getattr(self, "tree", None)  # None while the replica opens
        self.tree = state
        if self.landed is not None and old is not None and old is not state:
            self.landed.merge(tree.tree_delta(old, state))

    def _revalidate(self) -> None:
        """Re-check every accepted change against the current ACL (a removal can invalidate backdated ones, and
        whatever was built on them)."""
        self._dag = ledger.revalidate(self.store, self.space_id, self.acl)
        self.heads = self._dag.heads()
        self.store.set_heads(self.space_id, self.heads)

    def _apply(self, state: tree.TreeState, change: Change) -> set[bytes]:
        key = self.keys.get(change.header.epoch)
        if key is None:
            log.warning("no key for epoch %d: change %s not shown", change.header.epoch,
                        ids.change_text(change.id)[:20])
            return set()
        payload = self.unreadable.ops_of(change, key)
        if payload is None:  # does not open or decode: a DAG member without ops (logged and marked once)
            return set()
        info = tree.ChangeInfo(change.id, change.header.lamport, change.header.author, change.header.wall_us)
        return state.apply(info, payload, self.dag.is_ancestor)

    # ------------------------------------------------------------------------------------------ writing
    def current_epoch_key(self) -> tuple[int, bytes]:
        epoch = self.acl.current.epoch
        key = self.keys.get(epoch)
        if key is None:
            raise PermissionDenied(f"this device holds no key for epoch {epoch} of the space")
        return epoch, key

    def check_writable(self) -> None:
        role = self.role
        if role is None:
            raise PermissionDenied("you are not a member of this space")
        if role < acl_mod.Role.WRITER:
            raise PermissionDenied("read-only: you are a reader in this space")

    def chunk_key_base(self) -> bytes:
        """Chunk keys are convergent within the current key epoch."""
        return blob.chunk_key_base(self.current_epoch_key()[1])

    @property
    def chunk_params(self) -> ChunkParams:
        """The header's sizes, keyed with the space's chunker key (from the epoch-0 key, which every member can
        open: issue 10 item 5). A device that cannot open epoch 0 (a damaged key chain) keys with its oldest
        epoch: still secret, it only loses dedup against the other devices."""
        c = self.header.chunking
        if not self.keys:
            raise PermissionDenied("this device holds no key of the space")
        oldest = min(self.keys)
        if oldest != 0:
            log.warning("no key for epoch 0: chunking keyed with epoch %d (less dedup with other devices)", oldest)
        return ChunkParams(c.min_size, c.avg_size, c.max_size, key=chunker_key(self.keys[oldest]))

    def commit(self, payload_ops: list[ops.Op], *, wall_us: int | None = None) -> Change:
        """Sign, encrypt, verify, store and apply one change made of ``payload_ops`` (atomically).

        The change survives a crash of this process as soon as this returns; call :meth:`sync` to make it
        survive power loss too (fsync does)."""
        self.check_writable()
        epoch, key = self.current_epoch_key()
        dag = self.dag
        parents = self.heads
        if len(parents) > MAX_PARENTS:  # merge the newest heads now; the rest are merged by later changes
            parents = tuple(sorted(parents, key=lambda h: (dag.lamport(h), h))[-MAX_PARENTS:])
        lamport = dag.next_lamport(parents)
        change = make_change(
            self.identity.account, self.identity.device_id, self.space_id, parents, lamport,
            wall_us if wall_us is not None else now_us(), self.acl.head, epoch, key,
            ops.encode_payload(payload_ops), blob_refs=blob_refs.writer_refs(payload_ops, self.get_blob),
        )
        validate.check_change(change, self.space_id, dag, self.acl)
        self._store_and_apply(change, incremental=self._sorts_last(change))
        return change

    def sync(self) -> None:
        """Make every change committed so far durable (blob files are fsynced when written)."""
        self.store.sync()

    def _sorts_last(self, change: Change) -> bool:
        """True when ``change`` comes after every known change in fold order (so it can be applied on top)."""
        last = self.dag.last()
        if last is None:
            return True
        return (change.header.lamport, change.id) > (self.dag.lamport(last) or 0, last)

    def _store_and_apply(self, change: Change, *, incremental: bool) -> None:
        h = change.header
        try:
            with self.store.transaction():
                self.store.add_change(self.space_id, change.id, change.raw, h.parents, h.lamport, h.author,
                                      h.wall_us, schema.CHANGE_ACCEPTED)
                if self._committed_elsewhere():
                    incremental = False  # the reloaded DAG holds this change and the other process's
                else:
                    self.dag.add(change.id, h.parents, h.lamport)
                self.heads = self.dag.heads()
                self.store.set_heads(self.space_id, self.heads)
                self._fold_in([change], incremental=incremental, own=True)
        except BaseException:
            self._reload()
            raise

    def _committed_elsewhere(self) -> bool:
        """(Inside a write transaction, after its first write: the store's heads are the latest committed.)
        Whether another process on this device (``anysyncfs put`` beside ``sync --watch`` or a mount) committed
        since this replica last loaded its heads. If so the DAG is dropped, to be reloaded from the store with
        both sides' changes: heads computed from our stale DAG alone would overwrite the stored heads and lose
        the other process's change from them (and ``pick_up_commits`` would then never see it)."""
        if set(self.store.heads(self.space_id)) == set(self.heads):
            return False
        log.info("space %s: another process committed meanwhile; reloading the change graph",
                 ids.space_text(self.space_id)[:16])
        self._dag = None
        return True

    def _fold_in(self, changes: Sequence[Change], *, incremental: bool, own: bool = False) -> None:
        """Bring the tree (and its cached rows) up to date with newly stored changes: applied on top, in fold
        order, when they all sort after what was folded before; else one refold from scratch. ``own``: this
        replica's commit (not recorded in :attr:`landed` when applied on top: its mount made it)."""
        if incremental:
            touched: set[bytes] = set()
            landed = None if own else self.landed
            # The fold itself notes the names it takes away (see TreeIndex._note_names): the cost is per op, not
            # per node of the tree, so a mount learns what to invalidate without scanning anything.
            self.tree.note_names(landed.names if landed is not None else None)
            try:
                for change in changes:
                    touched |= self._apply(self.tree, change)
            finally:
                self.tree.note_names(None)
            if landed is not None:
                landed.nodes |= touched
            self._persist(self.tree, touched)
        else:
            self._replace_tree(self.fresh_fold())
            self._persist(self.tree, None)

    def _reload(self) -> None:
        """After a failed write the in-memory state may be ahead of the store: reload it from what was committed."""
        self._dag = None
        self.heads = self.store.heads(self.space_id)
        self.unreadable.reload()
        self._replace_tree(self._load_tree())

    def pick_up_commits(self) -> bool:
        """Another process (``anysyncfs put`` beside ``sync --watch``) committed: load its changes. True if any."""
        if self.store.heads(self.space_id) == self.heads:
            return False
        self._reload()
        return True

    # ------------------------------------------------------------------------------------------ receiving
    def ingest(self, raw: bytes, expected_id: bytes | None = None) -> IngestResult:
        """Verify and apply one change received from elsewhere (:meth:`ingest_batch` of one)."""
        return self._ingest_changes([parse_change(raw, expected_id)])[0]

    def ingest_batch(self, raws: Sequence[bytes]) -> list[IngestResult]:
        """Verify, store and apply received changes; one result per raw, in order (see :mod:`.ledger`).

        Every raw is parsed first: forged or corrupt bytes raise :class:`IntegrityError` with nothing stored.
        The batch is stored in one transaction. If every accepted change sorts after the last change known
        before, they are applied on top of the tree in order; otherwise the tree is refolded once."""
        return self._ingest_changes(ledger.parse_changes(raws))

    def _ingest_changes(self, changes: Sequence[Change]) -> list[IngestResult]:
        dag = self.dag
        last = dag.last()
        try:
            plan = ledger.plan_batch(self.store, self.space_id, dag, self.acl, changes)
            if not plan.stores_anything:
                return plan.results
            # plan.accepted is in fold order, so its first change decides whether all of them come last.
            incremental = not plan.accepted or last is None or (
                (plan.accepted[0].header.lamport, plan.accepted[0].id) > (dag.lamport(last) or 0, last)
            )
            with self.store.transaction():
                ledger.store_batch(self.store, self.space_id, plan)
                if plan.accepted:
                    if self._committed_elsewhere():
                        incremental = False
                    self.heads = self.dag.heads()
                    self.store.set_heads(self.space_id, self.heads)
                    self._fold_in(plan.accepted, incremental=incremental)
        except BaseException:
            self._reload()
            raise
        return plan.results

    # ------------------------------------------------------------------------------------------ blobs
    def store_blob(self, blob_id: bytes, data: bytes) -> None:
        """Write a blob made here durably, index it and queue it for upload (before any change that references
        it is committed)."""
        self.blobs.put(blob_id, data)
        self.store.index_blob(blob_id, len(data))
        self.store.queue_upload(self.space_id, [blob_id])

    def put_fetched_blob(self, blob_id: bytes, data: bytes, *, remote_confirmed: bool = False) -> bool:
        """Store a blob fetched from a peer or provider: verified (:class:`IdMismatch`; :class:`DecodeError` when
        too large), written durably and indexed, but not queued for upload (it came from elsewhere).
        ``remote_confirmed``: it came from a provider, so the cache may evict it. False if it was here already."""
        new = self.write_fetched_blob(blob_id, data)
        self.index_fetched_blob(blob_id, len(data), remote_confirmed=remote_confirmed)
        return new

    def write_fetched_blob(self, blob_id: bytes, data: bytes, nodes: bytes | None = None) -> bool:
        """The file half of :meth:`put_fetched_blob`: verify and write the blob file. Touches no replica or
        store state, so the sync engine runs it without the mount's lock (file systems calls go on meanwhile).
        False if the blob was here already."""
        ledger.check_blob(blob_id, data)
        new = not self.blobs.has(blob_id)
        self.blobs.put(blob_id, data, verified=True, nodes=nodes)  # nodes: the outboard a range fetch verified
        return new

    def index_fetched_blob(self, blob_id: bytes, size: int, *, remote_confirmed: bool = False) -> None:
        """The store half of :meth:`put_fetched_blob` (under the lock)."""
        self.store.index_blob(blob_id, size, remote_confirmed=remote_confirmed)

    def put_blob(self, blob_id: bytes, data: bytes, nodes: bytes | None = None) -> bool:
        """:meth:`put_fetched_blob` under the name :class:`~.ledger.SpaceData` uses."""
        new = self.write_fetched_blob(blob_id, data, nodes)
        self.index_fetched_blob(blob_id, len(data))
        return new

    def has_blob(self, blob_id: bytes) -> bool:
        return self.blobs.has(blob_id)

    def get_blob(self, blob_id: bytes) -> bytes:
        """The verified bytes of a blob. :class:`BlobMissing` (a NotFound carrying ``blob_id``) when the file is not
        on this device, so a reader can wait for the sync layer to fetch it; :class:`IdMismatch` if damaged."""
        try:
            return self.blobs.get(blob_id)
        except NotFound:
            raise BlobMissing(
                blob_id, f"blob {ids.to_text(ids.PREFIX_BLOB, blob_id)[:20]}… is not on this device"
            ) from None

    def read_blob_ranges(self, blob_id: bytes, ranges: Sequence[tuple[int, int]]) -> tuple[int, list[bytes]]:
        """Some bytes of a local blob file, NOT verified (see :meth:`BlobFiles.read_ranges`): for the read path,
        which authenticates each AES-GCM segment it opens from them.

        A blob not here as a file is read from the verified groups of its partial blob (50.9) when they cover
        the ranges; else :class:`RangesMissing` (a :class:`BlobMissing`) names the ranges, so that the sync layer
        fetches only the groups holding them (70.12) rather than the whole blob."""
        for _attempt in range(2):  # a partial completed meanwhile has become a blob file: look once more
            try:
                return self.blobs.read_ranges(blob_id, ranges)
            except NotFound:
                pass
            got = self.partials.read_ranges(blob_id, ranges)
            if got is not None:
                return got
        raise RangesMissing(
            blob_id, tuple((int(o), int(n)) for o, n in ranges),
            f"ranges of blob {ids.to_text(ids.PREFIX_BLOB, blob_id)[:20]}… are not on this device")

    def prefetch_blob(self, blob_id: bytes) -> None:
        """Start reading a local blob file into the page cache (best effort; nothing if it is not here)."""
        self.blobs.prefetch(blob_id)

    def blob_ids(self) -> list[bytes]:
        """Blobs whose file is on this device, in ID order. Every local blob of this home, not only this space's:
        the blob index does not record spaces (blob IDs reveal nothing, and each blob is encrypted under its
        space's keys)."""
        return self.store.local_blob_ids()

    # ------------------------------------------------------------------------------------------ versions
    def materialise(self, heads: Sequence[bytes]) -> tree.TreeState:
        """The tree as it was when ``heads`` were the heads (read-only; for history and versions)."""
        for h in heads:
            if not self.dag.contains(h):
                raise NotFound(f"unknown change {ids.change_text(h)}")
        return self.fresh_fold(heads)

    def payloads(self) -> Iterable[tuple[Change, list[ops.Op]]]:
        """Every accepted change with its decrypted ops, in fold order (those whose key we lack, or whose payload
        does not open, decode or match its blob list, are skipped)."""
        for cid, raw in self.store.iter_change_raws(self.space_id):
            change = parse_change(raw, cid)
            key = self.keys.get(change.header.epoch)
            if key is None:
                continue
            payload = self.unreadable.ops_of(change, key)
            if payload is not None:
                yield change, payload

