"""File operations of the VFS: open/create, read/write through the staging overlay, flush/fsync/release, setattr.

Writes go to the node's staged overlay (:mod:`.staging`) and become ONE signed change on flush, fsync and
release, and whenever the adapter calls ``commit_all`` (every few seconds for long writers). A handle keeps
working after its file is unlinked or replaced by a rename: the node stays in the tree, only its names go; writes
to a node that has no name any more are never committed, and are dropped when its last handle closes.
"""

from __future__ import annotations

import errno
import os
import stat

from ..core import ops, tree
from ..errors import FsError
from . import perms
from .attrs import MAX_FILE_SIZE, Attr, Ctx, SetAttrRequest
from .vfs_base import FileHandle, locked, now_ns

SMALL_COMMIT = 1 << 20  # bytes: closing a file with at most this much staged may run on the adapter's event loop
# An append at least this large starts sealing the file's bytes as they come (.stream) instead of staging them:
# bulk writers (dd, cp, downloads: 64 KiB to 1 MiB per FUSE write), not tar's 10 KiB records of small files.
STREAM_MIN_WRITE = 32 << 10
from .vfs_names import NamesMixin
from .virtual import CONFLICTS_INO


class FilesMixin(NamesMixin):
    # ------------------------------------------------------------------------------------------ opening
    def _open_handle(self, inode: int, flags: int, ctx: Ctx, *, check: bool) -> int:
        write_wanted = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if self.virtual.is_special(inode):
            attr = self.getattr(inode)
            if stat.S_ISDIR(attr.mode) and write_wanted:
                raise FsError(errno.EISDIR, "is a directory")
            if write_wanted:
                raise FsError(errno.EROFS, "the .anysync folder is read-only")
            perms.check(ctx, attr.mode, attr.uid, attr.gid, perms.open_mask(flags))
            data = self.virtual.conflicts_text() if inode == CONFLICTS_INO else b""
            fh = self.new_fh()
            self._files[fh] = FileHandle(inode, None, b"", flags, ctx, False, data)
            return fh
        view, node_id = self.target(inode)
        node = self.node(view, node_id)
        if node.kind == ops.KIND_DIR and write_wanted:
            raise FsError(errno.EISDIR, "is a directory")
        if node.kind == ops.KIND_SYMLINK:
            raise FsError(errno.ELOOP, "is a symbolic link")
        if write_wanted:
            self.check_writable(view)
        if check:
            self.check_access(ctx, node, perms.open_mask(flags))
        fh = self.new_fh()
        handle = FileHandle(inode, view, node_id, flags, ctx)
        self._files[fh] = handle
        if view is self.live:
            self._opens[node_id] = self._opens.get(node_id, 0) + 1
            if flags & os.O_TRUNC and handle.writable and node.kind == ops.KIND_FILE:
                try:
                    self._truncate(node, 0, ctx)
                except FsError:
                    self.release(fh)
                    raise
                self._rewriting.add(node_id)
        handle.keep_cache = self.seen_at_open(inode, node, immutable=view is not self.live)
        return fh

    @locked
    def open(self, inode: int, flags: int, ctx: Ctx) -> int:
        return self._open_handle(inode, flags, ctx, check=True)

    @locked
    def create(self, parent: int, name: bytes, mode: int, flags: int, ctx: Ctx) -> tuple[int, Attr]:
        self.check_name(name)
        if not self.virtual.owns(parent):
            view, parent_id = self.target(parent)
            parent_node = view.state.nodes[parent_id]
            if parent_node.kind == ops.KIND_DIR and view is self.live:
                entry = self.replica.tree.lookup(parent_id, name)
                if entry is not None or self._reserved(parent_node, name):
                    if flags & os.O_EXCL:
                        raise FsError(errno.EEXIST, "file exists")
                    attr = self.lookup(parent, name, ctx)  # counts the reference the kernel takes
                    if stat.S_ISDIR(attr.mode):
                        raise FsError(errno.EISDIR, "is a directory")
                    fh = self._open_handle(attr.inode, flags & ~os.O_CREAT, ctx, check=True)
                    return fh, self.getattr(attr.inode)
        _, attr = self.create_node(parent, name, ops.KIND_FILE, mode, ctx)
        # The creator may use the new file whatever mode it was given (open(O_CREAT, 0444) for writing works).
        fh = self._open_handle(attr.inode, flags & ~(os.O_CREAT | os.O_TRUNC), ctx, check=False)
        return fh, attr

    # ------------------------------------------------------------------------------------------ data
    @locked
    def read(self, fh: int, offset: int, size: int) -> bytes:
        handle = self.file_handle(fh)
        if handle.view is None:
            return handle.data[offset : offset + size]
        if not handle.readable:
            raise FsError(errno.EBADF, "not open for reading")
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL, "negative offset or size")
        node = handle.view.state.nodes[handle.node]
        if node.kind == ops.KIND_DIR:
            raise FsError(errno.EISDIR, "is a directory")
        staged = self._staged.get(handle.node) if handle.view is self.live else None
        if staged is not None:
            return staged.read(offset, size, self.reads.read)
        return self.reads.read(node.content, offset, size)

    @locked
    def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.file_handle(fh)
        if handle.view is None or handle.view is not self.live or not handle.writable:
            raise FsError(errno.EBADF, "not open for writing")
        self.check_writable()
        if offset < 0:
            raise FsError(errno.EINVAL, "negative offset")
        node = self.node(self.live, handle.node)
        staged = self.staged_for(node)
        if handle.flags & os.O_APPEND:
            offset = staged.size
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG, "file too large")
        if not data:
            return 0
        self._kill_priv(node, handle.ctx)
        if (staged.stream is None and len(data) >= STREAM_MIN_WRITE and offset == staged.size
                and not staged.dirty):  # fmt: skip
            self.start_stream(staged)
        if staged.stream is not None:
            with self.translated("write"):  # a chunk sealed on the way is stored: disk full is ENOSPC here
                staged.write(offset, data, now_ns())
            return len(data)
        staged.write(offset, data, now_ns())
        return len(data)

    def _kill_priv(self, node: tree.Node, ctx: Ctx) -> None:
        """A write or truncate by a caller without CAP_FSETID (not root) clears setuid and setgid. The file is
        open, so the change is committed with its data."""
        if ctx.uid == 0:
            return
        cleared = perms.kill_priv_mode(node.mode)
        if cleared != node.mode:
            self.staged_for(node).set_attrs({"mode": cleared}, now_ns())

    def _truncate(self, node: tree.Node, size: int, ctx: Ctx) -> None:
        if size == self.current_size(node):
            return  # nothing changes: no staging, no change
        self._kill_priv(node, ctx)
        self.staged_for(node).truncate(size, now_ns())

    def commit_is_small(self, fh: int) -> bool:
        """Whether closing ``fh`` commits little (nothing staged, or a small file): the adapter then runs flush and
        release inline. Read without the lock: a hint, never a decision about the data."""
        handle = self._files.get(fh)
        staged = self._staged.get(handle.node) if handle is not None else None
        return staged is None or (staged.size <= SMALL_COMMIT and staged.dirty.total() <= SMALL_COMMIT)

    @locked
    def flush(self, fh: int) -> None:
        handle = self.file_handle(fh)
        if handle.view is self.live:
            self.commit_staged(handle.node)

    @locked
    def fsync(self, fh: int, datasync: bool) -> None:
        """Returns when the file's change and its blobs are durable: the file's staged writes join the open batch,
        which is committed (blob files fsynced first), then the store's log is fsynced."""
        handle = self.file_handle(fh)
        if handle.view is self.live:
            self.commit_staged(handle.node)
            self.flush_batch(exclude=(handle.node,))
            self.sync()

    @locked
    def release(self, fh: int) -> None:
        handle = self._files.pop(fh, None)
        if handle is None or handle.view is not self.live:
            return
        node_id = handle.node
        try:
            self.commit_staged(node_id)
        finally:
            left = self._opens.get(node_id, 0) - 1
            if left > 0:
                self._opens[node_id] = left
            else:
                self._opens.pop(node_id, None)
            if node_id in self._rewriting and not any(
                h.node == node_id and h.writable and h.view is self.live for h in self._files.values()
            ):
                self._rewriting.discard(node_id)  # the last writer closed (readers may stay): commit it now
            self.drop_if_orphan(node_id)

    # ------------------------------------------------------------------------------------------ attributes
    @locked
    def setattr(self, inode: int, req: SetAttrRequest, fh: int | None, ctx: Ctx) -> Attr:
        if self.virtual.owns(inode):
            raise FsError(errno.EROFS, "the .anysync folder is read-only")
        self.check_writable()
        view, node_id = self.target(inode)
        node = self.node(view, node_id)
        uid_o, gid_o = self.owner_of(node)
        owner = ctx.uid == 0 or ctx.uid == uid_o
        t = now_ns()

        mode = None
        if req.mode is not None:
            if not owner:
                raise FsError(errno.EPERM, "only the owner may change the mode")
            mode = req.mode & 0o7777
            group = req.gid if req.gid is not None else gid_o
            if ctx.uid != 0 and mode & stat.S_ISGID and not perms.in_group(ctx, group):
                mode &= ~stat.S_ISGID
        if req.uid is not None or req.gid is not None:
            if ctx.uid != 0:
                if req.uid is not None and (req.uid != uid_o or ctx.uid != uid_o):
                    raise FsError(errno.EPERM, "only root may change the owner")
                if req.gid is not None and (ctx.uid != uid_o or (req.gid != gid_o and not perms.in_group(ctx, req.gid))):
                    raise FsError(errno.EPERM, "not allowed to change the group")
            if node.kind != ops.KIND_DIR:
                mode = perms.kill_priv_mode(mode if mode is not None else node.mode)
        if req.size is not None:
            if node.kind == ops.KIND_DIR:
                raise FsError(errno.EISDIR, "is a directory")
            if node.kind != ops.KIND_FILE:
                raise FsError(errno.EINVAL, "not a regular file")
            if req.size < 0:
                raise FsError(errno.EINVAL, "negative size")
            if req.size > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG, "file too large")
            if fh is None:
                self.check_access(ctx, node, perms.W)
        atime = t if req.atime_now else req.atime_ns
        mtime = t if req.mtime_now else req.mtime_ns
        explicit = (req.atime_ns is not None and not req.atime_now) or (req.mtime_ns is not None and not req.mtime_now)
        if explicit and not owner:
            raise FsError(errno.EPERM, "only the owner may set explicit times")
        if (atime is not None or mtime is not None) and not owner:
            self.check_access(ctx, node, perms.W)

        fields = {k: v for k, v in (("mode", mode), ("uid", req.uid), ("gid", req.gid), ("atime_ns", atime),
                                    ("mtime_ns", mtime)) if v is not None}  # fmt: skip
        if req.size is not None and req.size != self.current_size(node):
            if ctx.uid != 0:
                base = mode if mode is not None else node.mode
                if perms.kill_priv_mode(base) != base:
                    fields["mode"] = perms.kill_priv_mode(base)
            self.staged_for(node).truncate(req.size, t)
        staged = self._staged.get(node_id)
        if self._opens.get(node_id, 0) > 0:
            # The file is open (tar, cp and editors set times, owner and mode through the descriptor before
            # closing it): keep the attributes with the staged data and commit them together at close.
            if fields:
                self.staged_for(node).set_attrs(fields, t)
            if req.size is not None:
                self._rewriting.add(node_id)  # ftruncate then writes: one change when the file is closed
        elif staged is not None:
            if fields:
                staged.set_attrs(fields, t)
            self.commit_staged(node_id)  # a truncate by path: commit now, with the attributes
        elif fields:
            self.commit([ops.SetAttr(node_id, **fields)])  # type: ignore[arg-type]
        return self.node_attr(self.live, node_id)
