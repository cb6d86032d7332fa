"""Shared helpers for the VFS tests (no tests here): a space with a Vfs on it, reopening, path helpers.

Import the fixture into a test module with ``from tests.unit.test_vfs_support import env  # noqa: F401``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from anysyncfs.core.space import Chunking
from anysyncfs.errors import FsError
from anysyncfs.fs.vfs import ROOT_INODE, Attr, Ctx, Vfs
from anysyncfs.replica import Replica, create_space, open_replica
from anysyncfs.replica.home import Home, Unlocked
from tests.conftest import PASSPHRASE, TEST_LOG2N

ROOT = Ctx(uid=0, gid=0)
ALICE = Ctx(uid=1000, gid=1000, umask=0o022)
BOB = Ctx(uid=2000, gid=2000, umask=0o022)
SMALL_CHUNKS = Chunking(4096, 4096, 16384)  # the smallest chunks a space allows: many extents from little data


@dataclass
class Env:
    home_dir: Path
    staging: Path
    unlocked: Unlocked
    replica: Replica
    vfs: Vfs
    space: str = "s"

    def reopen(self) -> None:
        """Close the Vfs and the store, then open a new Home, Replica and Vfs on the same directories (in place:
        the fixture closes whatever is open at the end)."""
        self.vfs.close()
        self.unlocked.home.close()
        home = Home(self.home_dir, scrypt_log2_n=TEST_LOG2N)
        self.unlocked = home.unlock(PASSPHRASE)
        self.replica = open_replica(self.unlocked, self.space)
        self.vfs = Vfs(self.replica, staging_dir=self.staging)

    def changes(self) -> int:
        return self.replica.store.count_changes(self.replica.space_id)

    def last_ops(self) -> list[object]:
        return list(self.replica.payloads())[-1][1]


def make_env(make_home: Callable[..., Unlocked], tmp_path: Path, chunking: Chunking | None = None,
             **vfs_kw: object) -> Env:  # fmt: skip
    unlocked = make_home("dev")
    replica = create_space(unlocked, "s", chunking=chunking)
    staging = tmp_path / "staging"
    return Env(unlocked.home.root, staging, unlocked, replica, Vfs(replica, staging_dir=staging, **vfs_kw))  # type: ignore[arg-type]


@pytest.fixture
def env(make_home: Callable[..., Unlocked], tmp_path: Path) -> Iterator[Env]:
    e = make_env(make_home, tmp_path)
    yield e
    e.vfs.close()
    e.unlocked.home.close()


@pytest.fixture
def small_env(make_home: Callable[..., Unlocked], tmp_path: Path) -> Iterator[Env]:
    """A space whose chunks are small (4..16 KiB), so that a little data makes many extents."""
    e = make_env(make_home, tmp_path, SMALL_CHUNKS)
    yield e
    e.vfs.close()
    e.unlocked.home.close()


# ---------------------------------------------------------------------------------------------------- helpers
def errno_of(fn: Callable[..., object], *args: object) -> int:
    """The errno of the FsError ``fn(*args)`` raises (fails the test if it raises nothing)."""
    with pytest.raises(FsError) as info:
        fn(*args)
    return info.value.errno


def write_file(vfs: Vfs, parent: int, name: bytes, data: bytes, ctx: Ctx = ROOT, mode: int = 0o644) -> Attr:
    fh, attr = vfs.create(parent, name, mode, os.O_WRONLY | os.O_CREAT, ctx)
    if data:
        assert vfs.write(fh, 0, data) == len(data)
    vfs.release(fh)
    return vfs.getattr(attr.inode)


def read_all(vfs: Vfs, inode: int, ctx: Ctx = ROOT, piece: int = 128 * 1024) -> bytes:
    fh = vfs.open(inode, os.O_RDONLY, ctx)
    try:
        size = vfs.getattr(inode).size
        parts = []
        offset = 0
        while offset < size:
            data = vfs.read(fh, offset, piece)
            assert data, "short read before EOF"
            parts.append(data)
            offset += len(data)
        return b"".join(parts)
    finally:
        vfs.release(fh)


def path_inode(vfs: Vfs, path: bytes, ctx: Ctx = ROOT) -> int:
    inode = ROOT_INODE
    for part in path.split(b"/"):
        if part:
            inode = vfs.lookup(inode, part, ctx).inode
    return inode


def listing(vfs: Vfs, inode: int, ctx: Ctx = ROOT) -> list[bytes]:
    """The names readdir gives, without '.' and '..'."""
    fh = vfs.opendir(inode, ctx)
    try:
        names = []
        start = 0
        while True:
            batch = vfs.readdir(fh, start)
            if not batch:
                return names
            names.extend(name for name, _, _ in batch if name not in (b".", b".."))
            start = batch[-1][2]
    finally:
        vfs.releasedir(fh)


def disk_usage(path: Path) -> int:
    """Bytes really allocated under ``path`` (st_blocks, so sparse files count what they hold)."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total
