"""The file-system layer: :mod:`.vfs` (POSIX semantics over a replica, no FUSE import) and :mod:`.fuse` (the thin
pyfuse3 adapter); :mod:`.errnos` holds the one error -> errno table. Importing this package does not import pyfuse3."""

from .vfs import ROOT_INODE, Attr, Ctx, SetAttrRequest, StatFs, Vfs

__all__ = ["ROOT_INODE", "Attr", "Ctx", "SetAttrRequest", "StatFs", "Vfs"]
