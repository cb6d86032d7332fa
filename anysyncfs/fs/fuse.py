"""The pyfuse3 adapter: kernel requests -> :class:`~anysyncfs.fs.vfs.Vfs` calls; every error becomes an errno through
the one table of :mod:`.errnos`.

Nothing here knows POSIX semantics; the Vfs does. This module only converts types (``EntryAttributes``,
``SetattrFields``, ``RequestContext``, ``FileInfo``), keeps the trio thread free, and turns every exception into a
``FUSEError`` (an exception of any other type would end ``pyfuse3.main`` and take the mount down).

Threading: pyfuse3 runs every handler on the one trio thread. The Vfs does SQLite, hashing, encryption and fsync,
so each call runs in a worker thread (``trio.to_thread.run_sync``) under ONE adapter lock: Vfs calls never overlap.
Calls that are normally cheap (``lookup``, ``getattr``, ``readdir``, xattrs, writes into the staging file) run
inline while the lock is free and their measured recent mean stays under a budget: a thread hop costs more than
the call itself. When the lock is busy, or the call got slow, they queue in a thread like the others.

Permissions: the mount uses ``default_permissions`` (see :mod:`anysyncfs.fs.mount`), so the kernel checks access
with the caller's complete credentials (supplementary groups included) before a request reaches us. One thing the
kernel knows and pyfuse3 hides: ``utimensat(UTIME_NOW)`` arrives as an explicit time. The kernel lets a non-owner
set explicit times only with CAP_FOWNER, so a time update from a non-owner, non-root caller is a "touch" and is
passed on as ``atime_now``/``mtime_now`` (the Vfs then checks write permission instead of ownership). Likewise a
mode change from a non-owner can only be the kernel clearing setuid/setgid after that caller's write or truncate.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3
import trio

from ..errors import BlobMissing, FsError, IntegrityError, RangesMissing, Rejected
from . import readahead
from .errnos import errno_of
from .attrs import VIRTUAL_BASE
from .vfs import Attr, Ctx, SetAttrRequest, Vfs

log = logging.getLogger(__name__)

T = TypeVar("T")
Fetcher = Callable[[bytes], Awaitable[None]]  # fetch one blob (raises when it can't within its timeout)
# Fetch the 16 KiB groups holding byte ranges of one blob (a read of a chunk this device lacks; raises likewise).
RangeFetcher = Callable[[bytes, Sequence[tuple[int, int]]], Awaitable[None]]
MAX_FETCHES_PER_CALL = 64  # distinct blobs one request may wait for (a read spans a few chunks + a manifest)

# Seconds the kernel may cache a name -> inode and a node's attributes. Every change that does not pass through the
# kernel (received from other devices, committed by other processes of this device, a refold) is invalidated
# precisely when it lands (Vfs.take_landed: invalidate_entry for each name gone or replaced, invalidate_inode for
# each changed node), so the timeout only bounds what a missed invalidation could cost; local changes are the
# kernel's own. The mount option cache_timeout sets it.
CACHE_TIMEOUT = 10.0
# The hidden .anysync folder (conflict list, history folders) changes with every landed change but is never
# invalidated: its names and attributes keep the short timeout of before.
VIRTUAL_TIMEOUT = 1.0
# A hop to a worker thread costs ~0.1-0.3 ms (measured: trio.to_thread.run_sync of a no-op). Calls that usually
# take well under that (lookup, getattr, readdir, xattrs, writes into the staging file, and with group commit every
# namespace change, setattr, create, flush and release: they only add ops to the open batch) run inline while the
# lock is free and their recent mean stays below this budget; fsync always goes to a thread, and so does the
# batch's commit. Reads too are tried inline: a read of a local uncompressed chunk preads and decrypts only the
# 64 KiB segments it touches (~60 us for a cold 4 KiB read), less than the hop; a run of expensive reads (whole
# compressed chunks) lifts their mean above the budget and sends them to threads; a read that needs a blob from
# the network raises BlobMissing at once and waits for the fetch in ``call``, off the Vfs lock, as before.
INLINE_BUDGET_S = 0.0005
EWMA_WEIGHT = 0.1
BLKSIZE = 128 * 1024  # st_blksize: the preferred I/O size (tools like cp size their buffers by it)


def fuse_errno(exc: BaseException, *, read_only: bool = False) -> int | None:
    """The errno a handler answers (:func:`.errnos.errno_of`, the one table); ``None``: unexpected, log it."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    return errno_of(exc, read_only=read_only)


