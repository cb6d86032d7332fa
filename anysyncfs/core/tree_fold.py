"""Applying one change to the tree: the op handlers and every conflict rule of the file-tree CRDT.

Changes are applied in fold order (topological, ties by (lamport, change id)). Fields are last-writer-wins in
that order; the rules below keep every concurrent version instead of dropping one. "Concurrent" always means
that neither change is an ancestor of the other, asked through the caller's ``is_ancestor``.

* Invalid ops (unknown node or entry, an ID that exists already, a hard link to a directory, an invalid name,
  a parent that is not a directory, a rename that would put a directory inside itself) are skipped.
* Concurrent writes: the write later in fold order wins; the content it displaces is kept as a conflict copy
  beside the file's oldest live name, under IDs derived from the node and the WINNING change. (The winner, not
  the loser: which earlier write a change displaces depends on which changes a replica has, but whether it
  displaces one does not, so a copy a replica saw, and perhaps edited, exists in every later fold too.)
* Write against unlink: a write brings back the entries a concurrent unlink removed; an unlink applied after a
  concurrent write is skipped.
* A directory is only removed while it has no live entries; creating, linking, renaming or resurrecting an
  entry into an unlinked directory brings that directory (and any unlinked directory above it) back.
* Two live entries under one name: :mod:`.tree_names` shows the later placed one under a conflict name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import crypto, ops
from .ids import ROOT_NODE
from .tree_names import conflict_name
from .tree_state import ChangeInfo, Entry, Node, OrderKey, TreeIndex, valid_id

IsAncestor = Callable[[bytes, bytes], bool]  # is_ancestor(a, b): is change a a strict ancestor of change b?

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
U32_MAX = 0xFFFFFFFF
MODE_MAX = 0o7777
# Domain-separation prefixes for the IDs of a conflict copy: BLAKE3(prefix || node id || winning change id)[:16].
CONFLICT_NODE_CONTEXT = b"anysyncfs conflict node v1\x00"
CONFLICT_ENTRY_CONTEXT = b"anysyncfs conflict entry v1\x00"


def conflict_copy_ids(node: bytes, winning_change: bytes) -> tuple[bytes, bytes]:
    """(node id, entry id) of the copy that keeps the content of ``node`` that ``winning_change`` displaced."""
    material = node + winning_change
    return (
        crypto.blake3(CONFLICT_NODE_CONTEXT + material)[:16],
        crypto.blake3(CONFLICT_ENTRY_CONTEXT + material)[:16],
    )


def _clamp_ns(value: int) -> int:
    """Times from other devices are only shown: keep them encodable as int64."""
    return min(max(value, INT64_MIN), INT64_MAX)


class _ChangeFold:
    """The context of one change being applied: its info, the ancestry oracle and the touched node IDs."""

    __slots__ = ("info", "is_ancestor", "now_ns", "order", "state", "touched")

    def __init__(self, state: TreeIndex, info: ChangeInfo, is_ancestor: IsAncestor) -> None:
        self.state = state
        self.info = info
        self.is_ancestor = is_ancestor
        self.touched: set[bytes] = set()
        self.now_ns = _clamp_ns(info.wall_us * 1000)  # time of ops that carry none of their own
        self.order: OrderKey = (info.lamport, info.id, 0)

    def run(self, op_list: Sequence[ops.Op]) -> set[bytes]:
        for index, op in enumerate(op_list):
            self.order = (self.info.lamport, self.info.id, index)
            handler = _HANDLERS.get(type(op))
            if handler is not None:
                handler(self, op)
        return self.touched

    # ------------------------------------------------------------------------------------------------ helpers
    def seen(self, change: bytes) -> bool:
        """Whether ``change`` happened before the change being applied (it is that change or an ancestor)."""
        return change == self.info.id or self.is_ancestor(change, self.info.id)

    def touch(self, node: Node) -> None:
        node.version = self.info.id
        node.author = self.info.author
        self.touched.add(node.id)

    def listing_changed(self, directory: bytes, time_ns: int) -> None:
        node = self.state.nodes[directory]
        node.mtime_ns = node.ctime_ns = time_ns
        self.touch(node)

    def directory(self, node_id: bytes) -> Node | None:
        node = self.state.nodes.get(node_id)
        return node if node is not None and node.kind == ops.KIND_DIR else None

    def revive_ancestors(self, directory: bytes) -> None:
        """Bring back the unlinked directories from ``directory`` up, so a newly live entry is reachable."""
        current = directory
        for _ in range(len(self.state.nodes)):  # bounded: the parent chain is acyclic
            if current == ROOT_NODE:
                return
            entry = self.state.dir_entry(current)
            if entry is None or entry.live:
                return
            self.state.set_live(entry, True, None)
            self.touch(self.state.nodes[current])
            self.listing_changed(entry.parent, self.now_ns)
            current = entry.parent

    def inside(self, directory: bytes, ancestor: bytes) -> bool:
        """Whether ``directory`` is ``ancestor`` or below it (through entries, live or not)."""
        current = directory
        for _ in range(len(self.state.nodes) + 1):
            if current == ancestor:
                return True
            if current == ROOT_NODE:
                return False
            entry = self.state.dir_entry(current)
            if entry is None:
                return False
            current = entry.parent
        return True  # only reachable if the tree had a cycle: refuse the move

    def place_new_entry(self, entry_id: bytes, parent: bytes, name: bytes, node: bytes, time_ns: int) -> None:
        info = self.info
        self.state.put_entry(Entry(entry_id, parent, name, node, True, self.order, info.wall_us, info.author))
        self.revive_ancestors(parent)
        self.listing_changed(parent, time_ns)

    def keep_conflict_copy(self, node: Node, identical: bool) -> None:
        """Copy the content a concurrent write is about to replace into a new file beside the node. When the
        write brings the same content (``identical``), the copy is made with its name already removed, as if by
        the losing change: nobody needs two files with the same bytes, yet a replica that saw this copy with
        other content (it lacked the losing change then) and edited it still finds the node, and that edit,
        not having seen the losing change, brings the name back (rule 40.5 b)."""
        # Beside the oldest live name; for a file unlinked everywhere, beside its last name (reviving that
        # directory if need be): the copy must exist in every fold that has this change, whatever else it has.
        beside = self.state.primary_entry(node.id)
        if beside is None:
            every = self.state.entries_of(node.id)
            beside = max(every, key=lambda e: (e.order, e.id)) if every else None
        loser = node.last_write
        if beside is None or loser is None:
            return
        copy_id, entry_id = conflict_copy_ids(node.id, self.info.id)
        if copy_id in self.state.nodes or entry_id in self.state.entries:
            return
        copy = Node(
            copy_id, ops.KIND_FILE, node.mode, node.uid, node.gid, node.content, b"", node.atime_ns, node.mtime_ns,
            self.now_ns, dict(node.xattrs), self.info.id, self.info.author, loser, node.write_wall_us,
            node.write_author,
        )  # fmt: skip
        self.state.put_node(copy)
        self.touched.add(copy_id)
        name = conflict_name(beside.name, node.write_wall_us, node.write_author)
        if identical:
            info = self.info
            self.state.put_entry(Entry(entry_id, beside.parent, name, copy_id, False, self.order, info.wall_us,
                                       info.author, loser))  # fmt: skip
            return
        self.place_new_entry(entry_id, beside.parent, name, copy_id, self.now_ns)


# ---------------------------------------------------------------------------------------------------- handlers
def _create(f: _ChangeFold, op: ops.Create) -> None:
    state = f.state
    if not (valid_id(op.node) and valid_id(op.entry)) or op.node in state.nodes or op.entry in state.entries:
        return
    if f.directory(op.parent) is None or not ops.valid_name(op.name):
        return
    if op.kind not in ops.KINDS or not 0 <= op.mode <= MODE_MAX:
        return
    if not (0 <= op.uid <= U32_MAX and 0 <= op.gid <= U32_MAX):
        return
    if op.kind == ops.KIND_SYMLINK and not 0 < len(op.target) <= ops.SYMLINK_MAX:
        return
    if op.kind in ops.DEVICE_KINDS and len(op.target) != ops.RDEV_LEN:
        return
    target = op.target if op.kind == ops.KIND_SYMLINK or op.kind in ops.DEVICE_KINDS else b""
    t = _clamp_ns(op.time_ns)
    info = f.info
    node = Node(op.node, op.kind, op.mode, op.uid, op.gid, ops.EMPTY, target, t, t, t, {}, info.id, info.author)
    state.put_node(node)
    f.touched.add(node.id)
    f.place_new_entry(op.entry, op.parent, op.name, op.node, t)


def _link(f: _ChangeFold, op: ops.Link) -> None:
    state = f.state
    node = state.nodes.get(op.node)
    if node is None or node.kind == ops.KIND_DIR or not valid_id(op.entry) or op.entry in state.entries:
        return
    if f.directory(op.parent) is None or not ops.valid_name(op.name):
        return
    f.place_new_entry(op.entry, op.parent, op.name, op.node, f.now_ns)
    node.ctime_ns = f.now_ns
    f.touch(node)


def _write(f: _ChangeFold, op: ops.Write) -> None:
    state = f.state
    node = state.nodes.get(op.node)
    if node is None or node.kind != ops.KIND_FILE or not isinstance(op.content, ops.Content):
        return
    # A write wins over a concurrent unlink: bring back the names such unlinks removed.
    for entry in state.entries_of(node.id):
        if not entry.live and entry.deleted_by is not None and not f.seen(entry.deleted_by):
            state.set_live(entry, True, None)
            f.revive_ancestors(entry.parent)
            f.listing_changed(entry.parent, f.now_ns)
    # The current content comes from a write this change did not see: keep it as a conflict copy (shown only
    # when it differs from what this write brings).
    if node.last_write is not None and not f.seen(node.last_write):
        f.keep_conflict_copy(node, identical=node.content == op.content)
    node.content = op.content
    node.mtime_ns = node.ctime_ns = _clamp_ns(op.mtime_ns)
    node.last_write, node.write_wall_us, node.write_author = f.info.id, f.info.wall_us, f.info.author
    f.touch(node)


def _set_attr(f: _ChangeFold, op: ops.SetAttr) -> None:
    node = f.state.nodes.get(op.node)
    if node is None:
        return
    if op.mode is not None and not 0 <= op.mode <= MODE_MAX:
        return
    if any(v is not None and not 0 <= v <= U32_MAX for v in (op.uid, op.gid)):
        return
    for key, value in op.xattrs_set.items():
        if not 0 < len(key) <= ops.XATTR_NAME_MAX or len(value) > ops.XATTR_VALUE_MAX:
            return
    if op.mode is not None:
        node.mode = op.mode
    if op.uid is not None:
        node.uid = op.uid
    if op.gid is not None:
        node.gid = op.gid
    if op.atime_ns is not None:
        node.atime_ns = _clamp_ns(op.atime_ns)
    if op.mtime_ns is not None:
        node.mtime_ns = _clamp_ns(op.mtime_ns)
    for key, value in op.xattrs_set.items():
        node.xattrs[key] = value
    for key in op.xattrs_del:
        node.xattrs.pop(key, None)
    node.ctime_ns = f.now_ns
    f.touch(node)


def _rename(f: _ChangeFold, op: ops.Rename) -> None:
    state = f.state
    entry = state.entries.get(op.entry)
    if entry is None or f.directory(op.parent) is None or not ops.valid_name(op.name):
        return
    if entry.parent == op.parent and entry.name == op.name:
        return
    node = state.nodes[entry.node]
    if node.kind == ops.KIND_DIR and f.inside(op.parent, node.id):
        return  # the directory would become its own ancestor
    old_parent = entry.parent
    state.move_entry(entry, op.parent, op.name, f.order, f.info.wall_us, f.info.author)
    if entry.live:
        f.revive_ancestors(op.parent)
        f.listing_changed(old_parent, f.now_ns)
        f.listing_changed(op.parent, f.now_ns)
    node.ctime_ns = f.now_ns
    f.touch(node)


def _unlink(f: _ChangeFold, op: ops.Unlink) -> None:
    state = f.state
    entry = state.entries.get(op.entry)
    if entry is None or not entry.live:
        return
    node = state.nodes[entry.node]
    if node.kind == ops.KIND_DIR and state.has_live_children(node.id):
        return  # something was created or moved into it concurrently: the directory stays
    if node.last_write is not None and not f.seen(node.last_write):
        return  # a concurrent write wins: the file stays
    state.set_live(entry, False, f.info.id)
    f.listing_changed(entry.parent, f.now_ns)
    node.ctime_ns = f.now_ns
    f.touch(node)


_HANDLERS: dict[type, Callable[[_ChangeFold, ops.Op], None]] = {
    ops.Create: _create,  # type: ignore[dict-item]
    ops.Link: _link,  # type: ignore[dict-item]
    ops.Write: _write,  # type: ignore[dict-item]
    ops.SetAttr: _set_attr,  # type: ignore[dict-item]
    ops.Rename: _rename,  # type: ignore[dict-item]
    ops.Unlink: _unlink,  # type: ignore[dict-item]
}


def apply_change(state: TreeIndex, info: ChangeInfo, op_list: Sequence[ops.Op], is_ancestor: IsAncestor) -> set[bytes]:
    """Apply one change's ops in order; returns the IDs of the nodes whose attributes or listing changed."""
    return _ChangeFold(state, info, is_ancestor).run(op_list)
