"""Extended attributes: user.* stored with the node (synced like every attribute) and read-only sync state.

* ``user.*`` names are stored (name at most 255 bytes: ERANGE; value at most 64 KiB: E2BIG), on regular files
  and directories only (EPERM elsewhere, as Linux does), with the permission rules of a local disk (write
  permission to set, read permission to get, sticky directories only by their owner).
* ``user.anysync.state`` (``local`` when every blob is on this device, ``remote-only`` otherwise, ``conflict``
  for a conflict copy), ``user.anysync.version`` (the ID of the last change that touched the node) and
  ``user.anysync.author`` (that change's author) are computed, listed, and read-only (EPERM on set/remove).
* Other namespaces: getxattr gives ENODATA, as a local disk does for an attribute that is not set (tools and
  the kernel probe ``security.capability`` and ``system.posix_acl_*`` this way and expect ENODATA); setxattr
  and removexattr give ENOTSUP. (Only ENOSYS would make a FUSE kernel stop sending xattr requests for good.)
"""

from __future__ import annotations

import errno

from ..core import ids, ops, tree
from ..core.tree_names import CONFLICT_MARK
from ..errors import FsError
from . import perms
from .attrs import XATTR_CREATE, XATTR_REPLACE, Ctx
from .vfs_base import View, locked
from .vfs_files import FilesMixin

USER_PREFIX = b"user."
SYNC_PREFIX = b"user.anysync."
STATE_NAME = b"user.anysync.state"
VERSION_NAME = b"user.anysync.version"
AUTHOR_NAME = b"user.anysync.author"
SYNC_NAMES = (AUTHOR_NAME, STATE_NAME, VERSION_NAME)


class XattrMixin(FilesMixin):
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
            return ids.change_text(node.version).encode("ascii")
        if name == AUTHOR_NAME:
            return ids.account_text(node.author).encode("ascii")
        if self._is_conflict_copy(view, node):
            return b"conflict"
        if node.kind == ops.KIND_FILE and not self.reads.all_local(node.content, self.replica.blobs.has):
            return b"remote-only"
        return b"local"

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
        return stored + list(SYNC_NAMES)
