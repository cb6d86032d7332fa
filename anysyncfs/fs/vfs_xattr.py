"""Extended attributes: user.* stored with the node (synced like every attribute), read-only sync state, and the
device-local offline controls (pin, evict) of the blob cache (:mod:`anysyncfs.replica.cache`).

* ``user.*`` names are stored (name at most 255 bytes: ERANGE; value at most 64 KiB: E2BIG), on regular files
  and directories only (EPERM elsewhere, as Linux does), with the permission rules of a local disk (write
  permission to set, read permission to get, sticky directories only by their owner).
* ``user.anysync.state``, ``user.anysync.version`` (the ID of the last change that touched the node) and
  ``user.anysync.author`` (that change's author) are computed and read-only (EPERM on set/remove). They are
  readable by name but not listed (a listed attribute is one ``cp -a`` and ``rsync -X`` copy off the drive, and
  that attribute counts and size limits include), unless the mount sets :attr:`XattrMixin.list_virtual_xattrs`
  (``-o list_virtual_xattrs``).
  The state is ``conflict`` for a conflict copy; for a file ``remote-only`` when any of its blobs is not on this
  device, else ``pinned`` when it is pinned, else ``local``; for a directory ``pinned`` when it is pinned and
  every file below it is here (``remote-only`` when one is not), else ``local``.
* Offline controls, per device (never synced, never listed: copying tools must not carry them to other files),
  allowed to anyone who may read the node, on read-only mounts too, in the live tree only (EROFS in history).
  ``user.anysync.pinned`` reads ``1`` when the node or a directory above it is pinned, else ``0``; setting ``1``
  pins the file or directory (everything below a pinned directory is pinned, later files included), ``0`` or
  removing it unpins the node and every pinned node below it. Setting ``user.anysync.evict`` to ``1`` on a file
  (on a directory: every file below it) deletes the local blob files of its content that the cache may evict
  (confirmed by a provider, not pinned, not used by an open or staged file). ``user.anysync.local_bytes`` and
  ``user.anysync.unsynced_bytes`` (read-only) give the bytes of a file's blobs on this device and, of those, the
  bytes no provider has confirmed storing yet (for a directory: summed over the files below it). Through FUSE
  the kernel adds its own rule for every user.* attribute: setting one needs write permission on the node and a
  read-write mount.
* Other namespaces: getxattr gives ENODATA, as a local disk does for an attribute that is not set (tools and
  the kernel probe ``security.capability`` and ``system.posix_acl_*`` this way and expect ENODATA); setxattr
  and removexattr give ENOTSUP. (Only ENOSYS would make a FUSE kernel stop sending xattr requests for good.)

Reads of blobs are noted for the cache's least-recently-used order; the mount drives eviction through
:meth:`XattrMixin.cache_tick` and :meth:`XattrMixin.cache_after_fetch` (see :mod:`.mount_sync`).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence
from pathlib import Path

from ..core import ids, ops, tree
from ..core.tree_names import CONFLICT_MARK
from ..errors import FsError, StoreError
from ..replica.cache import BlobCache, EvictResult
from ..replica.replica import Replica
from . import perms
from .attrs import XATTR_CREATE, XATTR_REPLACE, Ctx
from .batch import is_provisional
from .reading import ContentReads
from .vfs_base import View, locked
from .vfs_files import FilesMixin

log = logging.getLogger(__name__)

USER_PREFIX = b"user."
SYNC_PREFIX = b"user.anysync."
STATE_NAME = b"user.anysync.state"
VERSION_NAME = b"user.anysync.version"
AUTHOR_NAME = b"user.anysync.author"
SYNC_NAMES = (AUTHOR_NAME, STATE_NAME, VERSION_NAME)  # listed with -o list_virtual_xattrs
PINNED_NAME = b"user.anysync.pinned"
EVICT_NAME = b"user.anysync.evict"
LOCAL_BYTES_NAME = b"user.anysync.local_bytes"
UNSYNCED_BYTES_NAME = b"user.anysync.unsynced_bytes"
OFFLINE_SETTABLE = (PINNED_NAME, EVICT_NAME)


class XattrMixin(FilesMixin):
    list_virtual_xattrs = False  # listxattr also names SYNC_NAMES (set by the mount for -o list_virtual_xattrs)
    def __init__(
        self,
        replica: Replica,
        *,
        staging_dir: Path,
        read_only: bool = False,
        commit_interval: float = 5.0,
        batch_interval: float | None = None,
    ) -> None:
        super().__init__(replica, staging_dir=staging_dir, read_only=read_only, commit_interval=commit_interval,
                         batch_interval=batch_interval)
        self.cache = BlobCache(replica)
        # The same verified reads, through a getter that also notes each blob read (the cache's LRU order).
        self.reads = ContentReads(self._get_blob_noting_access, read_ranges=self._read_blob_ranges_noting_access,
                                  prefetch=self._prefetch_blob)

    def _get_blob_noting_access(self, blob_id: bytes) -> bytes:
        pending = self.pending_blob(blob_id)  # the open batch's own, not written yet
        if pending is not None:
            return pending
        data = self.replica.get_blob(blob_id)
        self.cache.touch(blob_id)
        return data

    def _read_blob_ranges_noting_access(
        self, blob_id: bytes, ranges: Sequence[tuple[int, int]]
    ) -> tuple[int, list[bytes]] | None:
        got = self._read_blob_ranges(blob_id, ranges)
        if got is not None:
            self.cache.touch(blob_id)
        return got

    def _xattr_node(self, inode: int) -> tuple[View, tree.Node] | None:
        """The node behind ``inode`` (None for the special .anysync folders, which have no attributes)."""
        if self.virtual.is_special(inode):
            return None
        view, node_id = self.target(inode)
        return view, self.node(view, node_id)

    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if len(name) > ops.XATTR_NAME_MAX:
            raise FsError(errno.ERANGE, "attribute name too long")
        if not name:
            raise FsError(errno.EINVAL, "empty attribute name")

    def _is_conflict_copy(self, view: View, node: tree.Node) -> bool:
        state = view.state
        for entry in state.live_entries(node.id):
            name = state.display_name(entry)
            if name is not None and CONFLICT_MARK in name:
                return True
        return False

    def _sync_value(self, view: View, node: tree.Node, name: bytes) -> bytes:
        if name == VERSION_NAME:
            if view is self.live and is_provisional(node.version):
                self.flush_batch()  # the version of a node changed in the open batch is its commit's ID
                node = self.replica.tree.nodes[node.id]
            return ids.change_text(node.version).encode("ascii")
        if name == AUTHOR_NAME:
            return ids.account_text(node.author).encode("ascii")
        if self._is_conflict_copy(view, node):
            return b"conflict"
        pinned = view is self.live and self.cache.is_pinned(node.id)
        if node.kind == ops.KIND_FILE:
            if not self.reads.all_local(node.content, self.blob_here):
                return b"remote-only"
            return b"pinned" if pinned else b"local"
        if node.kind == ops.KIND_DIR and pinned:
            nodes = self.replica.tree.nodes
            for file_id in self.cache.files_below(node.id):
                if not self.reads.all_local(nodes[file_id].content, self.blob_here):
                    return b"remote-only"
            return b"pinned"
        return b"local"

    # ------------------------------------------------------------------------------------------ offline
    def _offline_value(self, view: View, node: tree.Node, name: bytes) -> bytes:
        if name == PINNED_NAME:
            return b"1" if view is self.live and self.cache.is_pinned(node.id) else b"0"
        if node.kind == ops.KIND_FILE:
            files = [node]
        elif node.kind == ops.KIND_DIR and view is self.live:
            nodes = self.replica.tree.nodes
            files = [nodes[n] for n in self.cache.files_below(node.id)]
        else:
            raise FsError(errno.ENODATA, "no such attribute")
        with self.translated("cache"):
            usages = [self.cache.content_usage(f.content) for f in files]
        if name == LOCAL_BYTES_NAME:
            return str(sum(u.local for u in usages)).encode("ascii")
        return str(sum(u.unsynced for u in usages)).encode("ascii")

    def _offline_target(self, inode: int, ctx: Ctx) -> tree.Node:
        """The live file or directory behind ``inode`` that the caller may pin or evict (read access)."""
        found = self._xattr_node(inode)
        if found is None:
            raise FsError(errno.EPERM, "the .anysync folder cannot be pinned or evicted")
        view, node = found
        if view is not self.live:
            raise FsError(errno.EROFS, "versions in history cannot be pinned or evicted")
        if node.kind not in (ops.KIND_FILE, ops.KIND_DIR):
            raise FsError(errno.EPERM, "only files and directories can be pinned or evicted")
        self.check_access(ctx, node, perms.R)
        return node

    def _set_offline(self, inode: int, name: bytes, value: bytes, flags: int, ctx: Ctx) -> None:
        node = self._offline_target(inode, ctx)
        if name == PINNED_NAME:
            if flags & XATTR_CREATE:
                raise FsError(errno.EEXIST, "attribute exists")  # it always does: it reads 0 or 1
            if value not in (b"0", b"1"):
                raise FsError(errno.EINVAL, "user.anysync.pinned takes 1 (pin) or 0 (unpin)")
            with self.translated("pin"):
                if value == b"1":
                    self.cache.pin(node.id)
                    # Pinning reads the files through the mount so that what is missing gets fetched: reads
                    # served from memory (chunks of blobs evicted from the disk meanwhile) would fetch nothing.
                    self.reads.drop_cache()
                else:
                    self.cache.unpin(node.id)
            return
        if flags & XATTR_REPLACE:
            raise FsError(errno.ENODATA, "no such attribute")  # it never exists: it is an action
        if value != b"1":
            raise FsError(errno.EINVAL, "user.anysync.evict takes 1")
        nodes = self.replica.tree.nodes
        file_ids = self.cache.files_below(node.id)
        with self.translated("evict"):
            in_use = self._in_use_blobs()
            for file_id in file_ids:
                self.cache.evict_content(nodes[file_id].content, in_use)

    def _in_use_blobs(self) -> set[bytes]:
        """Blobs of the files open in the live tree and of the base content of staged writes: never evicted
        while so (a commit must be able to read the base; an open file is probably being read)."""
        state = self.replica.tree
        contents = [staged.base for staged in self._staged.values()]
        for handle in self._files.values():
            if handle.view is self.live and handle.node in state.nodes:
                contents.append(state.nodes[handle.node].content)
        return self.cache.contents_blobs(contents)

    @locked
    def cache_tick(self) -> EvictResult:
        """The mount's periodic cache work: write noted access times, count the local blobs again, keep the
        saved pinned blobs current (for other spaces' caches), and evict down to the limit if over it."""
        with self.translated("cache"):
            self.cache.flush_access()
            self.cache.local_bytes(refresh=True)
            self.cache.pinned_blobs()
            return self.cache.evict_to_limit(self._in_use_blobs())

    @locked
    def cache_after_fetch(self, blob_id: bytes) -> EvictResult:
        """A blob was just fetched: count it and, if the cache is now over its limit, evict (never that blob:
        the read that asked for it is about to use it)."""
        with self.translated("cache"):
            self.cache.note_stored(blob_id)
            if not self.cache.over_limit():
                return EvictResult()
            return self.cache.evict_to_limit(self._in_use_blobs() | {blob_id})

    @locked
    def cache_missing_pinned(self, limit: int) -> list[bytes]:
        """Up to ``limit`` blobs of pinned files that are not here (the mount fetches them in the background)."""
        with self.translated("cache"):
            return self.cache.missing_pinned(limit)

    @locked
    def close(self) -> None:
        try:
            self.cache.flush_access()
        except StoreError as e:
            log.warning("could not record blob access times: %s", e)
        super().close()

    def _check_modify(self, inode: int, name: bytes, ctx: Ctx) -> tuple[View, tree.Node]:
        self._check_xattr_name(name)
        if name.startswith(SYNC_PREFIX) or name == SYNC_PREFIX.rstrip(b"."):
            raise FsError(errno.EPERM, "user.anysync.* attributes are read-only")
        found = self._xattr_node(inode)
        if found is None:
            self.check_writable(None)
            raise FsError(errno.EROFS, "the .anysync folder is read-only")
        view, node = found
        self.check_writable(view)
        if not name.startswith(USER_PREFIX):
            raise FsError(errno.ENOTSUP, "only user.* attributes are supported")
        if len(name) == len(USER_PREFIX):
            raise FsError(errno.EINVAL, "empty attribute name")
        if node.kind not in (ops.KIND_FILE, ops.KIND_DIR):
            raise FsError(errno.EPERM, "user attributes only exist on files and directories")
        uid, _ = self.owner_of(node)
        if node.kind == ops.KIND_DIR and node.mode & 0o1000 and ctx.uid not in (0, uid):
            raise FsError(errno.EPERM, "sticky directory: only its owner may change its attributes")
        self.check_access(ctx, node, perms.W)
        return view, node

    @locked
    def setxattr(self, inode: int, name: bytes, value: bytes, flags: int, ctx: Ctx) -> None:
        if name in OFFLINE_SETTABLE:
            self._set_offline(inode, name, bytes(value), flags, ctx)
            return
        _, node = self._check_modify(inode, name, ctx)
        if len(value) > ops.XATTR_VALUE_MAX:
            raise FsError(errno.E2BIG, "attribute value too large")
        exists = name in node.xattrs
        if flags & XATTR_CREATE and exists:
            raise FsError(errno.EEXIST, "attribute exists")
        if flags & XATTR_REPLACE and not exists:
            raise FsError(errno.ENODATA, "no such attribute")
        self.commit([ops.SetAttr(node.id, xattrs_set={name: bytes(value)})])

    @locked
    def removexattr(self, inode: int, name: bytes, ctx: Ctx) -> None:
        if name == PINNED_NAME:
            node = self._offline_target(inode, ctx)
            with self.translated("unpin"):
                self.cache.unpin(node.id)
            return
        if name == EVICT_NAME:
            raise FsError(errno.ENODATA, "no such attribute")
        _, node = self._check_modify(inode, name, ctx)
        if name not in node.xattrs:
            raise FsError(errno.ENODATA, "no such attribute")
        self.commit([ops.SetAttr(node.id, xattrs_del=[name])])

    @locked
    def getxattr(self, inode: int, name: bytes, ctx: Ctx) -> bytes:
        self._check_xattr_name(name)
        found = self._xattr_node(inode)
        if found is None:
            raise FsError(errno.ENODATA, "no such attribute")
        view, node = found
        if name in SYNC_NAMES:
            return self._sync_value(view, node, name)
        if name in (PINNED_NAME, LOCAL_BYTES_NAME, UNSYNCED_BYTES_NAME):
            return self._offline_value(view, node, name)
        if not name.startswith(USER_PREFIX) or node.kind not in (ops.KIND_FILE, ops.KIND_DIR):
            raise FsError(errno.ENODATA, "no such attribute")
        self.check_access(ctx, node, perms.R)
        value = node.xattrs.get(name)
        if value is None:
            raise FsError(errno.ENODATA, "no such attribute")
        return value

    @locked
    def listxattr(self, inode: int, ctx: Ctx) -> list[bytes]:
        found = self._xattr_node(inode)
        if found is None:
            return []
        _, node = found
        stored = sorted(n for n in node.xattrs if n.startswith(USER_PREFIX) and not n.startswith(SYNC_PREFIX))
        return stored + list(SYNC_NAMES) if self.list_virtual_xattrs else stored
