"""THE error -> errno table of the project.

Core, store and replica raise the domain errors of :mod:`anysyncfs.errors`; the VFS raises :class:`FsError` for
POSIX rules of its own. This table is the one place where a domain error becomes an errno: the FUSE adapter uses it
for whatever reaches a handler, and the VFS uses it (``VfsCore.translated``) around calls into the replica that
work on something already resolved, where a missing piece means damage, not "no such file".
"""

from __future__ import annotations

import errno

from ..errors import (BlobMissing, FsError, IntegrityError, IsADirectory, NameTooLong, NotADirectory,
                      NotARegularFile, NotFound, PermissionDenied, Rejected, StoreError, TooLarge)

# Domain errors that name a POSIX condition, most specific first.
_BY_TYPE: tuple[tuple[type[BaseException], int], ...] = (
    (BlobMissing, errno.EIO),  # content this device lacks and could not fetch: an I/O error, not "no such file"
    (TooLarge, errno.EFBIG),
    (NameTooLong, errno.ENAMETOOLONG),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
    (NotARegularFile, errno.EINVAL),
    (IntegrityError, errno.EIO),
    (Rejected, errno.EIO),
)


def errno_of(exc: BaseException, *, read_only: bool = False, resolved: bool = False) -> int | None:
    """The errno for ``exc``; ``None`` means "unexpected: log it with its traceback" (the caller answers EIO).

    ``read_only``: the mount or the identity cannot write, so a refused write is EROFS (else EACCES).
    ``resolved``: the error came from work on a node already resolved (commit, history, pin), where NotFound
    means a missing piece of the replica (EIO) and a store or OS failure is an I/O error too."""
    if isinstance(exc, FsError):
        return exc.errno
    for kind, code in _BY_TYPE:
        if isinstance(exc, kind):
            return code
    if isinstance(exc, NotFound):
        return errno.EIO if resolved else errno.ENOENT
    if isinstance(exc, PermissionDenied):
        return errno.EROFS if read_only else errno.EACCES
    if isinstance(exc, StoreError):
        if "disk full" in str(exc).lower():
            return errno.ENOSPC
        return errno.EIO if resolved else None
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return errno.ENOSPC  # a staging file or blob write hit a full disk: the writer must see it
        return errno.EIO if resolved else None
    return None
