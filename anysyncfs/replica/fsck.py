"""``fsck``: re-verify everything a space's store holds, change nothing (unless asked to rebuild the tree cache).

Checks, in order:
1. every ACL record decodes, has its ID and valid signatures; the fold has a genesis;
2. every stored change decodes, hashes to its ID and carries a valid signature; every accepted change still
   passes the ACL rules in dependency order and its parents are accepted changes; the stored heads are the DAG's
   heads. A payload that does not open or decode (when this device holds the epoch key) is a *warning*, not a
   problem: such a change was signed by a writer and accepted, it stays in the DAG for good and the fold skips it
   (see :mod:`.unreadable`), so nothing here can or should repair it — fsck exits 0 for it and lists it. Its
   stored mark (``changes.unreadable``) must agree with what fsck finds, else that is a problem ``--repair``
   fixes by refolding;
3. every blob referenced by the current tree (manifest blobs included) is present and hashes to its ID, or is
   remote only (a provider holds it; fetched on demand) — a missing blob no provider confirmed is a problem;
   a present blob larger than one group has its outboard file, and that file is its BLAKE3 tree (``--repair``
   rebuilds a missing or damaged one);
4. the cached tree equals a fresh fold of the DAG, byte for byte.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..core import acl as acl_mod
from ..core import ids, tree, validate
from ..core.change import parse_change
from ..core.dag import Dag
from ..errors import AnysyncError, IntegrityError, NotFound, Rejected
from ..store import schema
from .home import Unlocked
from .files import tree_blobs
from .replica import Replica
from .unreadable import read_ops

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # reported, not a failure (unreadable changes)
    repaired: list[str] = field(default_factory=list)
    changes: int = 0
    records: int = 0
    blobs: int = 0
    remote: int = 0  # blobs of the tree held by providers only (fetched on demand): not a problem
    unreadable: int = 0  # accepted changes whose payload does not open or decode: skipped by the fold
    stale_marks: bool = False  # a stored unreadable mark disagrees with the payload (a refold rewrites them)

    def summary(self) -> str:
        verdict = "OK" if not self.problems else f"{len(self.problems)} problem(s)"
        remote = f" ({self.remote} remote only)" if self.remote else ""
        unreadable = f" ({self.unreadable} unreadable, skipped)" if self.unreadable else ""
        return (f"{self.records} ACL records, {self.changes} changes{unreadable}, {self.blobs} blobs checked{remote}: "
                f"{verdict}")


def fsck(unlocked: Unlocked, space_id: bytes, *, repair: bool = False) -> FsckReport:
    report = FsckReport()
    store = unlocked.home.store()
    try:
        replica = Replica(unlocked, store, unlocked.home.blobs(), space_id, read_only=not repair)
    except AnysyncError as e:
        report.problems.append(f"space does not open: {e}")
        return report
    _check_acl(replica, report)
    _check_changes(replica, report)
    _check_blobs(replica, report, repair)
    _check_tree(replica, report, repair)
    return report


def _check_acl(replica: Replica, report: FsckReport) -> None:
    records = []
    for rid, raw in replica.store.acl_records(replica.space_id):
        report.records += 1
        try:
            records.append(acl_mod.parse_record(raw, rid))
        except IntegrityError as e:
            report.problems.append(f"ACL record {ids.b32(rid)[:12]}: {e}")
    view = acl_mod.fold(replica.space_id, records)
    if not view.chain:
        report.problems.append("the ACL has no valid genesis record")


def _check_changes(replica: Replica, report: FsckReport) -> None:
    store, space_id = replica.store, replica.space_id
    accepted = {r.id for r in store.change_rows(space_id, schema.CHANGE_ACCEPTED)}
    marks = store.unreadable_changes(space_id)
    dag = Dag()
    for cid, raw in store.iter_change_raws(space_id, status=None):
        report.changes += 1
        try:
            change = parse_change(raw, cid)
        except IntegrityError as e:
            report.problems.append(f"change {ids.change_text(cid)[:20]}…: {e}")
            continue
        if cid not in accepted:
            continue
        h = change.header
        if any(p not in accepted for p in h.parents):
            report.problems.append(f"change {ids.change_text(cid)[:20]}…: a parent is not an accepted change")
            continue
        try:
            validate.check_change(change, space_id, dag, replica.acl)
        except (Rejected, NotFound) as e:
            report.problems.append(f"change {ids.change_text(cid)[:20]}…: fails the ACL rules: {e}")
        dag.add(cid, h.parents, h.lamport)
        key = replica.keys.get(h.epoch)
        if key is None:
            continue
        _ops, reason = read_ops(change, key)
        if reason is not None:
            report.unreadable += 1
            report.warnings.append(f"change {ids.change_text(cid)}: unreadable, skipped by the fold: {reason}")
        if (reason is None) != (cid not in marks):
            report.stale_marks = True
            report.problems.append(f"change {ids.change_text(cid)[:20]}…: its stored unreadable mark is stale "
                                   "(run fsck --repair to refold)")
    if tuple(sorted(dag.heads())) != tuple(sorted(store.heads(space_id))):
        report.problems.append("stored heads differ from the DAG's heads")


def _check_blobs(replica: Replica, report: FsckReport, repair: bool) -> None:
    """Every blob of the current tree: present and intact, or remote (a provider confirmed storing it, or it
    came from a peer and was never here): fetched on demand, not a problem. A blob made on this device that no
    provider has confirmed and whose file is gone is the only copy lost: a problem."""
    def unreadable(node: tree.Node, e: AnysyncError) -> None:
        report.problems.append(f"node {ids.b32(node.id)[:12]}: manifest unreadable: {e}")

    wanted = tree_blobs(replica, unreadable)
    rows = replica.store.blob_rows(wanted)
    for blob_id in wanted:
        report.blobs += 1
        if not replica.blobs.has(blob_id):
            row = rows.get(blob_id)
            if row is None or row.remote_confirmed:
                report.remote += 1
            else:
                report.problems.append(f"blob {ids.b32(blob_id)[:12]} is missing, and no provider has confirmed "
                                       "storing it")
            continue
        try:
            replica.blobs.get(blob_id)
        except IntegrityError as e:
            report.problems.append(f"blob {ids.b32(blob_id)[:12]}: {e}")
            continue
        problem = replica.blobs.check_outboard(blob_id, repair=repair)
        if problem is not None:
            if repair:
                report.repaired.append(f"blob {ids.b32(blob_id)[:12]}: {problem}: rebuilt")
            else:
                report.problems.append(f"blob {ids.b32(blob_id)[:12]} {problem} (fsck --repair rebuilds it)")


def _check_tree(replica: Replica, report: FsckReport, repair: bool) -> None:
    try:
        fresh = replica.fresh_fold()
    except AnysyncError as e:
        report.problems.append(f"the DAG does not fold: {e}")
        return
    if replica.tree_cache_problem is not None:  # found when the replica opened (and refolded, in memory or stored)
        if repair:
            report.repaired.append(f"cached tree rebuilt from the DAG (it {replica.tree_cache_problem})")
        else:
            report.problems.append(f"the cached tree differs from a fresh fold: it {replica.tree_cache_problem} "
                                   f"(run fsck --repair to rebuild it)")
        return
    differs = fresh.canonical() != replica.tree.canonical()
    if repair and (differs or report.stale_marks):
        replica.refold()  # rewrites the tree rows and the unreadable marks
        report.repaired.append("cached tree rebuilt from the DAG")
    elif differs:
        report.problems.append("the cached tree differs from a fresh fold (run fsck --repair to rebuild it)")
