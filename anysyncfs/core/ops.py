"""File-tree operations: the decrypted payload of a change.

A payload is a msgpack array of ops; each op is a msgpack array whose first element is its integer tag (a
msgspec tagged union). Nodes (files, directories, symlinks) and directory entries (names) have separate random
16-byte IDs, so a hard link is a second entry pointing at the same node and a rename moves one entry.
Names are raw bytes as POSIX sees them. Times are nanoseconds since the Unix epoch.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from .encoding import Strict, decode, encode

NodeId = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
Hash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Name = Annotated[bytes, msgspec.Meta(min_length=1, max_length=255)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # msgspec bounds are int64
TimeNs = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

KIND_FILE = 1
KIND_DIR = 2
KIND_SYMLINK = 3
# Special files (mkfifo, mknod, bind): they hold no content; the kernel gives them their behaviour.
KIND_FIFO = 4
KIND_SOCKET = 5
KIND_CHAR = 6  # character device; Create.target holds the device number (see DEVICE_KINDS)
KIND_BLOCK = 7  # block device; likewise
KINDS = (KIND_FILE, KIND_DIR, KIND_SYMLINK, KIND_FIFO, KIND_SOCKET, KIND_CHAR, KIND_BLOCK)
DEVICE_KINDS = (KIND_CHAR, KIND_BLOCK)
RDEV_LEN = 8  # a device node's number (st_rdev) travels in ``target`` as 8 bytes, big-endian

NAME_MAX = 255
SYMLINK_MAX = 4095
XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024
INLINE_MAX = 4096  # files up to this size carry their bytes in the change itself
MAX_OPS = 100_000  # per change


class ChunkRef(Strict):
    """One encrypted chunk: where it is (blob ID), how to open it (chunk key) and its plaintext length."""

    blob: Hash  # BLAKE3 of the blob bytes
    key: Hash  # convergent chunk key (AES-256-GCM key of the blob's segments)
    length: U32  # plaintext length of the chunk


class Extent(Strict):
    """A chunk placed at a file offset. Gaps between extents (and past the last one) read as zeros."""

    offset: U64
    chunk: ChunkRef


class Content(Strict):
    """What a file holds. Exactly one of: ``inline`` bytes, an ``extents`` list, or a ``manifest`` blob that
    holds the msgpack-encoded extents list (used when the list is long)."""

    size: U64
    inline: Annotated[bytes, msgspec.Meta(max_length=INLINE_MAX)] = b""
    extents: list[Extent] = []
    manifest: ChunkRef | None = None


EMPTY = Content(size=0)


class Create(Strict, tag=1):
    """A new node with its first name. ``target`` is the symlink target, for a device node its number (st_rdev)
    as :data:`RDEV_LEN` bytes big-endian, and empty for other kinds."""

    node: NodeId
    entry: NodeId
    parent: NodeId
    name: Name
    kind: Annotated[int, msgspec.Meta(ge=1, le=7)]
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
    uid: U32
    gid: U32
    time_ns: TimeNs  # becomes atime, mtime and ctime of the new node
    target: Annotated[bytes, msgspec.Meta(max_length=SYMLINK_MAX)] = b""


class Link(Strict, tag=2):
    """An extra name (hard link) for an existing non-directory node."""

    node: NodeId
    entry: NodeId
    parent: NodeId
    name: Name


class Write(Strict, tag=3):
    """Replace a file's whole content description (size included)."""

    node: NodeId
    content: Content
    mtime_ns: TimeNs


class SetAttr(Strict, tag=4):
    """Set attributes; ``None`` leaves a field unchanged. ``xattrs_del`` are removed after ``xattrs_set``."""

    node: NodeId
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)] | None = None
    uid: U32 | None = None
    gid: U32 | None = None
    atime_ns: TimeNs | None = None
    mtime_ns: TimeNs | None = None
    xattrs_set: dict[
        Annotated[bytes, msgspec.Meta(min_length=1, max_length=XATTR_NAME_MAX)],
        Annotated[bytes, msgspec.Meta(max_length=XATTR_VALUE_MAX)],
    ] = {}
    xattrs_del: list[Annotated[bytes, msgspec.Meta(min_length=1, max_length=XATTR_NAME_MAX)]] = []


class Rename(Strict, tag=5):
    """Move one entry to a new parent and name."""

    entry: NodeId
    parent: NodeId
    name: Name


class Unlink(Strict, tag=6):
    """Remove one entry (a name). The node lives on while another entry names it."""

    entry: NodeId


Op = Union[Create, Link, Write, SetAttr, Rename, Unlink]


class Payload(Strict):
    ops: Annotated[list[Op], msgspec.Meta(max_length=MAX_OPS)]


def encode_payload(ops: list[Op]) -> bytes:
    return encode(Payload(ops))


def decode_payload(data: bytes) -> list[Op]:
    return decode(data, Payload, "change payload").ops


def valid_name(name: bytes) -> bool:
    """A single path component as POSIX allows it."""
    return 0 < len(name) <= NAME_MAX and b"/" not in name and b"\0" not in name and name not in (b".", b"..")
