"""Group commit: the open batch of a mount, and how its ops become as few signed changes as possible.

Every operation of the VFS (a name created or removed, a file's data and attributes at close) goes into ONE open
batch instead of becoming a signed change of its own. The ops are applied at once to the replica's in-memory
tree *provisionally*, so every reader (lookup, getattr, readdir, open, read — from any process) sees them; the
batch records, before each op list is applied, a copy of every node and entry it changes (``nodes_before`` /
``entries_before``: the state before the batch). When the batch is committed the tree is put back as it was
(:meth:`.tree_state.TreeIndex.restore`) and the folded op list goes through :meth:`Replica.commit` like any
change (signed, stored and applied in one transaction), so the stored DAG and the folded tree are exactly what
they would be without batching: conflict and history rules do not change, a batch is simply one change.

Provisional application uses change IDs that can never be real (:func:`provisional_id`), the lamport the
commit will use, and treats every known change as seen (the batch's change will have every head as a parent),
so it takes no conflict branch: what readers see is what the commit produces, up to the change ID and one
time. Ops that carry no time of their own (chmod, chown, utimens, link, rename, unlink) set ctime (and a
directory's mtime) to their change's wall time; the commit's change carries the time of the batch's LAST op, so
a ctime shown while the batch was open may move forward by up to the batch interval when it is committed,
never backward.

Crash semantics (those of a journaling file system): the open batch lives only in memory, and so do the blobs
it references when they are small (those of large files are written at once, without fsync). A commit writes and
fsyncs those blobs first (the mount's timer does that without holding the lock), then stores the batch in ONE
SQLite transaction (several changes when the ops exceed a change's payload limit, still one transaction). So a kill or
a power loss loses at most the open batch, as a whole: the tree is always a prefix of what was done, where a
file created in the batch counts as done when it is closed. A commit leaves such a file in the batch while it is
still open (its name would be committed without its content) unless the commit is forced (unmount, fsync of
its directory, the periodic commit of long writers) or something else names it (a rename, a link, an unlink):
the committed tree never holds a file that was being written for the first time, half written. fsync of a file
commits the batch with that file in it and syncs the store; the mount also commits when the batch is ``interval``
old (200 ms by default), when nothing was added to it for a twentieth of that (10 ms: a lone save goes out at
once, a burst of operations shares one change), and when it grows past ``SOFT_MAX_OPS``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..core import ops, tree
from ..core.change import MAX_PAYLOAD_SIZE
from ..core.encoding import encode

PROVISIONAL_MARK = b"\xff" * 24  # real change IDs are BLAKE3 hashes: never 24 bytes of 0xff
SOFT_MAX_OPS = 4096  # a batch this large is committed at once
HARD_MAX_OPS = 32768  # ... and at this size files still being written go with it
PAYLOAD_BUDGET = MAX_PAYLOAD_SIZE - 64 * 1024  # bytes of encoded ops per change (headroom for the array framing)


def provisional_id(counter: int) -> bytes:
    """The change ID the ops of one provisional application are stamped with (increasing: later placements sort
    later, as they will in the commit)."""
    return PROVISIONAL_MARK + counter.to_bytes(8, "big")


def is_provisional(change_id: bytes | None) -> bool:
    return change_id is not None and change_id[:24] == PROVISIONAL_MARK


@dataclass
class Batch:
    """The ops since the last commit, and what is needed to undo their provisional application."""

    lamport: int  # the lamport its change will carry (nothing else is applied while it is open)
    heads: tuple[bytes, ...]  # the replica's heads when it opened ...
    state: tree.TreeState  # ... and its tree object: both must be unchanged when it is undone
    opened: float = field(default_factory=time.monotonic)
    last_op: float = field(default_factory=time.monotonic)  # when ops were last added
    op_lists: list[list[ops.Op]] = field(default_factory=list)
    count: int = 0  # ops
    nodes_before: dict[bytes, tree.Node | None] = field(default_factory=dict)
    entries_before: dict[bytes, tree.Entry | None] = field(default_factory=dict)
    created: set[bytes] = field(default_factory=set)  # nodes created in this batch
    blobs: dict[bytes, int] = field(default_factory=dict)  # blobs written for its ops (id -> size), in order
    durable: set[bytes] = field(default_factory=set)  # those of them fsynced already
    pending: dict[bytes, bytes] = field(default_factory=dict)  # those of them not written yet: their bytes
    pending_bytes: int = 0
    applied: int = 0  # provisional applications so far (numbers their IDs)
    wall_us: int = 0  # wall time of the last application: its change carries it
    exact: bool = True  # False if an application touched something not snapshotted (undo by reloading)

    def remember(self, state: tree.TreeState, op_list: Sequence[ops.Op]) -> None:
        """Snapshot every node and entry ``op_list`` may change, unless the batch has its earlier state."""
        nodes, entries = self.nodes_before, self.entries_before

        def node(node_id: bytes) -> None:
            if node_id not in nodes:
                found = state.nodes.get(node_id)
                nodes[node_id] = found.clone() if found is not None else None

        def entry(entry_id: bytes) -> tree.Entry | None:
            found = state.entries.get(entry_id)
            if entry_id not in entries:
                entries[entry_id] = found.clone() if found is not None else None
            return found

        for op in op_list:
            if isinstance(op, (ops.Create, ops.Link)):
                node(op.node)
                node(op.parent)
                entry(op.entry)
                if isinstance(op, ops.Create):
                    self.created.add(op.node)
            elif isinstance(op, (ops.Write, ops.SetAttr)):
                node(op.node)
            else:  # Rename, Unlink
                found = entry(op.entry)
                if found is not None:
                    node(found.node)
                    node(found.parent)
                if isinstance(op, ops.Rename):
                    node(op.parent)

    def add(self, op_list: list[ops.Op], touched: Iterable[bytes]) -> None:
        self.op_lists.append(op_list)
        self.count += len(op_list)
        if any(n not in self.nodes_before for n in touched):
            self.exact = False


# ---------------------------------------------------------------------------------------------- folding
def _node_of(op: ops.Op) -> bytes | None:
    return op.node if isinstance(op, (ops.Write, ops.SetAttr)) else None


def _merge_attrs(a: ops.SetAttr, b: ops.SetAttr) -> ops.SetAttr:
    """One SetAttr with the effect of ``a`` then ``b`` on the same node."""
    b_keys = set(b.xattrs_set) | set(b.xattrs_del)
    xattrs_set = {k: v for k, v in a.xattrs_set.items() if k not in a.xattrs_del and k not in b_keys}
    xattrs_set.update(b.xattrs_set)
    xattrs_del = sorted((set(a.xattrs_del) - set(b.xattrs_set)) | set(b.xattrs_del))
    return ops.SetAttr(
        a.node,
        mode=b.mode if b.mode is not None else a.mode,
        uid=b.uid if b.uid is not None else a.uid,
        gid=b.gid if b.gid is not None else a.gid,
        atime_ns=b.atime_ns if b.atime_ns is not None else a.atime_ns,
        mtime_ns=b.mtime_ns if b.mtime_ns is not None else a.mtime_ns,
        xattrs_set=xattrs_set,
        xattrs_del=xattrs_del,
    )


def fold_ops(op_list: list[ops.Op]) -> list[ops.Op]:
    """The fewest ops with the same effect, applied as one change: a Write goes when a later Write of the same
    node replaces it (content, size and mtime are replaced whole, and nothing in a fold reads a node's content
    except the conflict copy a later Write would make the same way), and two SetAttrs of one node with no other op
    on that node between them become one. Other nodes' ops never depend on these."""
    out: list[ops.Op | None] = []
    last: dict[bytes, int] = {}  # node -> index in out of the last op on it
    last_write: dict[bytes, int] = {}  # node -> index in out of its last Write
    for op in op_list:
        node = _node_of(op)
        if node is not None:
            i = last.get(node)
            prev = out[i] if i is not None else None
            if isinstance(op, ops.SetAttr) and isinstance(prev, ops.SetAttr):
                out[i] = None  # type: ignore[index]
                op = _merge_attrs(prev, op)
            elif isinstance(op, ops.Write) and node in last_write:
                out[last_write[node]] = None
        out.append(op)
        for n in _touched_nodes(op):
            last[n] = len(out) - 1
        if isinstance(op, ops.Write):
            last_write[op.node] = len(out) - 1
    return [op for op in out if op is not None]


def _touched_nodes(op: ops.Op) -> tuple[bytes, ...]:
    if isinstance(op, (ops.Create, ops.Link)):
        return (op.node, op.parent)
    if isinstance(op, (ops.Write, ops.SetAttr)):
        return (op.node,)
    return (op.entry,)  # Rename/Unlink: keyed by entry; they never sit between two ops of one node's fold


def split_payloads(op_list: list[ops.Op], budget: int = PAYLOAD_BUDGET) -> list[list[ops.Op]]:
    """Consecutive parts of ``op_list``, each small enough for one change, at most ``ops.MAX_OPS`` ops each."""
    parts: list[list[ops.Op]] = []
    current: list[ops.Op] = []
    size = 0
    for op in op_list:
        n = len(encode(op))
        if current and (size + n > budget or len(current) >= ops.MAX_OPS):
            parts.append(current)
            current, size = [], 0
        current.append(op)
        size += n
    if current:
        parts.append(current)
    return parts
