"""Acceptance of a change against the DAG and the ACL.

A change that decoded, matched its ID and carries a valid signature (:mod:`.change`) is accepted only if:

1. it belongs to this space;
2. all its parents are in the DAG (otherwise :class:`NotFound`: the caller fetches them and retries);
3. its lamport is exactly one more than its parents' maximum (1 without parents), as :mod:`.dag` requires;
4. its ACL head is on the canonical ACL chain, or is a valid record of a branch that lost a fork and the author
   neither joined nor was promoted on that branch nor was reduced on the canonical chain after the fork point,
   and no removal on that branch changed the epoch (:meth:`AclView.citable_state`: an honest change accepted
   before a reorganization of the ACL stays accepted);
5. its author is a member at that head, with role WRITER or above;
6. its key epoch is the epoch at that head;
7. reduction rule: for every reduction of the author below WRITER (a Remove, or a RoleChange to READER) that
   comes after the cited head (or fork point) on the chain, the change is one of that reduction's
   ``last_changes`` or a strict ancestor of one. This stops a removed or demoted member from backdating new
   changes by citing an ACL head from before its reduction.

Rule 7 needs the removal's last changes. A receiver usually gets a removed member's earlier changes before the
last ones (parents first), so the ancestry walk also goes through changes that are received but not yet accepted,
given by ``pending_parents`` (change ID -> parent IDs, or None; by default the DAG's own ``pending_parents``
method when it has one). If the answer still depends on a change nobody
has shown us, :class:`NotFound` is raised (fetch :func:`removal_targets` and retry), never a wrong verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import NotFound, Rejected
from .acl import AclView, Role
from .change import Change

PendingParents = Callable[[bytes], Sequence[bytes] | None]


class DagView(Protocol):
    """What validation needs from :class:`anysyncfs.core.dag.Dag`."""

    def contains(self, change_id: bytes) -> bool: ...

    def lamport(self, change_id: bytes) -> int | None: ...

    def is_ancestor(self, a: bytes, b: bytes) -> bool: ...


def _no_pending(change_id: bytes) -> Sequence[bytes] | None:
    return None


def check_change(
    change: Change,
    space_id: bytes,
    dag: DagView,
    acl: AclView,
    pending_parents: PendingParents | None = None,
) -> None:
    """Raise :class:`Rejected` (one-line reason) or :class:`NotFound` (something to fetch first) unless the
    change may be applied. See the module docstring for the rules, in the order they are checked."""
    header = change.header
    if header.space != space_id:
        raise Rejected("change belongs to another space")
    if not all(dag.contains(p) for p in header.parents):
        raise NotFound("missing parents")
    top = max((dag.lamport(p) or 0 for p in header.parents), default=0)
    if header.lamport <= top:
        raise Rejected("lamport not greater than its parents'")
    if header.lamport != top + 1:
        raise Rejected("lamport is not one more than its parents' maximum")
    citable = acl.citable_state(header.acl_head, header.author)
    if citable is None:
        raise Rejected("unknown ACL head")
    state, anchor = citable
    role = state.role_of(header.author)
    if role is None:
        raise Rejected("not a member")
    if role < Role.WRITER:
        raise Rejected("reader may not write")
    if header.epoch != state.epoch:
        raise Rejected("unknown key epoch")
    lookup = pending_parents or getattr(dag, "pending_parents", None) or _no_pending
    for what, allowed in acl.reductions_after(anchor, header.author):
        verdict = _within(change.id, allowed, dag, lookup)
        if verdict is None:
            reduction = "removal" if what == "removed" else "demotion"
            raise NotFound(f"the last changes named by the author's {reduction} are not known yet")
        if not verdict:
            raise Rejected(f"change by {what} member")


def removal_targets(change: Change, acl: AclView) -> frozenset[bytes]:
    """The change IDs rule 7 needs to judge ``change`` (empty unless its author was removed or demoted below
    writer after its ACL head)."""
    citable = acl.citable_state(change.header.acl_head, change.header.author)
    if citable is None:
        return frozenset()
    out: frozenset[bytes] = frozenset()
    for _what, allowed in acl.reductions_after(citable[1], change.header.author):
        out |= allowed
    return out


def _within(change_id: bytes, allowed: frozenset[bytes], dag: DagView, pending_parents: PendingParents) -> bool | None:
    """True if ``change_id`` is in ``allowed`` or a strict ancestor of a member of it; False if provably not;
    None if that depends on a change neither in the DAG nor pending."""
    if change_id in allowed:
        return True
    in_dag = dag.contains(change_id)
    unknown = False
    seen: set[bytes] = set()
    stack: list[bytes] = []
    for target in allowed:
        if dag.contains(target):
            # The DAG is closed under parents: a change outside it is no ancestor of a change inside it.
            if in_dag and dag.is_ancestor(change_id, target):
                return True
        else:
            stack.append(target)
    # Walk back from targets not yet in the DAG through the pending area until the DAG is reached.
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        parents = pending_parents(node)
        if parents is None:
            unknown = True
            continue
        for p in parents:
            if p == change_id:
                return True
            if dag.contains(p):
                if in_dag and dag.is_ancestor(change_id, p):
                    return True
            else:
                stack.append(p)
    return None if unknown else False