def ctx_of(rc: pyfuse3.RequestContext) -> Ctx:
    return Ctx(uid=rc.uid, gid=rc.gid, pid=rc.pid, umask=rc.umask)


def entry_of(attr: Attr, timeout: float = CACHE_TIMEOUT) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.inode
    e.generation = attr.generation
    if attr.inode >= VIRTUAL_BASE:
        timeout = min(timeout, VIRTUAL_TIMEOUT)
    e.entry_timeout = timeout
    e.attr_timeout = timeout
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_rdev = attr.rdev
    e.st_size = attr.size
    e.st_blksize = BLKSIZE
    e.st_blocks = attr.blocks
    e.st_atime_ns = attr.atime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    return e


def setattr_request(attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, *, touch: bool) -> SetAttrRequest:
    """Only the fields the kernel asked to change; ``touch`` turns time updates into "now" (see module doc)."""
    return SetAttrRequest(
        mode=stat.S_IMODE(attr.st_mode) if fields.update_mode else None,
        uid=attr.st_uid if fields.update_uid else None,
        gid=attr.st_gid if fields.update_gid else None,
        size=attr.st_size if fields.update_size else None,
        atime_ns=attr.st_atime_ns if fields.update_atime else None,
        mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        atime_now=touch and fields.update_atime,
        mtime_now=touch and fields.update_mtime,
    )


