"""The core of the VFS: inode numbers, views of the tree, attributes, committing, staging and bookkeeping.

:class:`VfsCore` holds the state every operation shares; the operations themselves live in mixins
(:mod:`.vfs_names`, :mod:`.vfs_files`, :mod:`.vfs_xattr`) joined by :class:`.vfs.Vfs`.

A *view* is a tree plus a way to number its nodes: the live view (the replica's current tree, inodes from the
store's stable row ids) or a history view (a materialised past tree, virtual inodes, read-only).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..core import acl, ops, tree
from ..core.ids import NODE_ID_LEN, ROOT_NODE
from ..errors import AnysyncError, BlobMissing, FsError, StoreError
from ..replica.replica import Replica
from ..store.files import private_dir
from . import perms
from .attrs import (
    DIR_SIZE,
    KIND_TO_IFMT,
    NAME_MAX,
    NODE_INODE_SHIFT,
    ROOT_INODE,
    VIRTUAL_BASE,
    Attr,
    Ctx,
    StatFs,
    blocks_for,
    rdev_of,
)
from .batch import HARD_MAX_OPS, SOFT_MAX_OPS, Batch, fold_ops, is_provisional, provisional_id, split_payloads
from .commit import build_content
from .errnos import errno_of
from .stream import SealStream
from .reading import ContentReads
from .staging import Staged, clear_leftovers
from .virtual import HistView, Virtual

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def locked(fn: F) -> F:
    """Run a public VFS method under the instance lock (callers may use worker threads)."""

    @functools.wraps(fn)
    def wrapper(self: VfsCore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def now_ns() -> int:
    return time.time_ns()


def new_id() -> bytes:
    return os.urandom(NODE_ID_LEN)


def _op_node(op: ops.Op) -> bytes | None:
    """The node a Create, Write or SetAttr is about (what :meth:`VfsCore._held` can hold back)."""
    return op.node if isinstance(op, (ops.Create, ops.Write, ops.SetAttr)) else None


def _all_seen(_change: bytes, _than: bytes) -> bool:
    """Ancestry as a batch sees it: its change will have every known change as an ancestor."""
    return True


class View(Protocol):
    read_only: bool

    @property
    def state(self) -> tree.TreeState: ...

    def inode_of(self, node: bytes) -> int: ...


class LiveView:
    """The replica's current tree."""

    read_only = False

    def __init__(self, core: VfsCore) -> None:
        self._core = core

    @property
    def state(self) -> tree.TreeState:
        return self._core.replica.tree

    def inode_of(self, node: bytes) -> int:
        return self._core.live_inode(node)


@dataclass(slots=True)
class FileHandle:
    inode: int
    view: View | None  # None for a virtual file (its bytes are in ``data``)
    node: bytes
    flags: int
    ctx: Ctx
    keep_cache: bool = False
    data: bytes = b""

    @property
    def readable(self) -> bool:
        return self.flags & os.O_ACCMODE in (os.O_RDONLY, os.O_RDWR)

    @property
    def writable(self) -> bool:
        return self.flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)


@dataclass(slots=True)
class DirHandle:
    inode: int
    entries: list[tuple[bytes, int]]  # (name, inode) snapshot taken at opendir (and again at rewinddir)
    ctx: Ctx


IDLE_SHARE = 0.05  # a batch idle for this share of the batch interval is committed without waiting for the rest
# Blobs of small files (an untar) stay in memory until their batch is committed, where they are written and fsynced
# in parallel, without the lock; larger ones are written at once (without fsync), while the staging file still
# holds the same bytes (a full disk then refuses the close or fsync of the file that filled it).
PENDING_BLOB_MAX = 256 << 10
PENDING_BLOB_BYTES = 32 << 20  # per batch
ID_POOL = 256  # node IDs drawn (and inodes reserved) at a time; unused ones leave empty inode rows behind
READDIR_BATCH = 1024  # entries per readdir answer: the kernel asks again from the last next_id


