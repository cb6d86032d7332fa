"""The in-memory model of a file system that the stress runner checks the mount against (issue 18 item 1).

Pure Python, no I/O. Content is sparse: a size and the non-zero 64 KiB blocks (with a digest of each), so files
past 4 GiB cost only what was written into them. Besides the current state the model keeps what a kill -9 may
bring back (see :class:`Model` and docs/reliability.md):

* per file, every content (and mode) it passed through since its last durable point (fsync, fdatasync, msync,
  clean remount); after a kill its content must be exactly one of them;
* the namespace (every path, its kind, which file it names, a symlink's target) at every operation boundary
  since the last point where the whole tree was durable (fsync or fdatasync of any file, fsyncdir, clean
  remount); after a kill the tree must be exactly one of them, where a file created with O_CREAT and still open
  at that point may be missing (group commit keeps such a file out of commits until it is closed, so that no
  half-written new file is ever committed: docs/architecture.md "Durability").
"""

from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass, field

BLOCK = 64 * 1024
ZERO_BLOCK = bytes(BLOCK)
FILE, DIR, SYMLINK = "file", "dir", "symlink"

Digest = bytes
Sig = tuple[int, tuple[tuple[int, Digest], ...]]  # (size, sorted (block index, digest) of the non-zero blocks)


def digest(block: bytes) -> Digest:
    return hashlib.blake2b(block, digest_size=16).digest()


