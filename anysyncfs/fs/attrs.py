"""The value types the VFS speaks (caller context, attributes, set-attribute requests, statfs) and its constants.

These are plain dataclasses with no FUSE import, so the VFS can be driven by direct calls in tests and the
pyfuse3 adapter only copies fields. Times are nanoseconds since the Unix epoch; ``mode`` includes the S_IF*
type bits.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from ..core import ops

ROOT_INODE = 1
# Inodes of real nodes are the store's stable row ids shifted by this much, so they never collide with ROOT_INODE
# (the root node has a row of its own once it is persisted; that row's shifted number is simply never handed out).
NODE_INODE_SHIFT = 1
# Virtual inodes (the hidden .anysync tree) live far above any row id the store will ever hand out.
VIRTUAL_BASE = 1 << 62

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2

NAME_MAX = ops.NAME_MAX
MAX_FILE_SIZE = 2**63 - 1  # Content.size is an int64 on the wire
DIR_SIZE = 4096  # what ext4 shows for a small directory; some tools expect a non-zero size
BLOCK = 512  # st_blocks unit

KIND_TO_IFMT = {
    ops.KIND_FILE: stat.S_IFREG,
    ops.KIND_DIR: stat.S_IFDIR,
    ops.KIND_SYMLINK: stat.S_IFLNK,
    ops.KIND_FIFO: stat.S_IFIFO,
    ops.KIND_SOCKET: stat.S_IFSOCK,
    ops.KIND_CHAR: stat.S_IFCHR,
    ops.KIND_BLOCK: stat.S_IFBLK,
}
IFMT_TO_KIND = {ifmt: kind for kind, ifmt in KIND_TO_IFMT.items()}


@dataclass(frozen=True, slots=True)
class Ctx:
    """Who asks: the caller's uid, gid, pid (to find supplementary groups) and umask."""

    uid: int
    gid: int
    pid: int = 0
    umask: int = 0o022


@dataclass(slots=True)
class Attr:
    """What stat(2) shows for one inode."""

    inode: int
    mode: int  # including the S_IF* type bits
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blocks: int  # 512-byte units actually stored (0 for holes)
    generation: int = 0
    rdev: int = 0  # device number of a character or block device node


@dataclass(frozen=True, slots=True)
class SetAttrRequest:
    """The fields setattr should change; ``None`` leaves a field alone. ``*_now`` means "the current time"
    (UTIME_NOW), which needs only write permission instead of ownership."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    atime_now: bool = False
    mtime_now: bool = False


@dataclass(frozen=True, slots=True)
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int = NAME_MAX


def blocks_for(nbytes: int) -> int:
    """512-byte blocks needed for ``nbytes`` bytes."""
    return -(-nbytes // BLOCK)


def rdev_bytes(rdev: int) -> bytes:
    """How a device number is carried in a node's ``target`` (see :data:`..core.ops.RDEV_LEN`)."""
    return rdev.to_bytes(ops.RDEV_LEN, "big")


def rdev_of(kind: int, target: bytes) -> int:
    """The device number of a device node (0 for every other kind)."""
    return int.from_bytes(target, "big") if kind in ops.DEVICE_KINDS else 0
