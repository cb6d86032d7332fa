"""Level 7: the kernel's name and attribute caches across devices (issue 11 item 4).

Both mounts let the kernel cache names and attributes for ``CACHE_S`` (far longer than any wait below). Each test
makes device B's kernel cache a name (stat, read) first, changes it on device A, and waits (polling, at most
``SEEN_S``) until B shows the new state: a rename, a removal, an in-place overwrite, an editor's replace, and
commits of another process on B's own device (``anysyncfs put`` beside the mount). Passing within ``SEEN_S`` <
``CACHE_S`` means the landing change invalidated what B's kernel had cached: a stale name or size would otherwise
be served for the whole cache timeout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

from .conftest import Mount, SyncNode, _check_fuse, cluster_cleanup, eventually, init_device
from .conftest import write_synced as write

CACHE_S = 300  # the mounts' cache_timeout: no test waits anywhere near this long
SEEN_S = 30.0  # how long a test waits for B to show a change (the sync takes well under a second)
OPTS = ("-o", f"sync_interval=2,fetch_timeout=20,listen=off,cache_timeout={CACHE_S}")


@dataclass
class Pair:
    node: SyncNode
    a: Mount
    b: Mount
    space_id: str


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    _check_fuse()
    root = tmp_path_factory.mktemp("kcache")
    node = SyncNode(root / "node", free_port())
    a = Mount(root / "a")
    b = Mount(root / "b")
    with cluster_cleanup(node, a, b):
        address = node.start()
        phrase = init_device(a, "device-a")
        space_id = a.cli("space", "create", a.space).stdout.decode().strip()
        a.cli("space", "add-peer", a.space, address)
        a.mount(*OPTS)
        init_device(b, "device-b", phrase)
        b.cli("space", "add-peer", space_id, address)
        b.cli("sync", space_id, "--name", b.space)
        b.mount(*OPTS)
        yield Pair(node, a, b, space_id)


def fsync_dir(path: Path) -> None:
    """Commit the open batch of A now (fsyncdir), so the change leaves at once."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def arrived(b: Mount, name: str, data: bytes) -> None:
    """Wait until B shows ``name`` with ``data``, and leave it in B's kernel caches (looked up, stat'ed, read)."""
    eventually(lambda: b.path(name).read_bytes() == data, f"{name} on B", SEEN_S)
    b.path(name).stat()


def test_a_rename_is_seen_under_the_new_name_only(pair: Pair) -> None:
    a, b = pair.a, pair.b
    write(a.path("before.txt"), b"renamed on A\n")
    arrived(b, "before.txt", b"renamed on A\n")
    os.rename(a.path("before.txt"), a.path("after.txt"))
    fsync_dir(a.mountpoint)
    eventually(lambda: b.path("after.txt").read_bytes() == b"renamed on A\n" and not b.path("before.txt").exists(),
               "the new name and not the old one on B", SEEN_S)


def test_a_rename_into_another_folder_drops_the_old_name(pair: Pair) -> None:
    a, b = pair.a, pair.b
    a.path("src").mkdir()
    a.path("dst").mkdir()
    write(a.path("src", "moved.txt"), b"moved\n")
    arrived(b, "src/moved.txt", b"moved\n")
    assert b.path("dst").is_dir()
    os.rename(a.path("src", "moved.txt"), a.path("dst", "moved.txt"))
    fsync_dir(a.mountpoint)
    eventually(lambda: not b.path("src", "moved.txt").exists() and b.path("dst", "moved.txt").exists(),
               "moved.txt only in dst on B", SEEN_S)
    assert os.listdir(b.path("src")) == []


def test_a_removal_is_seen_at_once(pair: Pair) -> None:
    a, b = pair.a, pair.b
    write(a.path("doomed.txt"), b"soon gone\n")
    a.path("gone-dir").mkdir()
    arrived(b, "doomed.txt", b"soon gone\n")
    assert b.path("gone-dir").is_dir()
    os.unlink(a.path("doomed.txt"))
    os.rmdir(a.path("gone-dir"))
    fsync_dir(a.mountpoint)
    eventually(lambda: not b.path("doomed.txt").exists() and not b.path("gone-dir").exists(),
               "doomed.txt and gone-dir gone on B", SEEN_S)


def test_an_overwrite_in_place_shows_the_new_size_and_bytes(pair: Pair) -> None:
    a, b = pair.a, pair.b
    write(a.path("edited.txt"), b"short\n")
    arrived(b, "edited.txt", b"short\n")
    longer = b"a much longer second version of the file\n" * 10
    with open(a.path("edited.txt"), "r+b") as f:  # same inode, new content and size
        f.write(longer)
        f.flush()
        os.fsync(f.fileno())
    eventually(lambda: b.path("edited.txt").stat().st_size == len(longer) and
               b.path("edited.txt").read_bytes() == longer, "the new size and bytes on B", SEEN_S)  # fmt: skip


def test_an_editors_replace_shows_the_new_file_under_the_name(pair: Pair) -> None:
    a, b = pair.a, pair.b
    write(a.path("doc.txt"), b"version 1\n")
    arrived(b, "doc.txt", b"version 1\n")
    old_inode = b.path("doc.txt").stat().st_ino
    write(a.path(".doc.txt.swp"), b"version 2, saved by an editor\n")
    os.rename(a.path(".doc.txt.swp"), a.path("doc.txt"))
    fsync_dir(a.mountpoint)
    eventually(lambda: b.path("doc.txt").read_bytes() == b"version 2, saved by an editor\n",
               "the replaced file on B", SEEN_S)
    assert b.path("doc.txt").stat().st_ino != old_inode
    assert not b.path(".doc.txt.swp").exists()


def test_commits_of_another_process_on_the_same_device_are_seen(pair: Pair) -> None:
    b = pair.b
    write(b.path("local.txt"), b"written through the mount\n")
    assert b.path("local.txt").read_bytes() == b"written through the mount\n"
    # Last a stat: it leaves fresh attributes in the kernel's cache (a read marks the atime stale, and the next stat
    # would ask the mount anyway).
    b.path("local.txt").stat()
    # `anysyncfs put` writes the store directly, beside the running mount.
    replaced = b"overwritten by anysyncfs put, longer than before\n"
    b.cli("put", b.space, "/local.txt", input=replaced)
    b.cli("put", b.space, "/put-new.txt", input=b"new from put\n")
    # The size first, by stat alone: a read past the cached end of file would make the kernel ask for fresh
    # attributes by itself, and hide a missing invalidation.
    eventually(lambda: b.path("local.txt").stat().st_size == len(replaced), "put's new size through the mount",
               SEEN_S)
    assert b.path("local.txt").read_bytes() == replaced
    eventually(lambda: b.path("put-new.txt").read_bytes() == b"new from put\n", "put's new file", SEEN_S)
    # And it reaches the other device too (the mount's engine pushes what it picked up).
    eventually(lambda: pair.a.path("put-new.txt").read_bytes() == b"new from put\n", "put's file on A", SEEN_S)
