"""Permission checks as a local disk makes them: owner/group/other bits, root, sticky directories.

The rules follow Linux (generic_permission and friends):

* root (uid 0) may read and write anything; it may execute a file only when some execute bit is set, and may
  always search a directory;
* otherwise the owner class applies when the caller owns the file, else the group class when the file's group
  is the caller's group or one of its supplementary groups, else the other class;
* in a sticky directory (S_ISVTX) only root, the directory's owner or the entry's owner may remove or rename
  an entry (EPERM otherwise).

The caller's supplementary groups are not part of :class:`Ctx`; they are read from ``/proc/<pid>/status`` when
a decision depends on them (and cached for a second, since the same process usually makes many calls).
"""

from __future__ import annotations

import errno
import os
import stat
import time

from ..errors import FsError
from .attrs import Ctx

R, W, X = 4, 2, 1  # os.R_OK, os.W_OK, os.X_OK
_GROUPS_TTL_S = 1.0
_GROUPS_CACHE_MAX = 256
_groups_cache: dict[tuple[int, int, int], tuple[float, frozenset[int]]] = {}


def groups_of(ctx: Ctx) -> frozenset[int]:
    """The caller's primary and supplementary groups (only the primary one when the pid is unknown)."""
    if ctx.pid <= 0:
        return frozenset((ctx.gid,))
    key = (ctx.pid, ctx.uid, ctx.gid)
    now = time.monotonic()
    hit = _groups_cache.get(key)
    if hit is not None and now - hit[0] < _GROUPS_TTL_S:
        return hit[1]
    found = {ctx.gid}
    try:
        with open(f"/proc/{ctx.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    found.update(int(g) for g in line.split()[1:])
                    break
    except (OSError, ValueError):
        pass  # the process is gone or /proc is unavailable: the primary group is all we know
    groups = frozenset(found)
    if len(_groups_cache) >= _GROUPS_CACHE_MAX:
        _groups_cache.clear()
    _groups_cache[key] = (now, groups)
    return groups


def in_group(ctx: Ctx, gid: int) -> bool:
    return gid == ctx.gid or gid in groups_of(ctx)


def allowed(ctx: Ctx, mode: int, uid: int, gid: int, want: int) -> bool:
    """Whether the caller may access an inode of ``mode`` (with type bits) owned by uid:gid for ``want``
    (a mask of R, W, X)."""
    if want == 0:
        return True
    if ctx.uid == 0:
        if want & X and not stat.S_ISDIR(mode) and not mode & 0o111:
            return False
        return True
    if ctx.uid == uid:
        bits = (mode >> 6) & 7
    elif in_group(ctx, gid):
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def check(ctx: Ctx, mode: int, uid: int, gid: int, want: int) -> None:
    """Raise EACCES unless :func:`allowed`."""
    if not allowed(ctx, mode, uid, gid, want):
        raise FsError(errno.EACCES, "permission denied")


def check_sticky(ctx: Ctx, dir_mode: int, dir_uid: int, target_uid: int) -> None:
    """In a sticky directory only root, the directory's owner and the entry's owner may remove or rename it."""
    if dir_mode & stat.S_ISVTX and ctx.uid not in (0, dir_uid, target_uid):
        raise FsError(errno.EPERM, "sticky directory: not the owner")


def is_owner_or_root(ctx: Ctx, uid: int) -> bool:
    return ctx.uid == 0 or ctx.uid == uid


def access_mask(mode: int) -> int:
    """The R/W/X mask of an access(2) mode (F_OK is 0)."""
    return mode & (os.R_OK | os.W_OK | os.X_OK)


# The kernel's own flag on the open it does for execve(2) (and uselib): __FMODE_EXEC, which FUSE passes on in the
# open flags. Such an open is read-only but was checked for EXECUTE permission, not read (mode 111 runs).
FMODE_EXEC = 0o40


def open_mask(flags: int) -> int:
    """The R/W/X mask an open(2) with ``flags`` needs (O_TRUNC needs write permission as well; the kernel's open
    for execve needs execute permission only)."""
    acc = flags & os.O_ACCMODE
    if flags & FMODE_EXEC and acc == os.O_RDONLY and not flags & os.O_TRUNC:
        return X
    want = {os.O_RDONLY: R, os.O_WRONLY: W, os.O_RDWR: R | W}.get(acc, R | W)
    if flags & os.O_TRUNC:
        want |= W
    return want


def kill_priv_mode(mode: int) -> int:
    """The permission bits after a write or truncate by a caller without CAP_FSETID, or a chown: setuid is
    cleared, setgid too when group execute is set (setgid without group execute marks mandatory locking)."""
    new = mode & ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        new &= ~stat.S_ISGID
    return new
