"""Level 9: offline control on real mounts — a provider node (``anysyncfs node serve``), device A (the writer) and
device B (the same account, restored; metadata synced only) whose mount has a small cache limit.

The tests share one cluster (module scope) and run in file order. Everything is polled with a deadline; nothing
asserts on time.
"""

from __future__ import annotations

import errno
import json
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

from .conftest import (
    Mount,
    SyncNode,
    _check_fuse,
    blob_bytes,
    cluster_cleanup,
    eventually,
    init_device,
)
from .conftest import write_synced as write

KiB, MiB = 1024, 1024 * 1024
FILE_SIZE = 512 * KiB
KEEP, REST = 10, 30  # files in keep/ (pinned on B) and rest/
LIMIT = 4 * MiB
FETCH_TIMEOUT = 3
A_OPTS = ("-o", "sync_interval=2,fetch_timeout=20,listen=off")  # through the provider only
B_OPTS = ("-o", f"sync_interval=2,fetch_timeout={FETCH_TIMEOUT},cache_size=4M,listen=off")
A_SMALL_CACHE = ("-o", "sync_interval=2,fetch_timeout=20,cache_size=64K")



@dataclass
class Cluster:
    node: SyncNode
    a: Mount
    b: Mount
    space_id: str
    tree: dict[str, bytes]  # path in the space -> bytes
    max_blob: int  # the largest blob file of the tree






def blob_files(m: Mount) -> list[Path]:
    return [p for p in (m.home / "blobs").rglob("*") if p.is_file()]




def status(m: Mount) -> dict[str, object]:
    return json.loads(m.cli("status", m.space, "--json").stdout)[0]


def connected(m: Mount) -> bool:
    peers = status(m)["peers"]
    return bool(peers) and all(p["connected"] for p in peers)  # type: ignore[index, union-attr]


def uploaded(m: Mount) -> bool:
    return status(m)["blobs_to_upload"] == 0


def xattr(m: Mount, rel: str, name: str) -> bytes:
    return os.getxattr(m.path(rel), name)


def read_checked(m: Mount, rel: str, check: Callable[[], None]) -> bytes:
    """Read a file in 128 KiB pieces, calling ``check`` between them (each read returns only after the mount
    fetched what it needed and evicted what the limit demands)."""
    parts = []
    with open(m.path(rel), "rb") as f:
        while True:
            data = f.read(128 * KiB)
            check()
            if not data:
                return b"".join(parts)
            parts.append(data)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _check_fuse()
    root = tmp_path_factory.mktemp("offline")
    node = SyncNode(root / "node", free_port())
    a = Mount(root / "a")
    b = Mount(root / "b")
    with cluster_cleanup(node, a, b):
        address = node.start()
        phrase = init_device(a, "device-a")
        space_id = a.cli("space", "create", a.space).stdout.decode().strip()
        a.cli("space", "add-peer", a.space, address)
        a.mount(*A_OPTS)
        rng = random.Random(9)
        tree = {}
        for folder, prefix, count in (("keep", "k", KEEP), ("rest", "r", REST)):
            a.path(folder).mkdir()
            for i in range(count):
                rel = f"{folder}/{prefix}{i:02d}"
                tree[rel] = rng.randbytes(FILE_SIZE)
                write(a.path(rel), tree[rel])
        eventually(lambda: uploaded(a) and connected(a), "A uploaded every blob")
        max_blob = max(p.stat().st_size for p in blob_files(a))

        init_device(b, "device-b", phrase)
        b.cli("space", "add-peer", space_id, address)

        def synced() -> bool:
            b.cli("sync", space_id, "--name", b.space, "--metadata-only")
            return len(b.cli("ls", b.space, "/rest").stdout.decode().split()) == REST

        eventually(synced, "B has every change")
        assert blob_bytes(b) == 0, "a metadata-only sync fetched content"
        b.mount(*B_OPTS)
        eventually(lambda: connected(b), "B connected to the node")
        yield Cluster(node, a, b, space_id, tree, max_blob)


def test_reads_under_a_small_cache_limit_refetch_and_stay_under_it(cluster: Cluster) -> None:
    b = cluster.b
    bound = LIMIT + cluster.max_blob
    peak = 0

    def check() -> None:
        nonlocal peak
        peak = max(peak, blob_bytes(b))
        assert peak <= bound, f"{peak} bytes of blobs on B, the limit is {LIMIT} (+ one blob of {cluster.max_blob})"

    paths = sorted(cluster.tree)
    order = paths + random.Random(1).sample(paths, len(paths))
    for rel in order:
        assert read_checked(b, rel, check) == cluster.tree[rel], rel
    assert peak > LIMIT // 2  # the cache was used
    # 80 reads of 40 files through a cache that holds a few of them: most were refetched, all correctly.
    remote = sum(xattr(b, rel, "user.anysync.state") == b"remote-only" for rel in paths)
    assert remote >= len(paths) - LIMIT // FILE_SIZE


