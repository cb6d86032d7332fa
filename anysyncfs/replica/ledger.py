"""What a provider keeps of a space it cannot read, and the verification every holder of a space shares.

A provider (``anysyncfs node``) holds spaces without their keys. It can still refuse everything that is not
valid, because validity needs no keys: a change is accepted only if it decodes strictly, hashes to its ID, is
signed by its author (:func:`parse_change`) and passes :func:`validate.check_change` against the DAG and the
folded ACL; an ACL record only if :func:`acl.parse_record` verifies it (the fold then decides whether it is on the
canonical chain); a blob only if BLAKE3 of its bytes is its ID. A :class:`Ledger` is that keyless holder.

:class:`~anysyncfs.replica.replica.Replica` (a member's device) and :class:`Ledger` receive changes through the
same helpers here (:func:`plan_batch`, :func:`store_batch`, :func:`revalidate`) and offer the sync layer one
interface, :class:`SpaceData`.

Batch ingest. All changes of a batch are parsed first, so forged bytes (:class:`IntegrityError`: the peer is
hostile) leave nothing stored. The rest are taken in fold order (lamport, ID), which puts a parent before its
children, so a batch may carry a change together with its ancestors. Each gets one :class:`IngestResult`:

- ``applied``: accepted and stored (a replica also folded it into its tree);
- ``known``: already stored (accepted or rejected);
- ``missing-parents``: a parent is neither stored nor in the batch (``missing`` lists what to fetch); or the
  removal rule needs changes not seen yet (``missing`` lists the removal's last changes we lack). Not stored;
- ``missing-acl``: the change cites an ACL record this holder has never seen (``missing`` = its ID): fetch the
  ACL records and retry. Not stored, so it is not wrongly rejected for ever;
- ``rejected``: refused by the rules, or built on a rejected change. Stored with status rejected (so it is not
  fetched again) and never folded.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from ..core import acl as acl_mod
from ..core import crypto, ids, space, validate
from ..core.blob import MAX_BLOB_LEN
from ..core.change import Change, parse_change
from ..core.dag import Dag
from ..errors import DecodeError, IdMismatch, NotFound, Rejected
from ..store import schema
from ..store.blobstore import BlobStore
from ..store.db import Store
from . import blob_gc
from .quota import QuotaBook, QuotaExceeded

log = logging.getLogger(__name__)

class IngestStatus(enum.StrEnum):
    """What happened to a received change (see the module docstring). A StrEnum: the values are the words logs and
    tests have always shown, and a member compares equal to its word."""

    APPLIED = "applied"
    KNOWN = "known"
    MISSING_PARENTS = "missing-parents"
    MISSING_ACL = "missing-acl"
    REJECTED = "rejected"


APPLIED, KNOWN, REJECTED = IngestStatus.APPLIED, IngestStatus.KNOWN, IngestStatus.REJECTED
MISSING_PARENTS, MISSING_ACL = IngestStatus.MISSING_PARENTS, IngestStatus.MISSING_ACL
ACL_HISTORY_CHANGED = "ACL history changed: "  # reason prefix of a change rejected after it was accepted


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What happened to a received change (see the module docstring for the statuses)."""

    status: IngestStatus
    missing: tuple[bytes, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    """What a space occupies on a provider. Changes of either status count: both are stored; so do ACL records."""

    changes: int
    change_bytes: int
    blobs: int
    blob_bytes: int
    acl_records: int = 0
    acl_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.change_bytes + self.blob_bytes + self.acl_bytes


def measure_usage(store: Store, space_id: bytes) -> Usage:
    return Usage(*store.space_usage(space_id), *store.acl_usage(space_id))


def load_quota_book(store: Store, book: QuotaBook) -> QuotaBook:
    """Charge every space held to its owner in ``book`` (a provider starting up)."""
    for row in store.spaces():
        owner = space.parse_space_header(row.header, row.id).owner
        book.record(row.id, owner, measure_usage(store, row.id).total_bytes)
    return book


class ForkRefused(Rejected):
    """A provider refuses an ACL record that forks the chain when its author is no admin (:func:`refuse_forks`)."""


@runtime_checkable
class SpaceData(Protocol):
    """One space as the sync layer sees it, on a member's device (Replica) or on a provider (Ledger)."""

    @property
    def space_id(self) -> bytes: ...

    @property
    def header_raw(self) -> bytes: ...

    @property
    def heads(self) -> tuple[bytes, ...]: ...

    def role_of(self, account: bytes) -> acl_mod.Role | None: ...

    def acl_ids(self) -> list[bytes]: ...

    def acl_raws(self) -> list[tuple[bytes, bytes]]: ...

    def add_acl_records(self, raws: Sequence[bytes]) -> int: ...

    def change_ids(self) -> list[bytes]: ...

    def rejected_ids(self) -> set[bytes]: ...

    def get_changes(self, change_ids: Sequence[bytes], max_bytes: int) -> list[bytes]: ...

    def ingest_batch(self, raws: Sequence[bytes]) -> list[IngestResult]: ...

    def has_blob(self, blob_id: bytes) -> bool: ...

    def get_blob(self, blob_id: bytes) -> bytes: ...

    def put_blob(self, blob_id: bytes, data: bytes, nodes: bytes | None = None) -> bool: ...

    def blob_ids(self) -> list[bytes]: ...


# ---------------------------------------------------------------------------------------------------- shared
def parse_changes(raws: Sequence[bytes]) -> list[Change]:
    """Parse and verify every change (ID, signature) before anything is stored; IntegrityError on forged bytes."""
    return [parse_change(raw) for raw in raws]


def check_blob(blob_id: bytes, data: bytes | bytearray | memoryview) -> None:
    """A received blob must be within the size limit and hash to its ID (:class:`IdMismatch`)."""
    if len(data) > MAX_BLOB_LEN:
        raise DecodeError(f"blob of {len(data)} bytes exceeds the limit of {MAX_BLOB_LEN}")
    if not crypto.ct_equal(crypto.blake3(data), blob_id):
        raise IdMismatch("blob bytes do not hash to the blob ID")


def load_dag(store: Store, space_id: bytes) -> Dag:
    dag = Dag()
    for r in store.change_rows(space_id):
        dag.add(r.id, r.parents, r.lamport)
    return dag


def fold_acl(store: Store, space_id: bytes) -> acl_mod.AclView:
    records = [acl_mod.parse_record(raw, rid) for rid, raw in store.acl_records(space_id)]
    return acl_mod.fold(space_id, records)


def store_acl_records(store: Store, space_id: bytes, records: Sequence[acl_mod.AclRecord]) -> int:
    """Store the verified records of this space that are new; returns how many. Records of another space are
    skipped (the fold would drop them anyway)."""
    added = 0
    for r in records:
        if r.space_id != space_id:
            log.debug("skipping ACL record %s of another space", r.id.hex()[:16])
            continue
        if store.add_acl_record(space_id, r.id, r.raw):
            added += 1
    return added


def refuse_forks(space_id: bytes, held: Sequence[acl_mod.AclRecord], offered: Sequence[acl_mod.AclRecord]) -> None:
    """A provider takes a record whose previous record already has a valid child only from an admin or the owner
    at that previous record who still is one (:class:`Rejected` otherwise, nothing stored): the fork rule settles
    forks between admins, and nobody else has a reason to make one. Honest members whose record lost a race re-apply it on the
    new head (net/share.py)."""
    known = {r.id for r in held}
    new = [r for r in offered if r.id not in known and r.space_id == space_id]
    if not new:
        return
    view = acl_mod.fold(space_id, [*held, *new])
    children: dict[bytes, set[bytes]] = {}
    for r in held:
        if view.tree_state(r.id) is not None:
            children.setdefault(r.prev, set()).add(r.id)
    for r in new:
        if view.tree_state(r.id) is None:
            continue  # not allowed where it is: the fold drops it whatever else arrives
        siblings = children.setdefault(r.prev, set())
        if siblings - {r.id}:
            before = view.tree_state(r.prev)
            role = None if before is None else before.role_of(r.author)
            now = view.current.role_of(r.author)  # a removed or demoted admin forks no more (each fork costs folds)
            if role is None or role < acl_mod.Role.ADMIN or now is None or now < acl_mod.Role.ADMIN:
                raise ForkRefused(f"ACL record {r.id.hex()[:16]} forks the ACL at {r.prev.hex()[:16]}, which has a "
                               "record already; only a current admin or the owner may add another: rebuild it on the head")
        siblings.add(r.id)


def select_changes(store: Store, space_id: bytes, change_ids: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Raws of the accepted changes among ``change_ids`` (in that order; unknown ones skipped), stopping before
    ``max_bytes`` would be exceeded, but always at least one."""
    raws = store.change_raws_by_ids(space_id, change_ids)
    out: list[bytes] = []
    total = 0
    for cid in change_ids:
        raw = raws.pop(cid, None)  # pop: an ID asked for twice is sent once
        if raw is None:
            continue
        if out and total + len(raw) > max_bytes:
            break
        out.append(raw)
        total += len(raw)
    return out


@dataclass
class BatchPlan:
    """The verdicts on one batch. ``accepted`` are in fold order and already added to the DAG."""

    results: list[IngestResult]  # one per received raw, in the order received
    accepted: list[Change] = field(default_factory=list)
    rejected: list[tuple[Change, str]] = field(default_factory=list)

    @property
    def stored_bytes(self) -> int:
        """Bytes that storing the plan adds (accepted and rejected changes are both kept)."""
        return sum(len(c.raw) for c in self.accepted) + sum(len(c.raw) for c, _ in self.rejected)

    @property
    def stores_anything(self) -> bool:
        return bool(self.accepted or self.rejected)


def plan_batch(
    store: Store, space_id: bytes, dag: Dag, acl: acl_mod.AclView, changes: Sequence[Change]
) -> BatchPlan:
    """Judge parsed changes in fold order; every accepted one is added to ``dag`` (so its children in the batch
    validate). Stores nothing: the caller stores the plan (:func:`store_batch`) or, if it gives up, drops
    ``dag`` and rebuilds it from the store."""
    first_seen: dict[bytes, Change] = {}
    for c in changes:
        first_seen.setdefault(c.id, c)
    lookup = list(first_seen) + [p for c in first_seen.values() for p in c.header.parents if not dag.contains(p)]
    statuses = store.change_statuses(list(dict.fromkeys(lookup)))
    fresh = {cid: c for cid, c in first_seen.items() if cid not in statuses}

    def batch_parents(change_id: bytes) -> Sequence[bytes] | None:
        # The removal rule walks back from a removal's last changes; in a batch they may not be accepted yet.
        c = fresh.get(change_id)
        return None if c is None or dag.contains(change_id) else c.header.parents

    plan = BatchPlan(results=[])
    verdict: dict[bytes, IngestResult] = {cid: IngestResult(KNOWN) for cid in first_seen if cid in statuses}
    rejected_now: set[bytes] = set()

    def reject(change: Change, reason: str) -> None:
        plan.rejected.append((change, reason))
        rejected_now.add(change.id)
        verdict[change.id] = IngestResult(REJECTED, reason=reason)

    for change in sorted(fresh.values(), key=lambda c: (c.header.lamport, c.id)):
        h = change.header
        absent = [p for p in h.parents if not dag.contains(p)]
        if absent:
            if any(p in rejected_now or statuses.get(p) == schema.CHANGE_REJECTED for p in absent):
                reject(change, "built on a rejected change")
                continue
            if any(p in fresh and p not in verdict for p in absent):
                # The parent is in the batch but sorts after its child: the child's lamport is too small.
                reject(change, "lamport not greater than its parents'")
                continue
            # Waiting for something: for the parents themselves, or for what a parent in the batch waits for.
            waits = [verdict.get(p) for p in absent]
            acl_waits = [w for w in waits if w is not None and w.status == MISSING_ACL]
            if acl_waits:
                records_wanted = tuple(dict.fromkeys(rid for w in acl_waits for rid in w.missing))
                verdict[change.id] = IngestResult(MISSING_ACL, records_wanted)
                continue
            missing: list[bytes] = []
            for p, w in zip(absent, waits):
                missing.extend(w.missing if w is not None and w.status == MISSING_PARENTS else (p,))
            verdict[change.id] = IngestResult(MISSING_PARENTS, tuple(dict.fromkeys(missing)))
            continue
        if acl.position(h.acl_head) is None and h.acl_head not in acl.dropped:
            verdict[change.id] = IngestResult(MISSING_ACL, (h.acl_head,))
            continue
        try:
            validate.check_change(change, space_id, dag, acl, batch_parents)
        except Rejected as e:
            reject(change, str(e))
            continue
        except NotFound:  # the removal rule needs the removal's last changes first
            targets = validate.removal_targets(change, acl)
            verdict[change.id] = IngestResult(MISSING_PARENTS, tuple(sorted(t for t in targets if t not in dag)))
            continue
        dag.add(change.id, h.parents, h.lamport)
        plan.accepted.append(change)
        verdict[change.id] = IngestResult(APPLIED)

    seen: set[bytes] = set()
    for c in changes:
        result = verdict[c.id]
        if c.id in seen and result.status in (APPLIED, REJECTED):
            result = IngestResult(KNOWN)  # sent twice in one batch, stored once: the repeat is "known"
        plan.results.append(result)
        seen.add(c.id)
    if plan.rejected:
        first, reason = plan.rejected[0]
        log.warning("space %s: %d received change(s) rejected, e.g. %s: %s", ids.space_text(space_id)[:20],
                    len(plan.rejected), ids.change_text(first.id)[:20], reason)
    return plan


def store_batch(store: Store, space_id: bytes, plan: BatchPlan) -> None:
    """Write the accepted and rejected changes of a plan (call inside the caller's transaction)."""
    for change in plan.accepted:
        h = change.header
        store.add_change(space_id, change.id, change.raw, h.parents, h.lamport, h.author, h.wall_us,
                         schema.CHANGE_ACCEPTED)
    for change, reason in plan.rejected:
        h = change.header
        store.add_change(space_id, change.id, change.raw, h.parents, h.lamport, h.author, h.wall_us,
                         schema.CHANGE_REJECTED, reason)


def revalidate(store: Store, space_id: bytes, acl: acl_mod.AclView) -> Dag:
    """Re-check every accepted change, in fold order, against ``acl`` (the canonical ACL moved: a removal can
    invalidate backdated changes). Failures, and every change built on one, are marked rejected. Returns the DAG
    of the changes still accepted; the caller stores its heads. Call inside a store transaction."""
    # Ancestry questions go to the DAG of everything accepted so far: its linear segments answer them in O(1)
    # along one writer's chain, where a DAG grown change by change would walk the history for each of them.
    dag = load_dag(store, space_id)
    rejected: dict[bytes, str] = {}
    for cid, raw in store.iter_change_raws(space_id):
        change = parse_change(raw, cid)
        if any(p in rejected for p in change.header.parents):
            rejected[cid] = "built on a rejected change"
            continue
        try:
            validate.check_change(change, space_id, dag, acl)
        except Rejected as e:
            rejected[cid] = str(e)
        except NotFound:
            # The removal rule cannot decide without changes nobody has shown us: nothing proves the change
            # invalid, so it stays accepted until the ACL moves again.
            log.debug("change %s: removal rule undecided", ids.change_text(cid)[:20])
    if not rejected:
        return dag
    for cid, reason in rejected.items():
        # The prefix marks a change that was accepted once: `anysyncfs status` counts them.
        store.reject_change(cid, ACL_HISTORY_CHANGED + reason)
    cid, reason = next(iter(rejected.items()))
    log.warning("space %s: %s%d accepted change(s) no longer valid, e.g. %s: %s", ids.space_text(space_id)[:20],
                ACL_HISTORY_CHANGED, len(rejected), ids.change_text(cid)[:20], reason)
    return load_dag(store, space_id)


# ---------------------------------------------------------------------------------------------------- ledger
class Ledger:
    """A space held without its keys: verified ACL, changes and blobs, with an optional byte quota.

    Several node processes may hold the same space through one shared database (PostgreSQL). What a ledger keeps
    in memory (ACL, DAG, heads, usage) is then a copy as of a generation of the space (``node_spaces``): every
    write takes the provider write lock, reloads the copy when another process wrote since (:meth:`refresh`),
    checks and stores, and bumps the generation in the same transaction; readers call :meth:`refresh` first."""

    def __init__(self, store: Store, blobs: BlobStore, space_id: bytes, *, quota_bytes: int | None = None,
                 book: QuotaBook | None = None, notice: str | None = None) -> None:
        self.store = store
        self.blobs = blobs
        self.quota_bytes = quota_bytes
        self.book = book  # a provider's per-account and total quotas (None: only quota_bytes, per space)
        self.notice = notice  # this process's token in change notices to other processes (None: send none)
        self.header = space.parse_space_header(store.space(space_id).header, space_id)
        self._space_id = space_id
        self._generation = store.space_generation(space_id)  # read before the state below: at worst one reload
        self.acl = fold_acl(store, space_id)
        self._dag: Dag | None = None
        self._heads: tuple[bytes, ...] = store.heads(space_id)
        self._usage: Usage | None = None  # cached: recounting a large space per batch would cost a table scan
        self._touched = False  # within a write: the copy in memory moved ahead of the store (see _write)

    @classmethod
    def adopt(
        cls,
        store: Store,
        blobs: BlobStore,
        header_raw: bytes,
        acl_raws: Sequence[bytes],
        *,
        quota_bytes: int | None = None,
        book: QuotaBook | None = None,
        notice: str | None = None,
    ) -> Ledger:
        """Start (or keep) holding a space from its signed header and ACL records, all verified first.

        The records must hold a valid genesis of this space (:class:`NotFound` otherwise). If the space is held
        already, the new records are added (:meth:`add_acl_records`). A new space must fit the quotas
        (:class:`QuotaExceeded`: the space limit of its owner, or the bytes of its records)."""
        header = space.parse_space_header(header_raw)
        records = [acl_mod.parse_record(raw) for raw in acl_raws]
        acl_mod.fold(header.id, records)  # raises unless there is a valid genesis for this space
        with store.transaction():
            store.lock_writes()  # another node process may be adopting the same space right now
            try:
                store.space(header.id)
            except NotFound:
                size = sum(len(r.raw) for r in {r.id: r for r in records if r.space_id == header.id}.values())
                if quota_bytes is not None and size > quota_bytes:
                    raise QuotaExceeded.space(header.id, quota_bytes) from None
                if book is not None:
                    book.check_new_space(header.id, header.owner, size)
                store.add_space(header.id, ids.space_text(header.id), header.raw)
                store_acl_records(store, header.id, records)
                ledger = cls(store, blobs, header.id, quota_bytes=quota_bytes, book=book, notice=notice)
                ledger._commit(ledger.usage())  # charged to its owner from now on
                return ledger
        ledger = cls(store, blobs, header.id, quota_bytes=quota_bytes, book=book, notice=notice)
        ledger._add_records(records)
        return ledger

    # ------------------------------------------------------------------------------------------ identity, ACL
    @property
    def space_id(self) -> bytes:
        return self._space_id

    @property
    def header_raw(self) -> bytes:
        """The signed space header, verbatim."""
        return self.header.raw

    def role_of(self, account: bytes) -> acl_mod.Role | None:
        """The current role of an account (None: not a member)."""
        return self.acl.current.role_of(account)

    def acl_raws(self) -> list[tuple[bytes, bytes]]:
        """(id, raw) of every stored ACL record, in ID order."""
        return self.store.acl_records(self._space_id)

    def acl_ids(self) -> list[bytes]:
        return [rid for rid, _raw in self.store.acl_records(self._space_id)]

    def add_acl_records(self, raws: Sequence[bytes]) -> int:
        """Verify every record (:class:`IntegrityError` on forged bytes, nothing stored), refuse forks by
        non-admins (:class:`Rejected`, nothing stored: :func:`refuse_forks`), store the new ones and refold the
        ACL; if its canonical head moved, re-validate the accepted changes. Returns how many were new."""
        return self._add_records([acl_mod.parse_record(raw) for raw in raws])

    def _add_records(self, records: Sequence[acl_mod.AclRecord]) -> int:
        with self._write():
            usage = self.usage()
            held = [acl_mod.parse_record(raw, rid) for rid, raw in self.store.acl_records(self._space_id)]
            refuse_forks(self._space_id, held, records)
            new_bytes = self._new_acl_bytes(records)
            self._check_quota(new_bytes)  # ACL records are stored bytes too: a flood of them hits the quota
            added = store_acl_records(self.store, self._space_id, records)
            if added:
                before = self.acl.head
                self._touched = True
                self.acl = fold_acl(self.store, self._space_id)
                if self.acl.head != before:
                    self._dag = revalidate(self.store, self._space_id, self.acl)
                    self._heads = self._dag.heads()
                    self.store.set_heads(self._space_id, self._heads)
                self._commit(replace(usage, acl_records=usage.acl_records + added,
                                     acl_bytes=usage.acl_bytes + new_bytes))
        return added

    def _new_acl_bytes(self, records: Sequence[acl_mod.AclRecord]) -> int:
        """Bytes of the records of this space that are not stored yet (each counted once)."""
        held = set(self.acl_ids())
        fresh = {r.id: len(r.raw) for r in records if r.space_id == self._space_id and r.id not in held}
        return sum(fresh.values())

    # ------------------------------------------------------------------------------------------ changes
    @property
    def dag(self) -> Dag:
        if self._dag is None:
            self._dag = load_dag(self.store, self._space_id)
        return self._dag

    @property
    def heads(self) -> tuple[bytes, ...]:
        """The accepted changes no accepted change names as a parent, sorted."""
        return self._heads

    def change_ids(self) -> list[bytes]:
        """IDs of the accepted changes, in ID order."""
        return self.store.accepted_change_ids(self._space_id)

    def rejected_ids(self) -> set[bytes]:
        return set(self.store.rejected_change_ids(self._space_id))

    def get_changes(self, change_ids: Sequence[bytes], max_bytes: int) -> list[bytes]:
        """Raws of accepted changes of this space among ``change_ids`` (in that order), stopping before
        ``max_bytes`` would be exceeded (at least one)."""
        return select_changes(self.store, self._space_id, change_ids, max_bytes)

    def ingest_batch(self, raws: Sequence[bytes]) -> list[IngestResult]:
        """Verify and store received changes (see the module docstring); one result per raw, in order.

        :class:`IntegrityError` (forged bytes) and :class:`QuotaExceeded` leave nothing stored."""
        changes = parse_changes(raws)  # signatures and IDs: outside the write lock
        with self._write():
            usage = self.usage()
            try:
                self._check_quota(1)
            except QuotaExceeded:
                # Full already: refuse anything new before planning (planning grows the DAG, and undoing that
                # means rebuilding it from the store: too dear to repeat for every batch a member keeps sending).
                stored = self.store.change_statuses([c.id for c in changes])
                if any(c.id not in stored for c in changes):
                    raise
            self._touched = True  # planning adds to the DAG in memory
            plan = plan_batch(self.store, self._space_id, self.dag, self.acl, changes)
            if plan.stores_anything:
                added = plan.stored_bytes
                self._check_quota(added)
                store_batch(self.store, self._space_id, plan)
                for change in plan.accepted:  # which blobs are referenced: the others are collected
                    self.store.add_change_blobs(self._space_id, change.id, change.header.blob_refs)
                if plan.accepted:
                    self._heads = self.dag.heads()
                    self.store.set_heads(self._space_id, self._heads)
                self._commit(replace(usage, changes=usage.changes + len(plan.accepted) + len(plan.rejected),
                                     change_bytes=usage.change_bytes + added))
        return plan.results

    # ------------------------------------------------------------------------------------------ blobs
    def put_blob(self, blob_id: bytes, data: bytes, nodes: bytes | None = None) -> bool:
        """Store a blob a member uploaded for this space: verified (:class:`IdMismatch`, :class:`DecodeError`
        when too large), within the quota, written durably with its outboard (``nodes`` if the uploader sent
        them and they check out, else computed), indexed and linked to the space. False if it was here already."""
        check_blob(blob_id, data)
        linked = self.store.has_space_blob(self._space_id, blob_id)
        if linked and self.blobs.has(blob_id):
            return False
        if not linked:
            self._check_quota(len(data))  # early refusal; checked again under the write lock below
        # Durable before the index says it is here, and written outside the write lock: the transfer to an object
        # store is the slow part, and other processes' writes go on meanwhile.
        self.blobs.put(blob_id, data, verified=True, nodes=nodes)
        with self._write():
            usage = self.usage()
            if not self.store.has_space_blob(self._space_id, blob_id):
                self._check_quota(len(data))
            if not self.blobs.has(blob_id):  # a collection (maybe in another process) deleted it meanwhile
                self.blobs.put(blob_id, data, verified=True, nodes=nodes)
            self.store.index_blob(blob_id, len(data))
            if self.store.add_space_blob(self._space_id, blob_id, len(data)):
                self._commit(replace(usage, blobs=usage.blobs + 1, blob_bytes=usage.blob_bytes + len(data)))
        return True

    def has_blob(self, blob_id: bytes) -> bool:
        return self.store.has_space_blob(self._space_id, blob_id) and self.blobs.has(blob_id)

    def get_blob(self, blob_id: bytes) -> bytes:
        """The verified bytes of a blob held for this space (:class:`NotFound` otherwise: a blob of another
        space is never served here, even if the file exists)."""
        if not self.store.has_space_blob(self._space_id, blob_id):
            raise NotFound(f"blob {ids.to_text(ids.PREFIX_BLOB, blob_id)[:20]}… is not held for this space")
        return self.blobs.get(blob_id)

    def read_blob_slice(self, blob_id: bytes, ranges: Sequence[tuple[int, int]]) -> bytes:
        """The verified-streaming slice of ``ranges`` of a blob held for this space (protocol.md 50.8, 70.12):
        :class:`NotFound` as :meth:`get_blob`; ``bao.RangeOutside`` for a range outside the blob."""
        if not self.store.has_space_blob(self._space_id, blob_id):
            raise NotFound(f"blob {ids.to_text(ids.PREFIX_BLOB, blob_id)[:20]}… is not held for this space")
        return self.blobs.read_slice(blob_id, ranges)

    def blob_ids(self) -> list[bytes]:
        """Blobs linked to this space, in ID order."""
        return self.store.space_blob_ids(self._space_id)

    def collect_unreferenced(self, linked_before_us: int) -> blob_gc.Collected:
        """Unlink the blobs linked before ``linked_before_us`` that no accepted change lists (:mod:`.blob_gc`)."""
        with self._write():
            collected = blob_gc.collect_space(self.store, self.blobs, self._space_id, linked_before_us)
            if collected.unlinked:
                # Recount now, so that every quota keeping this space's usage sees the bytes freed.
                self._commit(measure_usage(self.store, self._space_id))
        return collected

    # ------------------------------------------------------------------------------------------ quota
    def usage(self) -> Usage:
        if self._usage is None:
            self._set_usage(measure_usage(self.store, self._space_id))
        assert self._usage is not None
        return self._usage

    def _set_usage(self, usage: Usage) -> None:
        self._usage = usage
        if self.book is not None:
            self.book.record(self._space_id, self.header.owner, usage.total_bytes)

    def _check_quota(self, extra_bytes: int) -> None:
        """Raise :class:`QuotaExceeded` if ``extra_bytes`` more would go over the space's quota, or (with a
        book) its owner's quota or the provider's total."""
        if self.quota_bytes is not None and self.usage().total_bytes + extra_bytes > self.quota_bytes:
            raise QuotaExceeded.space(self._space_id, self.quota_bytes)
        if self.book is not None:
            self.usage()  # the book holds this space's current figure
            self.book.check(self.header.owner, extra_bytes)

    # ------------------------------------------------------------------------------------------ processes
    def refresh(self) -> bool:
        """Reload the copy in memory if the space was written since it was read (by another node process on a
        shared database); True if it was."""
        generation = self.store.space_generation(self._space_id)
        if generation == self._generation:
            return False
        self._reload()
        return True

    @property
    def generation(self) -> int:
        """The space's generation the copy in memory was read at (-1: never written since the table existed)."""
        return self._generation

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction under the provider write lock, on a current copy of the space. When it fails after
        the copy in memory moved ahead of the store (``_touched``), the copy is read again."""
        self._touched = False
        try:
            with self.store.transaction():
                self.store.lock_writes()
                self.refresh()
                yield
        except BaseException:
            if self._touched:
                self._reload()
            raise

    def _commit(self, usage: Usage) -> None:
        """Inside a write: the space's usage is now ``usage``; a new generation, announced at commit."""
        self._touched = True
        self._generation = self.store.save_space_state(self._space_id, self.header.owner, usage.total_bytes,
                                                       self.notice)
        self._set_usage(usage)

    def _reload(self) -> None:
        """After a failed write the in-memory state may be ahead of the store, and after another process's write
        behind it: take it from the store again."""
        self._generation = self.store.space_generation(self._space_id)
        self.acl = fold_acl(self.store, self._space_id)
        self._dag = None
        self._heads = self.store.heads(self._space_id)
        self._usage = None
