"""The FUSE-free virtual file system: POSIX semantics over one space's replica, driven by direct calls.

:class:`Vfs` is what the pyfuse3 adapter (:mod:`.fuse`) calls and what tests drive directly. It never imports
pyfuse3. Every method raises :class:`~anysyncfs.errors.FsError` with a POSIX errno for expected failures.

The work is split by topic, each in its own module, joined here by inheritance:

* :mod:`.vfs_base` — inode numbers, views, attributes, commits, staging bookkeeping, statfs, commit_all/close;
* :mod:`.vfs_names` — lookup, mknod/mkdir/symlink/link, unlink/rmdir/rename, readdir, readlink, access;
* :mod:`.vfs_files` — open/create, read/write (staged), flush/fsync/release, setattr (chmod/chown/utimens/truncate);
* :mod:`.vfs_xattr` — user.* extended attributes and the read-only user.anysync.* sync state;
* :mod:`.staging`, :mod:`.commit`, :mod:`.reading` — the write overlay, re-chunking on commit, verified reads;
* :mod:`.virtual` — the hidden ``.anysync`` folder (history as folders, the conflicts list);
* :mod:`.perms` — permission rules; :mod:`.attrs` — the value types below.

Semantics in short: a local disk as far as POSIX can tell. Namespace changes are committed at once, one change
each (a rename over an existing name is an Unlink and a Rename in ONE change). File data is staged per node and
committed as one change on flush, fsync, release and ``commit_all``. A read-only Vfs (``read_only=True``, or a
reader in the space) answers EROFS to every write.
"""

from __future__ import annotations

from pathlib import Path

from ..replica.replica import Replica
from .attrs import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INODE,
    VIRTUAL_BASE,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    Ctx,
    SetAttrRequest,
    StatFs,
)
from .vfs_xattr import XattrMixin
from .virtual import ANYSYNC_INO, CONFLICTS_INO, HIDDEN_NAME, HISTORY_INO

__all__ = [
    "ANYSYNC_INO",
    "CONFLICTS_INO",
    "HIDDEN_NAME",
    "HISTORY_INO",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "ROOT_INODE",
    "VIRTUAL_BASE",
    "XATTR_CREATE",
    "XATTR_REPLACE",
    "Attr",
    "Ctx",
    "SetAttrRequest",
    "StatFs",
    "Vfs",
]


class Vfs(XattrMixin):
    """POSIX file system semantics over ``replica`` (see the module doc)."""

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