def test_pinned_files_stay_local_with_the_node_stopped(cluster: Cluster) -> None:
    b, node = cluster.b, cluster.node
    out = b.cli("pin", str(b.path("keep"))).stdout.decode()
    assert f"{KEEP} files" in out, out
    keep = [rel for rel in cluster.tree if rel.startswith("keep/")]
    rest = sorted(rel for rel in cluster.tree if rel.startswith("rest/"))
    assert xattr(b, "keep", "user.anysync.state") == b"pinned"
    assert all(xattr(b, rel, "user.anysync.state") == b"pinned" for rel in keep)
    assert blob_bytes(b) >= KEEP * FILE_SIZE  # pinned content may exceed the limit; it is never evicted
    for rel in rest[:12]:  # more reads through the full cache: they evict unpinned blobs only
        assert b.path(rel).read_bytes() == cluster.tree[rel]
    assert all(xattr(b, rel, "user.anysync.state") == b"pinned" for rel in keep)

    node.stop()
    try:
        b.remount()  # no page cache, no memory cache: what is readable now is on B's disk
        for rel in keep:
            assert b.path(rel).read_bytes() == cluster.tree[rel], rel
        evicted = [rel for rel in rest if xattr(b, rel, "user.anysync.state") == b"remote-only"]
        assert evicted, "every unpinned file is still on B"
        b.expect_log(r"\(EIO\)")
        with pytest.raises(OSError) as e:
            b.path(evicted[0]).read_bytes()  # waits fetch_timeout for a provider, then EIO
        assert e.value.errno == errno.EIO
    finally:
        node.start()
    eventually(lambda: connected(b), "B reconnected")
    assert b.path(evicted[0]).read_bytes() == cluster.tree[evicted[0]]


def test_evict_and_unpin_on_the_reader(cluster: Cluster) -> None:
    b = cluster.b
    out = b.cli("evict", str(b.path("keep"))).stdout.decode()
    assert "freed 0 B" in out and "pinned" in out, out
    assert xattr(b, "keep", "user.anysync.state") == b"pinned"
    out = b.cli("unpin", str(b.path("keep"))).stdout.decode()
    assert "unpinned" in out, out
    assert xattr(b, "keep/k00", "user.anysync.pinned") == b"0"
    out = b.cli("evict", str(b.path("keep"))).stdout.decode()
    # Once unpinned, keep/ (5 MiB) no longer fits the mount's 4 MiB limit, so the mount's own periodic eviction
    # may free part of it before this command does: what is freed here is at most all of it, and afterwards
    # none of it is local either way.
    assert "freed" in out, out
    assert all(xattr(b, f"keep/k{i:02d}", "user.anysync.state") == b"remote-only" for i in range(KEEP))
    assert int(xattr(b, "keep", "user.anysync.local_bytes")) == 0
    assert b.path("keep/k03").read_bytes() == cluster.tree["keep/k03"]  # fetched again on demand


def test_new_files_in_a_pinned_folder_arrive_without_being_read(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    b.cli("pin", str(b.path("keep")))
    later = os.urandom(FILE_SIZE)
    write(a.path("keep/later"), later)
    eventually(lambda: b.path("keep/later").stat().st_size == FILE_SIZE, "keep/later's change on B")
    # Nobody reads it on B: the mount fetches pinned content in the background.
    eventually(lambda: xattr(b, "keep/later", "user.anysync.state") == b"pinned", "keep/later fetched on B")
    assert int(xattr(b, "keep/later", "user.anysync.local_bytes")) >= FILE_SIZE
    assert b.path("keep/later").read_bytes() == later


def test_unsynced_writes_are_never_evicted(cluster: Cluster) -> None:
    a, node = cluster.a, cluster.node
    a.remount(*A_SMALL_CACHE)
    old = "rest/r00"
    # Every blob of A is on the node: the cache evicts them all.
    eventually(lambda: xattr(a, old, "user.anysync.state") == b"remote-only", "A's cache evicted old content")
    eventually(lambda: connected(a), "A connected to the node")
    held = open(a.path(old), "rb")  # fetched, and kept while open
    try:
        assert held.read() == cluster.tree[old]
        node.stop()
        new = {f"new/n{i}": os.urandom(FILE_SIZE) for i in range(4)}
        a.path("new").mkdir()
        for rel, data in new.items():
            write(a.path(rel), data)
    finally:
        held.close()
    try:
        # The old file's blob became evictable when it was closed: once it is gone, the cache has run since.
        eventually(lambda: xattr(a, old, "user.anysync.state") == b"remote-only", "A's cache ran again")
        for rel, data in new.items():
            assert xattr(a, rel, "user.anysync.state") == b"local", rel
            assert a.path(rel).read_bytes() == data
        out = a.cli("evict", str(a.path("new"))).stdout.decode()
        assert "freed 0 B" in out and "not on a provider yet" in out, out
        assert all(xattr(a, rel, "user.anysync.state") == b"local" for rel in new)
    finally:
        node.start()
    eventually(lambda: uploaded(a), "A uploaded the new files")
    a.cli("evict", str(a.path("new")))  # (or the cache evicted them first: they are on the node now)
    assert all(xattr(a, rel, "user.anysync.state") == b"remote-only" for rel in new)
    for rel, data in new.items():
        assert a.path(rel).read_bytes() == data
