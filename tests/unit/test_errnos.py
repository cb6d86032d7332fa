"""The one error -> errno table (anysyncfs/fs/errnos.py): what the FUSE adapter answers for an error that reaches a
handler, and what the Vfs raises for an error of work on a node it has already resolved."""

from __future__ import annotations

import errno

import pytest

from anysyncfs.errors import (BadSignature, BlobMissing, FsError, IsADirectory, NameTooLong, NotADirectory,
                              NotARegularFile, NotFound, PermissionDenied, Rejected, StoreError, TooLarge,
                              UsageError)
from anysyncfs.fs.errnos import errno_of

CASES = [  # (error, errno at a handler, errno of work on a resolved node)
    (FsError(errno.EXDEV), errno.EXDEV, errno.EXDEV),
    (NotFound("no such path"), errno.ENOENT, errno.EIO),  # resolved: a missing piece of the replica is damage
    (BlobMissing(b"\0" * 32), errno.EIO, errno.EIO),
    (BadSignature("forged"), errno.EIO, errno.EIO),
    (Rejected("not allowed by the ACL"), errno.EIO, errno.EIO),
    (TooLarge("too many chunks"), errno.EFBIG, errno.EFBIG),
    (NameTooLong("long"), errno.ENAMETOOLONG, errno.ENAMETOOLONG),
    (NotADirectory("f"), errno.ENOTDIR, errno.ENOTDIR),
    (IsADirectory("d"), errno.EISDIR, errno.EISDIR),
    (NotARegularFile("l"), errno.EINVAL, errno.EINVAL),
    (StoreError("disk full"), errno.ENOSPC, errno.ENOSPC),
    (StoreError("database is locked"), None, errno.EIO),
    (OSError(errno.EDQUOT, "quota"), errno.ENOSPC, errno.ENOSPC),
    (OSError(errno.EBADF, "bad fd"), None, errno.EIO),
    (UsageError("not an fs error"), None, None),
    (ValueError("a bug"), None, None),
]


@pytest.mark.parametrize(("exc", "at_handler", "resolved"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_table(exc: BaseException, at_handler: int | None, resolved: int | None) -> None:
    assert errno_of(exc) == at_handler
    assert errno_of(exc, read_only=True, resolved=True) == resolved


def test_a_refused_write_is_erofs_on_a_read_only_mount_else_eacces() -> None:
    assert errno_of(PermissionDenied("reader")) == errno.EACCES
    assert errno_of(PermissionDenied("reader"), read_only=True) == errno.EROFS