class Timing:
    """Per-handler call counts and time spent in the Vfs (logged at unmount with --debug), and the recent mean
    that decides which calls may run inline."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}  # what -> [count, total seconds, max seconds, recent mean]
        self.inline = 0
        self.threaded = 0

    def add(self, what: str, seconds: float) -> None:
        c = self.calls.get(what)
        if c is None:
            self.calls[what] = [1, seconds, seconds, seconds]
        else:
            c[0] += 1
            c[1] += seconds
            if seconds > c[2]:
                c[2] = seconds
            c[3] += (seconds - c[3]) * EWMA_WEIGHT

    def cheap(self, what: str) -> bool:
        """Recently cheaper than a hop to a worker thread (unknown ops are tried inline once)."""
        c = self.calls.get(what)
        return c is None or c[3] < INLINE_BUDGET_S

    def report(self) -> str:
        rows = sorted(self.calls.items(), key=lambda kv: -kv[1][1])
        parts = [f"{w}: n={int(c[0])} mean={c[1] / c[0] * 1e6:.0f}us max={c[2] * 1e3:.1f}ms" for w, c in rows]
        return f"inline={self.inline} threaded={self.threaded}; " + "; ".join(parts)


class Operations(pyfuse3.Operations):
    """Every handler delegates to the Vfs; none lets an exception other than ``FUSEError`` escape."""

    supports_dot_lookup = True
    enable_writeback_cache = False  # the Vfs sees every write (O_APPEND, setuid clearing, staging) as it happens
    enable_acl = False

    def __init__(self, vfs: Vfs, *, read_only: bool = False, cache_timeout: float = CACHE_TIMEOUT) -> None:
        super().__init__()
        self.vfs = vfs
        self.cache_timeout = cache_timeout
        self.read_only = read_only
        self.lock = threading.Lock()  # every Vfs call holds it, inline or in a worker thread
        self._logged: set[tuple[str, str]] = set()
        self.timing = Timing()
        self.read_ahead_device: str | None = None  # MAJ:MIN of the mount, to widen its read-ahead on the first read
        self.fetcher: Fetcher | None = None  # set by the mount when a sync engine runs: fetches a missing blob
        self.range_fetcher: RangeFetcher | None = None  # likewise: fetches byte ranges of one (70.12)

    # ------------------------------------------------------------------------------------------ plumbing
    def _timed(self, what: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timing.add(what, time.perf_counter() - t0)

    def _locked(self, what: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.lock:
            return self._timed(what, fn, args)

    async def call(self, what: str, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """Run one Vfs call off the trio thread (or inline when cheap and uncontended); errno-translate errors.

        A call that needs a blob this device lacks (BlobMissing) waits for the fetcher — with the lock released,
        so other requests go on — and is retried; only that request waits. A read of an uncompressed chunk names
        the byte ranges it needs (RangesMissing): only the groups holding them are fetched (protocol.md 70.12)."""
        fetched: set[object] = set()  # blob IDs fetched whole, (blob ID, ranges) fetched by ranges
        while True:
            try:
                return await self._call_once(what, fn, args, inline)
            except BlobMissing as exc:
                ranges = exc.ranges if isinstance(exc, RangesMissing) and self.range_fetcher is not None else None
                key: object = exc.blob_id if ranges is None else (exc.blob_id, ranges)
                if self.fetcher is None or key in fetched or len(fetched) >= MAX_FETCHES_PER_CALL:
                    log.warning("%s: %s (EIO)", what, exc)
                    raise pyfuse3.FUSEError(errno.EIO) from None
                fetched.add(key)
                try:
                    if ranges is not None and self.range_fetcher is not None:
                        await self.range_fetcher(exc.blob_id, ranges)
                    else:
                        await self.fetcher(exc.blob_id)
                except Exception as e:  # noqa: BLE001 - a failed fetch is this request's EIO, nothing more
                    log.warning("%s: %s (EIO)", what, e)
                    raise pyfuse3.FUSEError(errno.EIO) from None
            except Exception as exc:  # noqa: BLE001 - the one place exceptions become errno values
                raise pyfuse3.FUSEError(self.errno_for(what, exc)) from None

    async def _call_once(self, what: str, fn: Callable[..., T], args: tuple[Any, ...], inline: bool) -> T:
        if inline and self.timing.cheap(what) and self.lock.acquire(blocking=False):  # never wait on trio
            try:
                self.timing.inline += 1
                return self._timed(what, fn, args)
            finally:
                self.lock.release()
        self.timing.threaded += 1
        return await trio.to_thread.run_sync(self._locked, what, fn, args)

    def errno_for(self, what: str, exc: Exception) -> int:
        code = fuse_errno(exc, read_only=self.read_only or self.vfs.read_only)
        if code is not None:
            if isinstance(exc, (IntegrityError, Rejected)) and not isinstance(exc, FsError):
                log.error("%s: %s: %s (EIO)", what, type(exc).__name__, exc)
            return code
        key = (what, type(exc).__name__)
        if key in self._logged:  # the traceback once per handler and type; later ones as one line
            log.error("%s failed: %s: %s (EIO)", what, type(exc).__name__, exc)
        else:
            self._logged.add(key)
            log.error("%s failed (EIO)", what, exc_info=exc)
        return errno.EIO

    async def run_blocking(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """For the mount loop: a Vfs call (commit_all, close...) under the lock in a worker thread, errors raised."""
        return await trio.to_thread.run_sync(self._locked, what, fn, args)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        return entry_of(attr, self.cache_timeout)

    async def invalidate_changed(self) -> int:
        """Drop the kernel's caches of exactly what changes from elsewhere altered (:meth:`Vfs.take_landed`):
        the names gone or replaced, then the changed inodes. Returns how many invalidations were sent.

        Called by the mount's tasks (never from a request handler), and the notifications go out from a worker
        thread without the adapter lock: invalidate_entry blocks while a related request (a lookup in that
        directory, a rename...) is in flight, and that request needs the trio thread and the lock to finish —
        from a handler, or holding the lock, that would deadlock (pyfuse3's documentation of invalidate_entry)."""
        try:
            inodes, names = await self.call("take_landed", self.vfs.take_landed, inline=True)
        except pyfuse3.FUSEError:
            return 0
        if inodes or names:
            await trio.to_thread.run_sync(_invalidate, inodes, names)
        return len(inodes) + len(names)

    async def pick_up_commits(self) -> bool:
        """Other processes' commits on this device (``anysyncfs put``, ``sync``...): loaded, then invalidated."""
        try:
            # The check is one indexed read (inline); loading runs in a thread (it may commit the open batch first).
            if not await self.call("commits_elsewhere", self.vfs.commits_elsewhere, inline=True):
                return False
            picked = bool(await self.call("pick_up_commits", self.vfs.pick_up_commits))
        except pyfuse3.FUSEError:
            return False  # logged by call (an EIO); tried again at the next tick
        if picked:
            await self.invalidate_changed()
        return picked

    # ------------------------------------------------------------------------------------------ names and attrs
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.call("lookup", self.vfs.lookup, parent_inode, name, ctx_of(ctx), inline=True))

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        try:  # forget must never raise, not even FUSEError
            await self.call("forget", self.vfs.forget, [(int(i), int(n)) for i, n in inode_list], inline=True)
        except pyfuse3.FUSEError:
            pass

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self.call("getattr", self.vfs.getattr, inode, ctx_of(ctx), inline=True))

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        c = ctx_of(ctx)
        current = None
        if c.uid != 0 and (fields.update_atime or fields.update_mtime or fields.update_mode):
            current = await self.call("getattr", self.vfs.getattr, inode, c, inline=True)
        non_owner = current is not None and c.uid != current.uid
        req = setattr_request(attr, fields, touch=non_owner)
        if non_owner and req.mode is not None and current is not None:
            # The kernel refuses chmod by a non-owner itself (default_permissions); a mode change from one is its
            # own "kill suid/sgid" after a write or truncate (ATTR_KILL_*, sent with the writer's credentials).
            # Anyone who may write the file may drop those bits (writing drops them anyway): do exactly that
            # and nothing more, as the file system itself, then the rest of the request as the caller.
            old = stat.S_IMODE(current.mode)
            dropped = old & ~req.mode
            if req.mode | dropped == old and not dropped & ~(stat.S_ISUID | stat.S_ISGID):
                if dropped:
                    kill = SetAttrRequest(mode=req.mode)
                    await self.call("setattr", self.vfs.setattr, inode, kill, fh, Ctx(0, 0, c.pid, c.umask),
                                    inline=True)
                req = dataclasses.replace(req, mode=None)
        return self._entry(await self.call("setattr", self.vfs.setattr, inode, req, fh, c, inline=True))

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileNameT:
        return cast(pyfuse3.FileNameT, await self.call("readlink", self.vfs.readlink, inode, ctx_of(ctx), inline=True))

    async def access(self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext) -> bool:
        # Only called without default_permissions; the Vfs raises EACCES when access is denied.
        await self.call("access", self.vfs.access, inode, mode, ctx_of(ctx), inline=True)
        return True

    # ------------------------------------------------------------------------------------------ namespace changes
    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.call("mknod", self.vfs.mknod, parent_inode, name, mode, rdev, ctx_of(ctx),
                                        inline=True))

    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.call("mkdir", self.vfs.mkdir, parent_inode, name, mode, ctx_of(ctx), inline=True))

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.call("unlink", self.vfs.unlink, parent_inode, name, ctx_of(ctx), inline=True)

    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext) -> None:
        await self.call("rmdir", self.vfs.rmdir, parent_inode, name, ctx_of(ctx), inline=True)

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.call("symlink", self.vfs.symlink, parent_inode, name, target, ctx_of(ctx),
                                        inline=True))

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        await self.call(
            "rename", self.vfs.rename, parent_inode_old, name_old, parent_inode_new, name_new, int(flags), ctx_of(ctx),
            inline=True,
        )

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        return self._entry(await self.call("link", self.vfs.link, inode, new_parent_inode, new_name, ctx_of(ctx),
                                        inline=True))

    # ------------------------------------------------------------------------------------------ files
    async def open(self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh = await self.call("open", self.vfs.open, inode, int(flags), ctx_of(ctx), inline=True)
        return await self._file_info("open", fh)

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        fh, attr = await self.call("create", self.vfs.create, parent_inode, name, mode, int(flags), ctx_of(ctx),
                                   inline=True)
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=False), self._entry(attr)

    async def _file_info(self, what: str, fh: int) -> pyfuse3.FileInfo:
        # keep_cache=True lets the kernel keep the page cache from an earlier open: only while content is unchanged.
        try:
            keep = bool(await self.call("content_unchanged", self.vfs.content_unchanged, fh, inline=True))
        except pyfuse3.FUSEError:
            keep = False
        return pyfuse3.FileInfo(fh=fh, direct_io=False, keep_cache=keep)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        if self.read_ahead_device is not None:  # FUSE_INIT is answered by now (see readahead.py)
            device, self.read_ahead_device = self.read_ahead_device, None
            readahead.widen(device)
        return await self.call("read", self.vfs.read, fh, off, size, inline=True)

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        written = await self.call("write", self.vfs.write, fh, off, buf, inline=True)
        inode = self.vfs.direct_io_inode(fh)
        if inode is not None:
            # An O_DIRECT write: the kernel dropped the cached pages of the range before sending it, but after an
            # ASYNCHRONOUS one (io_submit, io_uring) it does not look again, so a buffered read that ran while the
            # write was queued leaves the old bytes cached. Drop them now, before the write is answered (from a
            # worker thread: the kernel may wait on a page whose read this trio thread must answer).
            await trio.to_thread.run_sync(_invalidate, [inode])
        return written

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        await self.call("flush", self.vfs.flush, fh, inline=self.vfs.commit_is_small(fh))

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        await self.call("release", self.vfs.release, fh, inline=self.vfs.commit_is_small(fh))

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        await self.call("fsync", self.vfs.fsync, fh, bool(datasync))

    # ------------------------------------------------------------------------------------------ directories
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        return cast(pyfuse3.FileHandleT, await self.call("opendir", self.vfs.opendir, inode, ctx_of(ctx), inline=True))

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = await self.call("readdir", self.vfs.readdir, fh, start_id, inline=True)
        accepted: list[int] = []
        for name, attr, next_id in entries:
            if not pyfuse3.readdir_reply(token, name, self._entry(attr), next_id):
                break
            if name not in (b".", b".."):
                accepted.append(attr.inode)
        if accepted:
            # readdirplus hands the kernel a reference to every entry it accepted, exactly like a lookup, except
            # '.' and '..' (the kernel links neither: fuse_direntplus_link skips them, and never forgets them).
            await self.call("add_lookups", self.vfs.add_lookups, accepted, inline=True)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        await self.call("releasedir", self.vfs.releasedir, fh, inline=True)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        # Commits the open batch (group commit) and makes it durable. (syncfs(2) never reaches a FUSE file system
        # that is not virtiofs: pyfuse3 has no handler for it, and the kernel sends nothing. fsync a file or a
        # directory of the mount instead.)
        await self.call("fsyncdir", self.vfs.fsyncdir, fh, bool(datasync))

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = await self.call("statfs", self.vfs.statfs, ctx_of(ctx), inline=True)
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.block_size
        out.f_frsize = s.block_size
        out.f_blocks = s.blocks
        out.f_bfree = s.blocks_free
        out.f_bavail = s.blocks_avail
        out.f_files = s.files
        out.f_ffree = s.files_free
        out.f_favail = s.files_free
        out.f_namemax = s.name_max
        return out

    # ------------------------------------------------------------------------------------------ xattrs
    async def setxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        # pyfuse3 has already checked XATTR_CREATE/XATTR_REPLACE through getxattr, so flags are 0 here.
        await self.call("setxattr", self.vfs.setxattr, inode, bytes(name), bytes(value), 0, ctx_of(ctx))

    async def getxattr(self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext) -> bytes:
        if not bytes(name).startswith(b"user."):
            # Only user.* exist (the Vfs answers ENODATA for every other name). The kernel asks for
            # security.capability before EVERY write (file_remove_privs): answer without the Vfs, its lock and
            # its timing, which made that request cost as much as the 4-byte write it precedes.
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await self.call("getxattr", self.vfs.getxattr, inode, bytes(name), ctx_of(ctx), inline=True)

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        names = await self.call("listxattr", self.vfs.listxattr, inode, ctx_of(ctx), inline=True)
        return names

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        await self.call("removexattr", self.vfs.removexattr, inode, bytes(name), ctx_of(ctx))


def _invalidate(inodes: list[int], names: Sequence[tuple[int, bytes]] = ()) -> None:
    """Send the invalidations (blocking: run in a worker thread). Names first: a lookup then meets the new tree,
    and invalidate_entry also drops the directory's attributes."""
    for parent, name in names:
        try:
            pyfuse3.invalidate_entry(cast(pyfuse3.InodeT, parent), cast(pyfuse3.FileNameT, name))
        except OSError as e:
            if e.errno != errno.ENOENT:  # the kernel never had that name or directory: nothing to drop
                log.warning("invalidating entry %r in inode %d: %s", name, parent, os.strerror(e.errno or 0))
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(cast(pyfuse3.InodeT, inode))
        except OSError as e:
            if e.errno != errno.ENOENT:  # the kernel had already forgotten it: nothing to drop
                log.warning("invalidating inode %d: %s", inode, os.strerror(e.errno or 0))