class VfsCore:
    """Shared state and helpers of the VFS (see the module doc)."""

    def __init__(
        self,
        replica: Replica,
        *,
        staging_dir: Path,
        read_only: bool = False,
        commit_interval: float = 5.0,
        batch_interval: float | None = None,
    ) -> None:
        """``batch_interval``: seconds an open batch may wait before :meth:`flush_due` commits it (group commit,
        see :mod:`.batch`); ``None`` commits every operation as its own change at once (tests, tools)."""
        self.replica = replica
        self.staging_dir = Path(staging_dir)
        private_dir(self.staging_dir)
        left = clear_leftovers(self.staging_dir)
        if left:  # after a crash: like dirty pages never fsynced, those writes are gone (INFO, not a fault)
            log.info("removed %d staging files left by an earlier run (writes that were never committed)", left)
        self._mounted_read_only = read_only or replica.read_only
        self.commit_interval = commit_interval
        self.batch_interval = batch_interval
        self._batch: Batch | None = None
        self._id_pool: list[bytes] = []  # node IDs with reserved inodes (see new_node_id)
        self._ids_drawn = False  # new_node_id was called: the timer keeps the pool filled (see flush_due)
        self.reads = ContentReads(self._get_blob, read_ranges=self._read_blob_ranges, prefetch=self._prefetch_blob)
        self.live = LiveView(self)
        self._root_owner = (os.getuid(), os.getgid())
        self.virtual = Virtual(replica, lambda: self.owner_of(self.replica.tree.nodes[ROOT_NODE]))
        self._lock = threading.RLock()
        self._ino_of: dict[bytes, int] = {ROOT_NODE: ROOT_INODE}
        self._node_of: dict[int, bytes] = {ROOT_INODE: ROOT_NODE}
        self._lookups: dict[int, int] = {}
        self._staged: dict[bytes, Staged] = {}
        self._opens: dict[bytes, int] = {}
        # Files truncated through an open file (O_TRUNC, ftruncate, truncate while open), until their last
        # writable handle closes: their ops stay in the batch like a new file's (:meth:`_held`), so `echo x > f` or an editor's
        # rewrite is ONE change with the final content, never an empty (or half-written) intermediate.
        self._rewriting: set[bytes] = set()
        self._files: dict[int, FileHandle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self._seen_content: dict[int, tuple[Any, ...]] = {}
        # What changes not made through this Vfs alter collects here (received, other processes' commits, refolds:
        # see Replica.landed) until take_landed hands it to the adapter, which invalidates the kernel's caches.
        replica.landed = tree.TreeDelta()
        self._closed = False

    @property
    def read_only(self) -> bool:
        """Mounted read-only, or this identity may not write (a reader, a removed member): follows the ACL as it
        changes while mounted."""
        if self._mounted_read_only:
            return True
        role = self.replica.role
        return role is None or role < acl.Role.WRITER

    # ------------------------------------------------------------------------------------------ inodes
    def new_node_id(self) -> bytes:
        """A fresh random node ID whose inode number is reserved already: IDs are drawn in advance, and their
        inodes reserved together in one transaction (a create then needs no store write of its own)."""
        self._ids_drawn = True
        if not self._id_pool:
            self._refill_id_pool()
        return self._id_pool.pop()

    def _refill_id_pool(self) -> None:
        """Draw ID_POOL more node IDs and reserve their inodes (one store transaction, with its fsync)."""
        fresh = [new_id() for _ in range(ID_POOL)]
        with self.translated("inode"):
            found = self.replica.store.reserve_inodes(self.replica.space_id, fresh)
        for node, row in found.items():
            self._ino_of[node] = row + NODE_INODE_SHIFT
            self._node_of[row + NODE_INODE_SHIFT] = node
        self._id_pool[:0] = fresh[::-1]  # pop() takes from the end: the older IDs go first

    def live_inode(self, node: bytes) -> int:
        inode = self._ino_of.get(node)
        if inode is None:
            with self.translated("inode"):
                inode = self.replica.store.inode_of(self.replica.space_id, node) + NODE_INODE_SHIFT
            self._ino_of[node] = inode
            self._node_of[inode] = node
        return inode

    def preload_inodes(self, nodes: Sequence[bytes]) -> None:
        """Number many nodes with one query (readdir)."""
        missing = [n for n in nodes if n not in self._ino_of]
        if not missing:
            return
        with self.translated("inode"):
            found = self.replica.store.inodes_of(self.replica.space_id, missing)
        for node, row in found.items():
            self._ino_of[node] = row + NODE_INODE_SHIFT
            self._node_of[row + NODE_INODE_SHIFT] = node

    def target(self, inode: int) -> tuple[View, bytes]:
        """(view, node id) of a live or historical node inode; ENOENT for anything else."""
        if inode < VIRTUAL_BASE:
            node = self._node_of.get(inode)
            if node is None and inode > ROOT_INODE:
                node = self._node_of_stored_inode(inode)
            if node is None or node not in self.replica.tree.nodes:
                raise FsError(errno.ENOENT, f"unknown inode {inode}")
            return self.live, node
        hit = self.virtual.hist_target(inode)
        if hit is None:
            raise FsError(errno.ENOENT, f"unknown inode {inode}")
        view, node = hit
        if node == ROOT_NODE:
            return view, node  # a change folder: its tree is folded only when something needs it
        with self.translated("history"):
            state = view.state
        if node not in state.nodes:
            raise FsError(errno.ENOENT, f"unknown inode {inode}")
        return view, node

    def _node_of_stored_inode(self, inode: int) -> bytes | None:
        """An inode this mount has not handed out yet: a file handle (open_by_handle_at, an NFS export) made
        before a remount names it, and the kernel asks for it by looking up '.' in it."""
        row = inode - NODE_INODE_SHIFT
        if row <= 0:
            return None
        with self.translated("inode"):
            node = self.replica.store.node_of_inode(self.replica.space_id, row)
        if node == ROOT_NODE:
            return None  # the root's own row: its number is never handed out (ROOT_INODE is)
        if node is not None:
            self._ino_of[node] = inode
            self._node_of[inode] = node
        return node

    def count_lookup(self, inode: int, n: int = 1) -> None:
        self._lookups[inode] = self._lookups.get(inode, 0) + n

    # ------------------------------------------------------------------------------------------ attributes
    def owner_of(self, node: tree.Node) -> tuple[int, int]:
        """uid:gid shown for a node. A root that was never given an owner (0:0, as every space starts) is shown
        as owned by the mounting user, who could not use their own drive otherwise."""
        if node.id == ROOT_NODE and node.uid == 0 and node.gid == 0:
            return self._root_owner
        return node.uid, node.gid

    def node_mode(self, node: tree.Node) -> int:
        return KIND_TO_IFMT[node.kind] | node.mode

    def node(self, view: View, node_id: bytes) -> tree.Node:
        """A node as the caller should see it: in the live view, attribute changes still pending for an open
        file (see :meth:`.staging.Staged.set_attrs`) are applied to a copy."""
        node = view.state.nodes[node_id]
        if view is self.live:
            staged = self._staged.get(node_id)
            if staged is not None and staged.attrs:
                node = node.clone()
                a = staged.attrs
                node.mode = a.get("mode", node.mode)
                node.uid = a.get("uid", node.uid)
                node.gid = a.get("gid", node.gid)
                node.atime_ns = a.get("atime_ns", node.atime_ns)
                node.mtime_ns = a.get("mtime_ns", node.mtime_ns)
                node.ctime_ns = max(node.ctime_ns, staged.ctime_ns)
        return node

    def node_attr(self, view: View, node_id: bytes) -> Attr:
        if node_id == ROOT_NODE and isinstance(view, HistView):
            with self.translated("history"):
                return self.virtual.change_root_attr(view.change)
        state = view.state
        node = self.node(view, node_id)
        uid, gid = self.owner_of(node)
        mtime, ctime = node.mtime_ns, node.ctime_ns
        if node.kind == ops.KIND_FILE:
            staged = self._staged.get(node_id) if view is self.live else None
            if staged is not None and staged.data_changed:
                size, mtime, ctime = staged.size, staged.mtime_ns, max(staged.ctime_ns, node.ctime_ns)
                blocks = blocks_for(staged.stored_bytes(self.reads.stored_bytes(staged.base)))
            else:
                size = node.content.size
                blocks = self.reads.blocks(node.content)
        elif node.kind == ops.KIND_DIR:
            size, blocks = DIR_SIZE, blocks_for(DIR_SIZE)
        elif node.kind == ops.KIND_SYMLINK:
            size, blocks = len(node.target), 0
        else:
            size, blocks = 0, 0  # FIFOs, sockets and devices hold nothing
        return Attr(
            view.inode_of(node_id), self.node_mode(node), state.nlink(node_id), uid, gid, size, node.atime_ns,
            mtime, ctime, blocks, rdev=rdev_of(node.kind, node.target),
        )  # fmt: skip

    def current_size(self, node: tree.Node) -> int:
        staged = self._staged.get(node.id)
        return staged.size if staged is not None and staged.data_changed else node.content.size

    def check_access(self, ctx: Ctx, node: tree.Node, want: int) -> None:
        """EACCES unless ``ctx`` may access ``node`` (as returned by :meth:`node`) for ``want``."""
        uid, gid = self.owner_of(node)
        perms.check(ctx, self.node_mode(node), uid, gid, want)

    # ------------------------------------------------------------------------------------------ checks
    def check_writable(self, view: View | None = None) -> None:
        if self.read_only or (view is not None and view.read_only):
            raise FsError(errno.EROFS, "read-only file system")

    @staticmethod
    def check_name(name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"name too long ({len(name)} bytes, the limit is {NAME_MAX})")
        if not name or b"/" in name or b"\0" in name:
            raise FsError(errno.EINVAL, "invalid name")

    def mutable_dir(self, inode: int, ctx: Ctx) -> tree.Node:
        """The live, visible directory ``inode`` in which the caller may create or remove names."""
        if self.virtual.owns(inode):
            self.check_writable(None)
            raise FsError(errno.EROFS, "the .anysync folder is read-only")
        self.check_writable()
        view, node_id = self.target(inode)
        node = self.node(view, node_id)
        if node.kind != ops.KIND_DIR:
            raise FsError(errno.ENOTDIR, "not a directory")
        if not view.state.visible(node_id):
            raise FsError(errno.ENOENT, "the directory was removed")
        self.check_access(ctx, node, perms.W | perms.X)
        return node

    # ------------------------------------------------------------------------------------------ committing
    @contextlib.contextmanager
    def translated(self, what: str) -> Iterator[None]:
        """Turn store, integrity and permission errors of work on a resolved node into FsError through the one
        table (:func:`.errnos.errno_of`: ENOSPC, EROFS, EFBIG, else EIO)."""
        try:
            yield
        except FsError:
            raise
        except (AnysyncError, OSError) as e:
            code = errno_of(e, read_only=True, resolved=True)
            if code is None:
                raise
            if code == errno.EIO:
                log.error("%s: %s: %s", what, type(e).__name__, e)
            raise FsError(code, f"{what}: {e}") from None

    def _touched(self, op_list: Sequence[ops.Op]) -> set[bytes]:
        """Nodes an op list changes (the node, and the directories whose listing changes)."""
        state = self.replica.tree
        out: set[bytes] = set()
        for op in op_list:
            if isinstance(op, (ops.Create, ops.Link)):
                out.update((op.node, op.parent))
            elif isinstance(op, (ops.Write, ops.SetAttr)):
                out.add(op.node)
            else:
                entry = state.entries.get(op.entry)
                if entry is not None:
                    out.update((entry.node, entry.parent))
                if isinstance(op, ops.Rename):
                    out.add(op.parent)
        return out

    def commit(self, op_list: list[ops.Op]) -> None:
        """Add ops to the open batch (the caller has checked that they make sense): applied to the tree at once,
        so every reader sees them, and committed as part of one signed change by :meth:`flush_batch`. Without
        group commit (``batch_interval`` None) that happens before this returns."""
        self.check_writable()
        self._stage(op_list)
        batch = self._batch
        assert batch is not None
        if self.batch_interval is None:
            self.flush_batch(force=True, keep_on_failure=False)
        elif batch.count >= SOFT_MAX_OPS:
            try:
                self.flush_batch(force=batch.count >= HARD_MAX_OPS)
            except FsError as e:  # the ops stay in the open batch: the next commit (fsync, timer) retries
                log.warning("group commit at the size bound failed: %s", e)

    def _open_batch(self) -> Batch:
        if self._batch is None:
            replica = self.replica
            with self.translated("commit"):
                self._batch = Batch(replica.dag.next_lamport(replica.heads), replica.heads, replica.tree)
        return self._batch

    def _stage(self, op_list: list[ops.Op]) -> None:
        """Apply ops provisionally (see :mod:`.batch`) and add them to the open batch."""
        batch = self._open_batch()
        state = self.replica.tree
        batch.remember(state, op_list)
        batch.applied += 1
        wall_us = max(time.time_ns() // 1000, batch.wall_us)
        batch.wall_us = wall_us  # the commit carries the time of the last op: the ctimes shown only move forward
        info = tree.ChangeInfo(provisional_id(batch.applied), batch.lamport, self.replica.identity.account_id,
                               wall_us)  # fmt: skip
        touched = state.apply(info, op_list, _all_seen)
        batch.add(op_list, touched)
        batch.last_op = time.monotonic()

    def _put_blob(self, blob_id: bytes, data: bytes) -> None:
        """A blob of the open batch: kept in memory when small (see ``PENDING_BLOB_MAX``), else written at once
        without fsync; written, made durable and indexed when the batch is committed."""
        batch = self._open_batch()
        if blob_id in batch.blobs:
            return
        if len(data) <= PENDING_BLOB_MAX and batch.pending_bytes + len(data) <= PENDING_BLOB_BYTES:
            batch.pending[blob_id] = bytes(data)
            batch.pending_bytes += len(data)
        else:
            # Its outboard (a BLAKE3 tree: more CPU than sealing the chunk) is written by make_durable, in
            # parallel threads and mostly without the lock (the batch timer), not here under it.
            self.replica.blobs.put(blob_id, data, verified=True, durable=False, outboard=False)
        batch.blobs[blob_id] = len(data)

    def pending_blob(self, blob_id: bytes) -> bytes | None:
        """The bytes of a blob the open batch holds in memory (not written yet), else None."""
        batch = self._batch
        return None if batch is None else batch.pending.get(blob_id)

    def _get_blob(self, blob_id: bytes) -> bytes:
        """Verified blob bytes for reads: the open batch's own first (its ID was computed from them here)."""
        data = self.pending_blob(blob_id)
        return data if data is not None else self.replica.get_blob(blob_id)

    def _read_blob_ranges(self, blob_id: bytes, ranges: Sequence[tuple[int, int]]) -> tuple[int, list[bytes]] | None:
        """Unverified byte ranges of a local blob file, for reads that authenticate each segment they open (None
        for a blob the open batch holds in memory: it is read whole through :meth:`_get_blob`)."""
        if self.pending_blob(blob_id) is not None:
            return None
        return self.replica.read_blob_ranges(blob_id, ranges)

    def _prefetch_blob(self, blob_id: bytes) -> None:
        """Have a local blob file read into the page cache ahead of a sequential reader (nothing for the open
        batch's blobs, which are in memory)."""
        if self.pending_blob(blob_id) is None:
            self.replica.prefetch_blob(blob_id)

    def blob_here(self, blob_id: bytes) -> bool:
        return self.pending_blob(blob_id) is not None or self.replica.blobs.has(blob_id)

    def _held(self, batch: Batch, exclude: Collection[bytes] = ()) -> set[bytes]:
        """Files created in ``batch`` and still open, whose batched ops are only their own Create, Writes and
        SetAttrs (nothing else names them): a commit leaves them in the batch, so that a crash never finds a
        name whose content was not written yet. Any other use of such a file commits it as it is. Likewise the
        Writes and SetAttrs of files being rewritten (``_rewriting``: truncated while open) stay until the last
        handle closes: other devices then never see the truncated intermediate, and it never makes a conflict."""
        rewriting = {node for node in self._rewriting if node in self._opens and node not in exclude}
        candidates = {node for node in self._opens if node in batch.created and node not in exclude}
        if not candidates:
            return rewriting
        entry_node: dict[bytes, bytes] = {}
        created_in: dict[bytes, set[bytes]] = {}  # parent directory -> candidates created in it so far
        for op_list in batch.op_lists:
            for op in op_list:
                if isinstance(op, ops.Create) and op.node in candidates:
                    entry_node[op.entry] = op.node
                    created_in.setdefault(op.parent, set()).add(op.node)
                elif isinstance(op, ops.SetAttr) and op.node in created_in:
                    # The parent's attributes were set after the Create (cp -a, tar and rsync restore a folder's
                    # times last): holding the Create back would apply it after them and move the folder's mtime.
                    candidates -= created_in.pop(op.node)
        for op_list in batch.op_lists:
            for op in op_list:
                if isinstance(op, ops.Link) and op.node in candidates:
                    candidates.discard(op.node)
                elif isinstance(op, (ops.Rename, ops.Unlink)) and op.entry in entry_node:
                    candidates.discard(entry_node[op.entry])
        return candidates | (rewriting - batch.created)

    def _rollback(self, batch: Batch) -> None:
        """Undo the provisional application of ``batch``: the tree is the committed one again."""
        replica = self.replica
        if replica.heads != batch.heads or replica.tree is not batch.state:
            # Something changed the replica under the batch without setting it aside (see mount_sync): its tree
            # rows may hold provisional state. Never expected; a refold from the changes makes it right.
            log.warning("group commit: the replica changed under the open batch; refolding the tree")
            with self.translated("commit"):
                replica.refold()
        elif batch.exact:
            replica.tree.restore(batch.nodes_before, batch.entries_before)
        else:  # an op touched something no snapshot covers (never expected either): reload the committed rows
            log.info("group commit: reloading the committed tree to undo a provisional application")
            replica.tree = replica._load_tree()  # noqa: SLF001 - the committed rows, never provisional ones

    def _restage(self, op_lists: Sequence[list[ops.Op]], carry: Batch | None) -> None:
        """Apply ``op_lists`` again into the open batch (after an undo), with the blobs of ``carry``."""
        for op_list in op_lists:
            self._stage(op_list)
        if carry is not None and carry.blobs:
            batch = self._open_batch()
            batch.blobs.update(carry.blobs)
            batch.durable.update(carry.durable)
            batch.pending.update(carry.pending)
            batch.pending_bytes += carry.pending_bytes

    @locked
    def flush_batch(self, *, force: bool = False, exclude: Collection[bytes] = (),
                    keep_on_failure: bool = True) -> None:  # fmt: skip
        """Commit the open batch: its blobs made durable, then its folded ops as one change (a few when they
        exceed a change's payload limit) in ONE store transaction. Unless ``force``, files created in the batch
        and still open (:meth:`_held`; those in ``exclude`` excepted) stay in a new open batch. On failure the
        tree is the committed one; with ``keep_on_failure`` the batch is applied again and stays open (to be
        retried), else it is dropped."""
        batch = self._batch
        if batch is None:
            return
        self._drop_unreachable_blobs(batch)
        held = set() if force else self._held(batch, exclude)
        commit_lists: list[list[ops.Op]] = []
        held_lists: list[list[ops.Op]] = []
        for op_list in batch.op_lists:
            if not held:
                commit_lists.append(op_list)
                continue
            keep = [op for op in op_list if _op_node(op) in held]
            rest = [op for op in op_list if _op_node(op) not in held]
            if keep:
                held_lists.append(keep)
            if rest:
                commit_lists.append(rest)
        if not commit_lists and not batch.blobs:
            return  # only files still being written: nothing to commit yet
        self._batch = None
        self._rollback(batch)
        op_list = fold_ops([op for ops_ in commit_lists for op in ops_])
        try:
            with self.translated("commit"):
                self._commit_batch(batch, op_list)
        except FsError:
            if keep_on_failure:
                self._restage(batch.op_lists, batch)
            raise
        finally:
            if held_lists and self._batch is None:
                self._restage(held_lists, None)
        state = self.replica.tree
        touched = self._touched(op_list) | {n for n in batch.nodes_before if n not in held}
        for node_id in touched:  # what the kernel saw through a handle in this batch is what was committed
            inode = self._ino_of.get(node_id)
            seen = self._seen_content.get(inode) if inode is not None else None
            node = state.nodes.get(node_id)
            if seen is not None and node is not None and is_provisional(seen[0]):
                self._seen_content[inode] = self.content_key(node)  # type: ignore[index]

    @contextlib.contextmanager
    def batch_aside(self) -> Iterator[None]:
        """Run something that changes the replica from outside (received changes, ACL records) on the committed
        tree: the batch is committed, what it holds back is undone meanwhile and applied again afterwards (on
        top of whatever arrived; the fold rules then decide, as for any change)."""
        with self._lock:
            self.flush_batch()
            held = self._batch
            self._batch = None
            if held is not None:
                self._rollback(held)
            try:
                yield
            finally:
                if held is not None:
                    self._restage(held.op_lists, held)

    def _drop_unreachable_blobs(self, batch: Batch) -> None:
        """Forget the blobs of ``batch`` that nothing reaches any more — their file was truncated, rewritten or
        deleted within the batch (a sequential writer's blobs are written as it writes, see :mod:`.stream`) — and
        delete their files unless the store indexes the blob already (content-addressed: a committed file may
        hold the same chunk). Without this, a disk filled by a file that then failed its fsync stays full after
        the user truncates that file, and every later commit fails too. Reachable: the contents the batch's ops
        write, every open or staged file's current content, staged bases and the chunks of sealing streams."""
        if not batch.blobs:
            return
        reached: set[bytes] = set()

        def reach(content: ops.Content) -> None:
            if content.manifest is not None:
                reached.add(content.manifest.blob)
                if content.manifest.blob in batch.blobs:  # a manifest of an earlier batch lists committed chunks
                    reached.update(e.chunk.blob for e in self.reads.extents(content))
            reached.update(e.chunk.blob for e in content.extents)

        try:
            self._reach_batch_blobs(batch, reach)
        except AnysyncError as e:  # a manifest that does not open: keep every blob (this is only a clean-up)
            log.info("group commit: not dropping unreached blobs (%s)", e)
            return
        unreached = [b for b in batch.blobs if b not in reached]
        if not unreached:
            return
        indexed = self.replica.store.blob_rows(unreached)
        for blob_id in unreached:
            del batch.blobs[blob_id]
            batch.durable.discard(blob_id)
            data = batch.pending.pop(blob_id, None)
            if data is not None:
                batch.pending_bytes -= len(data)
            elif blob_id not in indexed:
                with contextlib.suppress(AnysyncError):  # a leftover is harmless: an unindexed file, as a crash leaves
                    self.replica.blobs.delete(blob_id)
        log.debug("group commit: %d blob(s) of the batch no longer reached, dropped", len(unreached))

    def _reach_batch_blobs(self, batch: Batch, reach: Callable[[ops.Content], None]) -> None:
        """Call ``reach`` on every content that may hold a blob of ``batch``: what its folded ops write (a Write
        replaced by a later one in the batch is gone), every open or staged file's content, staged bases and the
        chunks a sealing stream holds."""
        for op in fold_ops([op for op_list in batch.op_lists for op in op_list]):
            if isinstance(op, ops.Write) and isinstance(op.content, ops.Content):
                reach(op.content)
        state = self.replica.tree
        for node_id in {*self._opens, *self._staged}:
            node = state.nodes.get(node_id)
            if node is not None and node.kind == ops.KIND_FILE:
                reach(node.content)
        for staged in self._staged.values():
            reach(staged.base)
            if staged.stream is not None:
                reach(ops.Content(size=staged.stream.start, extents=staged.stream.sealed))

    def _commit_batch(self, batch: Batch, op_list: list[ops.Op]) -> None:
        replica = self.replica
        store = replica.store
        blob_ids = list(batch.blobs)
        unsynced = [b for b in blob_ids if b not in batch.durable]
        if batch.pending:
            replica.blobs.put_many(list(batch.pending.items()))
        if unsynced:
            replica.blobs.make_durable(unsynced)  # before any change that references them can be durable
        parts = split_payloads(op_list) if op_list else []
        if not parts and not blob_ids:
            return
        try:
            with store.transaction():
                store.index_new_blobs(replica.space_id, list(batch.blobs.items()))
                for part in parts:
                    replica.commit(part, wall_us=batch.wall_us or None)
        except BaseException:
            # The transaction is gone, but the replica may have applied parts of it in memory.
            replica._reload()  # noqa: SLF001
            raise

    @locked
    def blobs_to_sync(self) -> list[tuple[bytes, bytes | None]]:
        """For the mount's timer: blobs of the open batch not yet made durable, with their bytes when they are
        not written yet. The timer writes and fsyncs them WITHOUT the lock (file system calls go on meanwhile),
        then hands their IDs to :meth:`flush_due`."""
        batch = self._batch
        if batch is None:
            return []
        return [(b, batch.pending.get(b)) for b in batch.blobs if b not in batch.durable]

    @locked
    def flush_due(self, synced: Collection[bytes] = ()) -> bool:
        """For the mount's timer: commit the open batch once it is ``batch_interval`` old, or sooner when nothing
        was added for a twentieth of that (a burst has ended: a lone save reaches other devices at once). Files
        created in it and still open stay in the batch. True if it committed."""
        batch = self._batch
        if batch is None or self.batch_interval is None or self._closed:
            return False
        now = time.monotonic()
        if now - batch.opened < self.batch_interval and now - batch.last_op < self.batch_interval * IDLE_SHARE:
            return False
        for blob_id in synced:  # written and fsynced by the timer: blob files are immutable once written
            if blob_id in batch.blobs:
                batch.durable.add(blob_id)
                data = batch.pending.pop(blob_id, None)
                if data is not None:
                    batch.pending_bytes -= len(data)
        self.flush_batch()
        if self._ids_drawn and len(self._id_pool) < ID_POOL // 2 and not self.read_only:
            # Creates are drawing IDs (an untar): reserve the next ones here, in the timer's worker thread, rather
            # than in the create that empties the pool (inline on the trio thread, which then serves nothing for
            # the transaction's ~9 ms).
            self._refill_id_pool()
        return self._batch is not batch

    def batch_due(self) -> bool:
        """Whether :meth:`flush_due` would commit now (read without the lock: a cheap hint for the timer)."""
        batch = self._batch
        if batch is None or self.batch_interval is None:
            return False
        now = time.monotonic()
        return now - batch.opened >= self.batch_interval or now - batch.last_op >= self.batch_interval * IDLE_SHARE

    # ------------------------------------------------------------------------------------------ staging
    def staged_for(self, node: tree.Node) -> Staged:
        staged = self._staged.get(node.id)
        if staged is None:
            staged = Staged(node.id, node.content, node.mtime_ns, node.ctime_ns, self.staging_dir)
            self._staged[node.id] = staged
        return staged

    def start_stream(self, staged: Staged) -> None:
        """Let ``staged`` seal an appending writer's bytes as they come (:mod:`.stream`), when its file is empty,
        truncated to nothing, or ends where its last chunk (the one an end of file may have cut short) ends; the
        stream then starts at that chunk. Otherwise, and when the bytes to start from are not all here, the
        writes go to the staging files as before."""
        base, size = staged.base, staged.size
        sealed: list[ops.Extent] = []
        start, tail = 0, b""
        try:
            with self.translated("write"):
                try:
                    if size == 0:
                        pass  # a new file, or truncated to nothing: no base byte is left
                    elif staged.base_limit < base.size or size != base.size:
                        return  # cut or grown by a truncation: the general path plans what to re-cut
                    elif base.inline or (not base.extents and base.manifest is None):
                        tail = self.reads.read(base, 0, size)
                    else:
                        extents = self.reads.extents(base)
                        last_end = extents[-1].offset + extents[-1].chunk.length if extents else 0
                        if last_end > size:
                            return  # the last chunk reaches past the end (a truncation): re-cut by the general path
                        if extents and last_end == size:
                            sealed, start = list(extents[:-1]), extents[-1].offset
                            tail = self.reads.read(base, start, size - start)
                        else:
                            sealed, start = list(extents), size  # the file ends in a hole
                    staged.stream = SealStream(self.replica.chunk_params, self.replica.chunk_key_base(), self._put_blob,
                                               sealed=sealed, start=start, tail=tail)  # fmt: skip
                except BlobMissing:
                    return  # the last chunk is not on this device: staged, and fetched at the commit as before
        except FsError as e:
            log.info("no sealing stream for this writer (%s): staging its writes", e)

    def drop_staged(self, node_id: bytes) -> None:
        staged = self._staged.pop(node_id, None)
        if staged is not None:
            staged.close()

    def drop_if_orphan(self, node_id: bytes) -> None:
        """Forget the staged writes of a node no name points at any more, once no handle has it open."""
        if self._opens.get(node_id, 0) == 0 and not self.replica.tree.visible(node_id):
            self.drop_staged(node_id)

    def commit_staged(self, node_id: bytes, extra: Sequence[ops.Op] = ()) -> None:
        """Commit the staged writes and pending attributes of a node (and ``extra`` ops) as ONE change; blobs
        are durable first. On failure everything stays staged, to be committed later."""
        staged = self._staged.get(node_id)
        state = self.replica.tree
        if staged is None or node_id not in state.nodes or not state.visible(node_id):
            if staged is not None:
                self.drop_if_orphan(node_id)  # no name left (here or by a change from elsewhere): nothing to keep
            if extra:
                self.commit(list(extra))
            return
        self.check_writable()
        op_list: list[ops.Op] = []
        if staged.data_changed:
            with self.translated("commit"):
                staged.settle()  # a sequential writer's sealed prefix becomes the base (see .stream)
                key_base = self.replica.chunk_key_base()
                base_extents = self.reads.extents(staged.base)
                # Blobs are written without fsync; the batch makes them durable and indexes them at its commit.
                content = build_content(staged, base_extents, self.reads.read, key_base,
                                        self.replica.chunk_params, self._put_blob)  # fmt: skip
            op_list.append(ops.Write(node_id, content, staged.mtime_ns))
        if staged.attrs:
            op_list.append(ops.SetAttr(node_id, **staged.attrs))  # type: ignore[arg-type]
        elif staged.data_changed and staged.ctime_ns != staged.mtime_ns:
            op_list.append(ops.SetAttr(node_id))  # attributes changed after the last write: ctime is now
        op_list.extend(extra)
        if op_list:
            self.commit(op_list)
        self.drop_staged(node_id)
        inode = self._ino_of.get(node_id)
        if inode is not None and inode in self._seen_content:
            # The kernel's page cache holds exactly what was written through it: it stays valid.
            self._seen_content[inode] = self.content_key(self.replica.tree.nodes[node_id])

    @staticmethod
    def content_key(node: tree.Node) -> tuple[Any, ...]:
        return (node.last_write, node.content.size, node.mtime_ns)

    # ------------------------------------------------------------------------------------------ handles
    def new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def file_handle(self, fh: int) -> FileHandle:
        handle = self._files.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, "unknown file handle")
        return handle

    # ------------------------------------------------------------------------------------------ public: misc
    @locked
    def getattr(self, inode: int, ctx: Ctx | None = None) -> Attr:
        if self.virtual.is_special(inode):
            with self.translated("history"):
                return self.virtual.attr(inode)
        view, node_id = self.target(inode)
        return self.node_attr(view, node_id)

    @locked
    def forget(self, items: list[tuple[int, int]]) -> None:
        for inode, n in items:
            left = self._lookups.get(inode, 0) - n
            if left > 0:
                self._lookups[inode] = left
            else:
                self._lookups.pop(inode, None)

    @locked
    def add_lookups(self, inodes: Sequence[int]) -> None:
        """The kernel took a reference to each inode (readdirplus entries it accepted)."""
        for inode in inodes:
            self.count_lookup(inode)

    @locked
    def statfs(self, ctx: Ctx) -> StatFs:
        try:
            s = os.statvfs(self.staging_dir)
        except OSError as e:
            raise FsError(errno.EIO, f"statfs: {e}") from None
        return StatFs(s.f_frsize or s.f_bsize, s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree, NAME_MAX)

    def sync(self) -> None:
        """Make every change committed so far durable (the store runs with synchronous=NORMAL: a commit is
        atomic at once but durable only after this)."""
        with self.translated("sync"):
            self.replica.sync()

    @locked
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        """fsync of a directory: commit the open batch (every pending change of the space, like a journaling
        file system's commit, files still being written included, as they are) and make it durable."""
        self.flush_batch(force=True)
        self.sync()

    @locked
    def commit_all(self) -> None:
        """Commit every staged file (each as its own change). Raises the first error after trying them all."""
        first: FsError | None = None
        for node_id in list(self._staged):
            try:
                self.commit_staged(node_id)
            except FsError as e:
                log.warning("could not commit staged writes: %s", e)
                first = first or e
        if first is not None:
            raise first

    @locked
    def close(self) -> None:
        """Commit everything, then drop the staging files. Idempotent."""
        if self._closed:
            return
        try:
            self.commit_all()
            self.flush_batch(force=True)
            self.replica.sync()  # an unmount leaves everything durable
        except FsError as e:
            log.error("closing with uncommitted writes lost: %s", e)
        except StoreError as e:
            log.error("closing: the store could not be synced: %s", e)
        finally:
            for node_id in list(self._staged):
                self.drop_staged(node_id)
            self._files.clear()
            self._dirs.clear()
            self._closed = True

    @locked
    def take_landed(self) -> tuple[list[int], list[tuple[int, bytes]]]:
        """What changes not made through this Vfs altered since the last call, in the kernel's terms: the inodes
        whose attributes, content or listing changed, and the (directory inode, name) entries that are gone or
        name another node now. Only numbers handed out here can be in the kernel's caches; the rest is skipped.
        The cost follows what landed (the fold noted it), not the size of the tree."""
        delta = self.replica.landed
        if not delta:
            return [], []
        self.replica.landed = tree.TreeDelta()
        ino_of = self._ino_of
        inodes = sorted({ino_of[n] for n in delta.nodes if n in ino_of})
        names = [(ino_of[parent], name) for parent, name in delta.gone(self.replica.tree) if parent in ino_of]
        return inodes, names

    @locked
    def pick_up_commits(self) -> bool:
        """Load what other processes of this device (``anysyncfs put``, ``sync``, a second CLI command) committed
        to the store since this replica last read its heads. One indexed read when nothing moved; otherwise the
        open batch is set aside as for received changes and the replica reloads (the tree difference lands in
        :meth:`take_landed`). True if anything was picked up."""
        if not self.commits_elsewhere():
            return False
        with self.translated("pick up"), self.batch_aside():
            return self.replica.pick_up_commits()

    @locked
    def commits_elsewhere(self) -> bool:
        """Whether the stored heads moved without this replica (another process committed): one indexed read."""
        replica = self.replica
        with self.translated("pick up"):
            return set(replica.store.heads(replica.space_id)) != set(replica.heads)

    def direct_io_inode(self, fh: int) -> int | None:
        """The inode of a handle opened with O_DIRECT (None for others): its writes must drop the kernel's page
        cache of the file (see ``Operations.write``). Reads one dict entry: no lock needed."""
        handle = self._files.get(fh)
        return handle.inode if handle is not None and handle.flags & os.O_DIRECT else None

    @locked
    def content_unchanged(self, fh: int) -> bool:
        return self.file_handle(fh).keep_cache

    def seen_at_open(self, inode: int, node: tree.Node, immutable: bool) -> bool:
        """Record the content the kernel sees at this open; True if it saw the same at an earlier open."""
        key = ("immutable",) if immutable else self.content_key(node)
        previous = self._seen_content.get(inode)
        self._seen_content[inode] = key
        return previous == key

    @staticmethod
    def is_dir_mode(mode: int) -> bool:
        return stat.S_ISDIR(mode)