class ModelError(Exception):
    """The operation must fail with this errno."""

    def __init__(self, err: int) -> None:
        super().__init__(errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclass(frozen=True)
class Content:
    """A file's bytes: ``size`` and its non-zero blocks (each BLOCK bytes, zero past ``size``)."""

    size: int = 0
    blocks: dict[int, bytes] = field(default_factory=dict)
    digests: dict[int, Digest] = field(default_factory=dict)

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        if offset >= end:
            return b""
        out = bytearray()
        pos = offset
        while pos < end:
            idx, within = divmod(pos, BLOCK)
            take = min(BLOCK - within, end - pos)
            block = self.blocks.get(idx)
            out += block[within : within + take] if block is not None else bytes(take)
            pos += take
        return bytes(out)

    def write(self, offset: int, data: bytes) -> Content:
        blocks, digests = dict(self.blocks), dict(self.digests)
        pos, i = offset, 0
        while i < len(data):
            idx, within = divmod(pos, BLOCK)
            take = min(BLOCK - within, len(data) - i)
            old = blocks.get(idx, ZERO_BLOCK)
            new = old[:within] + data[i : i + take] + old[within + take :]
            _put(blocks, digests, idx, new)
            pos += take
            i += take
        return Content(max(self.size, offset + len(data)), blocks, digests)

    def truncate(self, size: int) -> Content:
        if size >= self.size:
            return Content(size, self.blocks, self.digests)
        blocks, digests = dict(self.blocks), dict(self.digests)
        last, within = divmod(size, BLOCK)
        for idx in [i for i in blocks if i > last or (i == last and within == 0)]:
            del blocks[idx], digests[idx]
        if within and last in blocks:
            _put(blocks, digests, last, blocks[last][:within] + bytes(BLOCK - within))
        return Content(size, blocks, digests)

    def sig(self) -> Sig:
        return self.size, tuple(sorted(self.digests.items()))

    @staticmethod
    def from_blocks(size: int, blocks: dict[int, bytes]) -> Content:
        out: dict[int, bytes] = {}
        digests: dict[int, Digest] = {}
        for idx, block in blocks.items():
            _put(out, digests, idx, block.ljust(BLOCK, b"\0"))
        return Content(size, out, digests)


def _put(blocks: dict[int, bytes], digests: dict[int, Digest], idx: int, block: bytes) -> None:
    if block == ZERO_BLOCK:
        blocks.pop(idx, None)
        digests.pop(idx, None)
    else:
        blocks[idx] = block
        digests[idx] = digest(block)


@dataclass
class Inode:
    id: int
    kind: str
    mode: int
    content: Content = field(default_factory=Content)  # files
    target: str = ""  # symlinks
    children: dict[str, int] = field(default_factory=dict)  # directories
    mtime_ns: int | None = None  # known only after utimens, until the next data change
    opens: int = 0
    held: bool = False  # created with O_CREAT and open ever since: a commit may leave it out
    history: list[Sig] = field(default_factory=list)  # contents since the last durable point (first: that one)
    modes: list[int] = field(default_factory=list)  # modes since the last durable point


NameEntry = tuple[str, str, int, str]  # (path, kind, inode id, symlink target)


@dataclass(frozen=True)
class Snapshot:
    """The namespace at one operation boundary: every path, and the files a commit may have left out."""

    index: int  # the operation after which it was taken (-1: the start or a remount)
    names: tuple[NameEntry, ...]
    held: frozenset[int]


class Model:
    def __init__(self) -> None:
        self.inodes: dict[int, Inode] = {0: Inode(0, DIR, 0o755)}
        self.dead: dict[int, Inode] = {}  # dropped since the last whole-tree durable point (a kill may revive them)
        self.next_id = 1
        self.snapshots: list[Snapshot] = []
        self.durable_all(-1)

    # ------------------------------------------------------------------------------------------ lookup
    def lookup(self, path: str) -> Inode | None:
        node = self.inodes[0]
        for part in _parts(path):
            if node.kind != DIR or part not in node.children:
                return None
            node = self.inodes[node.children[part]]
        return node

    def parent(self, path: str) -> tuple[Inode, str]:
        parts = _parts(path)
        parent = self.lookup("/".join(parts[:-1]))
        if parent is None or parent.kind != DIR:
            raise ModelError(errno.ENOENT)
        return parent, parts[-1]

    def walk(self) -> list[tuple[str, Inode]]:
        """Every (path, inode) below the root, parents before children, in name order."""
        out: list[tuple[str, Inode]] = []

        def visit(prefix: str, node: Inode) -> None:
            for name in sorted(node.children):
                child = self.inodes[node.children[name]]
                path = f"{prefix}{name}"
                out.append((path, child))
                if child.kind == DIR:
                    visit(path + "/", child)

        visit("", self.inodes[0])
        return out

    def nlink(self, ino: Inode) -> int:
        return sum(1 for _, n in self.walk() if n.id == ino.id)

    def files(self) -> list[Inode]:
        """Every file with a name or an open descriptor."""
        return [n for n in self.inodes.values() if n.kind == FILE]

    # ------------------------------------------------------------------------------------------ durability
    def snapshot(self, index: int) -> None:
        """Record the namespace after operation ``index`` (if it changed since the last one)."""
        names = tuple((p, n.kind, n.id, n.target) for p, n in self.walk())
        held = frozenset(n.id for n in self.inodes.values() if n.held)
        last = self.snapshots[-1] if self.snapshots else None
        if last is None or last.names != names or last.held != held:
            self.snapshots.append(Snapshot(index, names, held))

    def durable_all(self, index: int) -> None:
        """The whole tree is committed and synced (fsync/fdatasync of any file, fsyncdir): older namespaces
        cannot come back. (File contents and modes only at their own durable points.)"""
        self.snapshots = []
        self.dead = {}
        self.snapshot(index)

    def get(self, ino_id: int) -> Inode:
        return self.inodes[ino_id] if ino_id in self.inodes else self.dead[ino_id]

    def durable_file(self, ino: Inode) -> None:
        ino.held = False
        ino.history = [ino.content.sig()]
        ino.modes = [ino.mode]

    def durable_everything(self, index: int) -> None:
        """A clean unmount committed everything."""
        for ino in self.inodes.values():
            ino.history = [ino.content.sig()] if ino.kind == FILE else []
            ino.modes = [ino.mode]
            ino.held = False
        self.durable_all(index)

    def changed(self, ino: Inode) -> None:
        sig = ino.content.sig()
        if not ino.history or ino.history[-1] != sig:
            ino.history.append(sig)

    def mode_changed(self, ino: Inode) -> None:
        if not ino.modes or ino.modes[-1] != ino.mode:
            ino.modes.append(ino.mode)

    # ------------------------------------------------------------------------------------------ operations
    def new_inode(self, kind: str, mode: int, target: str = "") -> Inode:
        ino = Inode(self.next_id, kind, mode, target=target)
        self.next_id += 1
        self.inodes[ino.id] = ino
        ino.history = [ino.content.sig()] if kind == FILE else []
        ino.modes = [mode]
        return ino

    def open(self, path: str, create: bool, excl: bool, trunc: bool, write: bool, mode: int) -> Inode:
        ino = self.lookup(path)
        if ino is not None:
            if create and excl:
                raise ModelError(errno.EEXIST)
            if ino.kind == DIR:
                raise ModelError(errno.EISDIR)
            assert ino.kind == FILE, "the generator opens files only"
            if trunc and write:
                ino.content = ino.content.truncate(0)
                ino.mtime_ns = None
                self.changed(ino)
        else:
            if not create:
                raise ModelError(errno.ENOENT)
            parent, name = self.parent(path)
            ino = self.new_inode(FILE, mode)
            ino.held = True
            parent.children[name] = ino.id
            parent.mtime_ns = None
        ino.opens += 1
        return ino

    def close(self, ino: Inode) -> None:
        ino.opens -= 1
        if ino.opens == 0:
            ino.held = False
            self._drop_if_orphan(ino)

    def _drop_if_orphan(self, ino: Inode) -> None:
        if ino.opens == 0 and ino.kind != DIR and self.nlink(ino) == 0:
            self.drop(ino)

    def drop(self, ino: Inode) -> None:
        self.dead[ino.id] = self.inodes.pop(ino.id)

    def write(self, ino: Inode, offset: int, data: bytes) -> None:
        if not data:
            return
        ino.content = ino.content.write(offset, data)
        ino.mtime_ns = None
        self.changed(ino)

    def truncate(self, ino: Inode, size: int) -> None:
        if ino.kind == DIR:
            raise ModelError(errno.EISDIR)
        ino.mtime_ns = None  # POSIX: updated if the size changes (Linux file systems update it anyway)
        if size != ino.content.size:
            ino.content = ino.content.truncate(size)
            self.changed(ino)

    def mkdir(self, path: str, mode: int) -> None:
        parent, name = self.parent(path)
        if name in parent.children:
            raise ModelError(errno.EEXIST)
        parent.children[name] = self.new_inode(DIR, mode).id
        parent.mtime_ns = None

    def symlink(self, target: str, path: str) -> None:
        parent, name = self.parent(path)
        if name in parent.children:
            raise ModelError(errno.EEXIST)
        parent.children[name] = self.new_inode(SYMLINK, 0o777, target).id
        parent.mtime_ns = None

    def link(self, src: str, dst: str) -> None:
        ino = self.lookup(src)
        if ino is None:
            raise ModelError(errno.ENOENT)
        if ino.kind == DIR:
            raise ModelError(errno.EPERM)
        parent, name = self.parent(dst)
        if name in parent.children:
            raise ModelError(errno.EEXIST)
        parent.children[name] = ino.id
        parent.mtime_ns = None

    def unlink(self, path: str) -> None:
        ino = self.lookup(path)
        if ino is None:
            raise ModelError(errno.ENOENT)
        if ino.kind == DIR:
            raise ModelError(errno.EISDIR)
        parent, name = self.parent(path)
        del parent.children[name]
        parent.mtime_ns = None
        self._drop_if_orphan(ino)

    def rmdir(self, path: str) -> None:
        ino = self.lookup(path)
        if ino is None:
            raise ModelError(errno.ENOENT)
        if ino.kind != DIR:
            raise ModelError(errno.ENOTDIR)
        if ino.children:
            raise ModelError(errno.ENOTEMPTY)
        parent, name = self.parent(path)
        del parent.children[name]
        parent.mtime_ns = None
        self.drop(ino)

    def rename(self, src: str, dst: str) -> None:
        ino = self.lookup(src)
        if ino is None:
            raise ModelError(errno.ENOENT)
        dparent, dname = self.parent(dst)
        if dst == src:
            return
        if ino.kind == DIR and (dst + "/").startswith(src + "/"):
            raise ModelError(errno.EINVAL)
        if (src + "/").startswith(dst + "/"):
            raise ModelError(errno.ENOTEMPTY)  # the target is an ancestor of the source (the kernel's check)
        victim = self.lookup(dst)
        if victim is not None:
            if victim.id == ino.id:
                return  # two names of one file: nothing happens
            if ino.kind == DIR and victim.kind != DIR:
                raise ModelError(errno.ENOTDIR)
            if ino.kind != DIR and victim.kind == DIR:
                raise ModelError(errno.EISDIR)
            if victim.kind == DIR and victim.children:
                raise ModelError(errno.ENOTEMPTY)
        sparent, sname = self.parent(src)
        del sparent.children[sname]
        sparent.mtime_ns = None
        if victim is not None:
            del dparent.children[dname]
            dparent.mtime_ns = None
        dparent.children[dname] = ino.id
        dparent.mtime_ns = None
        if victim is not None:
            if victim.kind == DIR:
                self.drop(victim)
            else:
                self._drop_if_orphan(victim)

    def chmod(self, ino: Inode, mode: int) -> None:
        ino.mode = mode
        self.mode_changed(ino)

    def utimens(self, ino: Inode, mtime_ns: int) -> None:
        ino.mtime_ns = mtime_ns


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]
