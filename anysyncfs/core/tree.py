"""The file-tree CRDT: the space's folder tree as a deterministic fold of its changes.

Every replica that applies the same changes in the same order (topological, ties broken by (lamport, change
id)) ends with the same tree, byte for byte (:meth:`TreeState.canonical`). The state lives in
:mod:`.tree_state`, the conflict rules in :mod:`.tree_fold`, conflict names in :mod:`.tree_names`; this module
joins them and is the one the store and the VFS import.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import ops
from .tree_fold import IsAncestor, apply_change, conflict_copy_ids
from .tree_names import conflict_name, display_names, original_name, split_name
from .tree_state import ChangeInfo, Entry, Node, OrderKey, TreeDelta, TreeIndex, tree_delta

__all__ = [
    "ChangeInfo",
    "Entry",
    "IsAncestor",
    "Node",
    "OrderKey",
    "TreeDelta",
    "TreeState",
    "conflict_copy_ids",
    "conflict_name",
    "display_names",
    "original_name",
    "fold",
    "fold_order",
    "split_name",
    "tree_delta",
]


class TreeState(TreeIndex):
    """The folded tree. Change it only through :meth:`apply`, one change at a time, in fold order."""

    def apply(self, info: ChangeInfo, op_list: Sequence[ops.Op], is_ancestor: IsAncestor) -> set[bytes]:
        """Apply one change. Must be called in fold order, each change once: a change that sorts before one
        already applied needs a fold from an earlier state. Invalid ops are skipped, never raised. Returns the
        IDs of the nodes whose attributes or directory listing changed (what a mount must invalidate)."""
        return apply_change(self, info, op_list, is_ancestor)


def fold_order(info: ChangeInfo) -> tuple[int, bytes]:
    """Sort key of the fold: a topological order as long as every change's lamport exceeds its parents'."""
    return (info.lamport, info.id)


def fold(changes: Iterable[tuple[ChangeInfo, Sequence[ops.Op]]], is_ancestor: IsAncestor) -> TreeState:
    """Fold changes given in fold order into a new state; a change seen again (same ID) is ignored."""
    state = TreeState()
    applied: set[bytes] = set()
    for info, op_list in changes:
        if info.id in applied:
            continue
        applied.add(info.id)
        state.apply(info, op_list, is_ancestor)
    return state
