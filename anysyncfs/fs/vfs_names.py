"""Namespace operations of the VFS: lookup, create/remove/rename names, links, directory listings, access.

Every change of the namespace is committed at once as one signed change (a rename that replaces a target is an
Unlink of the target and a Rename in that same change), so it is durable when the call returns.
"""

from __future__ import annotations

import errno
import stat

from ..core import ops, tree
from ..core.ids import ROOT_NODE
from ..errors import FsError
from . import perms
from .attrs import IFMT_TO_KIND, RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INODE, Attr, Ctx, rdev_bytes
from .vfs_base import READDIR_BATCH, DirHandle, VfsCore, View, locked, new_id, now_ns
from .virtual import ANYSYNC_INO, HIDDEN_NAME

SYMLINK_MAX = ops.SYMLINK_MAX


class NamesMixin(VfsCore):
    # ------------------------------------------------------------------------------------------ helpers
    def _dir_view(self, inode: int) -> tuple[View, tree.Node]:
        view, node_id = self.target(inode)
        node = self.node(view, node_id)
        if node.kind != ops.KIND_DIR:
            raise FsError(errno.ENOTDIR, "not a directory")
        return view, node

    def _parent_inode(self, view: View, node: tree.Node) -> int:
        """The inode '..' names."""
        if node.id == ROOT_NODE:
            if view is self.live:
                return ROOT_INODE
            change = getattr(view, "change", None)
            return self.virtual.change_dir_parent(change) if change is not None else ROOT_INODE
        entry = view.state.dir_entry(node.id)
        if entry is None:
            return view.inode_of(ROOT_NODE)
        return view.inode_of(entry.parent)

    def _existing(self, parent: tree.Node, name: bytes) -> tree.Entry | None:
        return self.replica.tree.lookup(parent.id, name)

    def _reserved(self, parent: tree.Node, name: bytes) -> bool:
        return parent.id == ROOT_NODE and name == HIDDEN_NAME

    def create_node(
        self, parent_inode: int, name: bytes, kind: int, mode: int, ctx: Ctx, target: bytes = b""
    ) -> tuple[bytes, Attr]:
        """Create a node of any kind (one change); returns its node id and attributes."""
        self.check_name(name)
        if name in (b".", b".."):
            raise FsError(errno.EEXIST, "exists")
        parent = self.mutable_dir(parent_inode, ctx)
        if self._reserved(parent, name) or self._existing(parent, name) is not None:
            raise FsError(errno.EEXIST, "file exists")
        uid = ctx.uid
        parent_gid = self.owner_of(parent)[1]
        inherit = bool(parent.mode & stat.S_ISGID)
        gid = parent_gid if inherit else ctx.gid
        if kind == ops.KIND_DIR:
            bits = mode & 0o1777 & ~ctx.umask
            if inherit:
                bits |= stat.S_ISGID
        elif kind == ops.KIND_SYMLINK:
            bits = 0o777
        else:
            bits = mode & 0o7777 & ~ctx.umask
            # A non-member may not create a setgid executable in a group it does not belong to.
            if bits & stat.S_ISGID and bits & stat.S_IXGRP and ctx.uid != 0 and not perms.in_group(ctx, gid):
                bits &= ~stat.S_ISGID
        node_id = self.new_node_id()
        self.commit([ops.Create(node_id, new_id(), parent.id, name, kind, bits, uid, gid, now_ns(), target)])
        attr = self.node_attr(self.live, node_id)
        self.count_lookup(attr.inode)
        return node_id, attr

    def _removable(self, parent_inode: int, name: bytes, ctx: Ctx) -> tuple[tree.Node, tree.Entry, tree.Node]:
        """(parent, entry, node) of a name the caller may remove or rename away."""
        self.check_name(name)
        parent = self.mutable_dir(parent_inode, ctx)
        if self._reserved(parent, name):
            raise FsError(errno.EBUSY, "the .anysync folder cannot be changed")
        entry = self._existing(parent, name)
        if entry is None:
            raise FsError(errno.ENOENT, "no such file or directory")
        node = self.node(self.live, entry.node)
        perms.check_sticky(ctx, parent.mode, self.owner_of(parent)[0], self.owner_of(node)[0])
        return parent, entry, node

    def _inside(self, directory: bytes, ancestor: bytes) -> bool:
        """Whether ``directory`` is ``ancestor`` or below it in the live tree."""
        state = self.replica.tree
        current = directory
        for _ in range(len(state.nodes) + 1):
            if current == ancestor:
                return True
            if current == ROOT_NODE:
                return False
            entry = state.dir_entry(current)
            if entry is None:
                return False
            current = entry.parent
        return True

    # ------------------------------------------------------------------------------------------ lookups
    @locked
    def lookup(self, parent: int, name: bytes, ctx: Ctx) -> Attr:
        """The attributes of ``name`` in ``parent``; counts a kernel lookup reference."""
        self.check_name(name)
        if self.virtual.is_special(parent):
            if name == b".":
                inode = parent
            elif name == b"..":
                inode = self.virtual.parent_of(parent)
            else:
                self.flush_batch()  # history shows committed changes: the open batch becomes one now
                with self.translated("history"):
                    found = self.virtual.lookup(parent, name)
                if found is None:
                    raise FsError(errno.ENOENT, "no such file or directory")
                inode = found
            attr = self.getattr(inode)
            self.count_lookup(attr.inode)
            return attr
        if name == b".":
            # The kernel looks up '.' in an inode (of any kind) to reopen it from a file handle
            # (open_by_handle_at, an NFS export) once it has forgotten it: no directory is searched.
            view, node_id = self.target(parent)
            attr = self.node_attr(view, node_id)
            if attr.nlink == 0:  # removed (kept only for handles still open): a stale file handle
                raise FsError(errno.ENOENT, "no such file or directory")
            self.count_lookup(attr.inode)
            return attr
        view, node = self._dir_view(parent)
        self.check_access(ctx, node, perms.X)
        if name == b".":
            attr = self.node_attr(view, node.id)
        elif name == b"..":
            attr = self.getattr(self._parent_inode(view, node))
        elif view is self.live and node.id == ROOT_NODE and name == HIDDEN_NAME:
            attr = self.getattr(ANYSYNC_INO)
        else:
            entry = view.state.lookup(node.id, name)
            if entry is None:
                raise FsError(errno.ENOENT, "no such file or directory")
            attr = self.node_attr(view, entry.node)
        self.count_lookup(attr.inode)
        return attr

    @locked
    def readlink(self, inode: int, ctx: Ctx) -> bytes:
        if self.virtual.is_special(inode):
            raise FsError(errno.EINVAL, "not a symbolic link")
        view, node_id = self.target(inode)
        node = self.node(view, node_id)
        if node.kind != ops.KIND_SYMLINK:
            raise FsError(errno.EINVAL, "not a symbolic link")
        return node.target

    @locked
    def access(self, inode: int, mode: int, ctx: Ctx) -> None:
        want = perms.access_mask(mode)
        if self.virtual.is_special(inode):
            attr = self.getattr(inode)
            if want & perms.W:
                raise FsError(errno.EROFS, "read-only")
            perms.check(ctx, attr.mode, attr.uid, attr.gid, want)
            return
        view, node_id = self.target(inode)
        node = self.node(view, node_id)
        if want & perms.W:
            self.check_writable(view)
        self.check_access(ctx, node, want)

    # ------------------------------------------------------------------------------------------ creating
    @locked
    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, ctx: Ctx) -> Attr:
        """Regular files, FIFOs, sockets and (for root, as mknod(2) requires CAP_MKNOD) device nodes. The
        special kinds only record their type, mode, owner and device number; the kernel supplies their
        behaviour (pipes, socket binding), and a nodev mount refuses to open devices."""
        kind = IFMT_TO_KIND.get(stat.S_IFMT(mode) or stat.S_IFREG)
        if kind is None or kind == ops.KIND_DIR or kind == ops.KIND_SYMLINK:
            raise FsError(errno.EINVAL if kind is None else errno.EPERM, "mknod cannot create this type")
        target = b""
        if kind in ops.DEVICE_KINDS:
            if ctx.uid != 0:
                raise FsError(errno.EPERM, "only root may create device nodes")
            if not 0 <= rdev < 1 << (8 * ops.RDEV_LEN - 1):
                raise FsError(errno.EINVAL, "bad device number")
            target = rdev_bytes(rdev)
        return self.create_node(parent, name, kind, mode, ctx, target)[1]

    @locked
    def mkdir(self, parent: int, name: bytes, mode: int, ctx: Ctx) -> Attr:
        return self.create_node(parent, name, ops.KIND_DIR, mode, ctx)[1]

    @locked
    def symlink(self, parent: int, name: bytes, target: bytes, ctx: Ctx) -> Attr:
        if not target:
            raise FsError(errno.ENOENT, "empty symlink target")
        if len(target) > SYMLINK_MAX or b"\0" in target:
            raise FsError(errno.ENAMETOOLONG if len(target) > SYMLINK_MAX else errno.EINVAL, "bad symlink target")
        return self.create_node(parent, name, ops.KIND_SYMLINK, 0o777, ctx, target)[1]

    @locked
    def link(self, inode: int, new_parent: int, new_name: bytes, ctx: Ctx) -> Attr:
        self.check_name(new_name)
        if self.virtual.owns(inode):
            self.check_writable(None)
            raise FsError(errno.EXDEV, "cannot link into or out of .anysync")
        view, node_id = self.target(inode)
        node = self.node(view, node_id)
        if node.kind == ops.KIND_DIR:
            raise FsError(errno.EPERM, "hard links to directories are not allowed")
        parent = self.mutable_dir(new_parent, ctx)
        if not self.replica.tree.visible(node_id):
            raise FsError(errno.ENOENT, "the file was removed")
        if new_name in (b".", b"..") or self._reserved(parent, new_name) or self._existing(parent, new_name):
            raise FsError(errno.EEXIST, "file exists")
        self.commit([ops.Link(node_id, new_id(), parent.id, new_name)])
        attr = self.node_attr(self.live, node_id)
        self.count_lookup(attr.inode)
        return attr

    # ------------------------------------------------------------------------------------------ removing
    @locked
    def unlink(self, parent: int, name: bytes, ctx: Ctx) -> None:
        if name in (b".", b".."):
            raise FsError(errno.EISDIR, "is a directory")
        _, entry, node = self._removable(parent, name, ctx)
        if node.kind == ops.KIND_DIR:
            raise FsError(errno.EISDIR, "is a directory")
        if self._opens.get(node.id, 0) == 0 and len(self.replica.tree.live_entries(node.id)) == 1:
            # Its last name goes and nobody has it open: the staged bytes can only be thrown away. Do it first,
            # so that deleting the file that filled the disk frees the room its own commit needs.
            self.drop_staged(node.id)
        self.commit([ops.Unlink(entry.id)])
        self.drop_if_orphan(node.id)

    @locked
    def rmdir(self, parent: int, name: bytes, ctx: Ctx) -> None:
        if name == b".":
            raise FsError(errno.EINVAL, "cannot remove '.'")
        if name == b"..":
            raise FsError(errno.ENOTEMPTY, "cannot remove '..'")
        _, entry, node = self._removable(parent, name, ctx)
        if node.kind != ops.KIND_DIR:
            raise FsError(errno.ENOTDIR, "not a directory")
        if self.replica.tree.has_live_children(node.id):
            raise FsError(errno.ENOTEMPTY, "directory not empty")
        self.commit([ops.Unlink(entry.id)])

    @locked
    def rename(
        self, parent_old: int, name_old: bytes, parent_new: int, name_new: bytes, flags: int, ctx: Ctx
    ) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "invalid rename flags")
        self.check_name(name_new)
        if name_old in (b".", b"..") or name_new in (b".", b".."):
            raise FsError(errno.EBUSY if flags & RENAME_EXCHANGE else errno.EINVAL, "cannot rename . or ..")
        src_parent, src, src_node = self._removable(parent_old, name_old, ctx)
        dst_parent = self.mutable_dir(parent_new, ctx)
        if self._reserved(dst_parent, name_new):
            raise FsError(errno.EBUSY, "the .anysync folder cannot be replaced")
        dst = self._existing(dst_parent, name_new)
        state = self.replica.tree
        dst_node = self.node(self.live, dst.node) if dst is not None else None
        if dst is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST, "target exists")
        if dst is not None and dst_node is not None:
            perms.check_sticky(ctx, dst_parent.mode, self.owner_of(dst_parent)[0], self.owner_of(dst_node)[0])
        if flags & RENAME_EXCHANGE:
            if dst is None or dst_node is None:
                raise FsError(errno.ENOENT, "exchange target does not exist")
            if src.id == dst.id:
                return
            self._check_dir_move(src_node, src_parent, dst_parent, ctx)
            self._check_dir_move(dst_node, dst_parent, src_parent, ctx)
            self.commit([ops.Rename(src.id, dst_parent.id, name_new), ops.Rename(dst.id, src_parent.id, name_old)])
            return
        if dst is not None and dst_node is not None:
            if dst.id == src.id or dst.node == src.node:
                return  # the same file under both names: POSIX says do nothing
            if src_node.kind == ops.KIND_DIR:
                if dst_node.kind != ops.KIND_DIR:
                    raise FsError(errno.ENOTDIR, "target is not a directory")
                if state.has_live_children(dst_node.id):
                    raise FsError(errno.ENOTEMPTY, "target directory not empty")
            elif dst_node.kind == ops.KIND_DIR:
                raise FsError(errno.EISDIR, "target is a directory")
        self._check_dir_move(src_node, src_parent, dst_parent, ctx)
        op_list: list[ops.Op] = []
        if dst is not None:
            op_list.append(ops.Unlink(dst.id))
        op_list.append(ops.Rename(src.id, dst_parent.id, name_new))
        self.commit(op_list)
        if dst_node is not None:
            self.drop_if_orphan(dst_node.id)

    def _check_dir_move(self, node: tree.Node, old_parent: tree.Node, new_parent: tree.Node, ctx: Ctx) -> None:
        if node.kind != ops.KIND_DIR:
            return
        if self._inside(new_parent.id, node.id):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if old_parent.id != new_parent.id:
            self.check_access(ctx, node, perms.W)  # its '..' entry changes

    # ------------------------------------------------------------------------------------------ listing
    def _listing(self, inode: int, ctx: Ctx) -> list[tuple[bytes, int]]:
        """(name, inode) of every entry of a directory the caller may read."""
        if self.virtual.is_special(inode):
            attr = self.getattr(inode)
            if not stat.S_ISDIR(attr.mode):
                raise FsError(errno.ENOTDIR, "not a directory")
            perms.check(ctx, attr.mode, attr.uid, attr.gid, perms.R)
            self.flush_batch()  # history shows committed changes: the open batch becomes one now
            with self.translated("history"):
                return self.virtual.listing(inode)
        view, node = self._dir_view(inode)
        self.check_access(ctx, node, perms.R)
        children = view.state.children(node.id)
        if view is self.live:
            self.preload_inodes([e.node for e in children.values()])
        return [(name, view.inode_of(e.node)) for name, e in children.items()]

    def _listing_with_dots(self, inode: int, ctx: Ctx) -> list[tuple[bytes, int]]:
        """'.' and '..' first (``ls -f``, ``find`` and readdir-based tools expect both, with their inode numbers),
        then the entries."""
        entries = self._listing(inode, ctx)
        if self.virtual.is_special(inode):
            parent = self.virtual.parent_of(inode)
        else:
            view, node = self._dir_view(inode)
            parent = self._parent_inode(view, node)
        return [(b".", inode), (b"..", parent), *entries]

    @locked
    def opendir(self, inode: int, ctx: Ctx) -> int:
        entries = self._listing_with_dots(inode, ctx)
        fh = self.new_fh()
        self._dirs[fh] = DirHandle(inode, entries, ctx)
        return fh

    @locked
    def readdir(self, fh: int, start_id: int) -> list[tuple[bytes, Attr, int]]:
        """Entries from ``start_id`` on (at most READDIR_BATCH), '.' and '..' first. The listing is a snapshot
        taken at opendir and again at every read from the start (rewinddir)."""
        handle = self._dirs.get(fh)
        if handle is None:
            raise FsError(errno.EBADF, "unknown directory handle")
        start = max(start_id, 0)
        if start == 0:
            try:
                handle.entries = self._listing_with_dots(handle.inode, handle.ctx)
            except FsError:
                pass  # removed or no longer readable since opendir: keep what was listed then
        out: list[tuple[bytes, Attr, int]] = []
        for index in range(start, min(len(handle.entries), start + READDIR_BATCH)):
            name, inode = handle.entries[index]
            try:
                attr = self.getattr(inode)
            except FsError:
                continue  # removed since the listing was taken
            out.append((name, attr, index + 1))
        return out

    @locked
    def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

