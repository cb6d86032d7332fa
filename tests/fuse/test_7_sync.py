"""Level 7: sync between real processes — a provider node (``anysyncfs node serve``) and two devices of one
account, each with the space mounted (``anysyncfs mount -f``), plus a third device that syncs from the command line.

The tests share one cluster (module scope) and run in file order; each waits for its own writes to arrive, so it
also passes alone. Everything is polled with a deadline; nothing asserts on time. The mount and node logs must
stay free of warnings: a stopped node is only logged at INFO by the engines ("cannot connect ..."), so no test
declares an expected log line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
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

# Sync through the provider only: no listener, so no direct device-to-device path (tests/fuse/test_11_p2p.py).
SYNC_OPTS = ("-o", "sync_interval=2,fetch_timeout=20,listen=off")
BIG = 3 * 1024 * 1024



@dataclass
class Cluster:
    node: SyncNode
    a: Mount
    b: Mount
    space_id: str
    phrase: str
    root: Path
    written: dict[str, bytes] = field(default_factory=dict)  # path in the space -> bytes the tests wrote there

    def restart_node(self) -> None:
        self.node.stop()
        self.node.start()






def has_bytes(path: Path, data: bytes) -> bool:
    return path.read_bytes() == data


def visible_names(m: Mount) -> list[str]:
    return sorted(n for n in os.listdir(m.mountpoint) if n != ".anysync")




def status_json(m: Mount) -> list[dict[str, object]]:
    return json.loads(m.cli("status", m.space, "--json").stdout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _check_fuse()
    root = tmp_path_factory.mktemp("sync")
    node = SyncNode(root / "node", free_port())
    a = Mount(root / "a")
    b = Mount(root / "b")
    with cluster_cleanup(node, a, b):
        address = node.start()
        phrase = init_device(a, "device-a")
        space_id = a.cli("space", "create", a.space).stdout.decode().strip()
        assert space_id.startswith("sp-"), space_id
        listed = a.cli("space", "list").stdout.decode().split()
        assert listed[:2] == [space_id, a.space], listed
        a.cli("space", "add-peer", a.space, address)
        a.mount(*SYNC_OPTS)

        init_device(b, "device-b", phrase)
        b.cli("space", "add-peer", space_id, address)
        b.cli("sync", space_id, "--name", b.space)
        b.mount(*SYNC_OPTS)
        yield Cluster(node, a, b, space_id, phrase, root)


def test_a_closed_file_appears_on_the_other_mount(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    small = b"hello from device A\n"
    big = os.urandom(BIG)
    write(a.path("hello.txt"), small)
    write(a.path("big.bin"), big)
    cluster.written |= {"/hello.txt": small, "/big.bin": big}

    eventually(lambda: has_bytes(b.path("hello.txt"), small), "hello.txt on B")
    # The big file's metadata arrives with its change; its blobs stay on the node until B reads the file.
    eventually(lambda: b.path("big.bin").stat().st_size == BIG, "big.bin's size on B")
    assert blob_bytes(b) < BIG, "B holds the big file's content before anything read it"
    assert b.path("big.bin").read_bytes() == big
    assert blob_bytes(b) >= BIG


def test_offline_edits_converge(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    cluster.node.stop()
    from_a, from_b = b"written on A while the node was down\n", b"written on B while the node was down\n"
    write(a.path("offline-a.txt"), from_a)
    write(b.path("offline-b.txt"), from_b)
    cluster.written |= {"/offline-a.txt": from_a, "/offline-b.txt": from_b}
    cluster.node.start()

    for m in (a, b):
        eventually(lambda m=m: has_bytes(m.path("offline-a.txt"), from_a) and has_bytes(m.path("offline-b.txt"), from_b),
                   f"both offline files on {m.root.name}")
    assert visible_names(a) == visible_names(b)


def test_concurrent_edits_leave_one_identical_conflict_copy(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    original = b"the original text\n"
    write(a.path("shared.txt"), original)
    eventually(lambda: has_bytes(b.path("shared.txt"), original), "shared.txt on B")

    cluster.node.stop()
    from_a, from_b = b"A's version of the shared file\n", b"B's version of the shared file, a bit longer\n"
    write(a.path("shared.txt"), from_a)
    write(b.path("shared.txt"), from_b)
    cluster.node.start()

    def converged() -> tuple[list[str], bytes, bytes] | None:
        names = [visible_names(m) for m in (a, b)]
        copies = [n for n in names[0] if n.startswith("shared.") and ".sync-conflict-" in n]
        if names[0] != names[1] or not copies:
            return None
        kept = [m.path("shared.txt").read_bytes() for m in (a, b)]
        other = [m.path(copies[0]).read_bytes() for m in (a, b)]
        if kept[0] != kept[1] or other[0] != other[1]:
            return None
        return copies, kept[0], other[0]

    copies, kept, other = eventually(converged, "the same shared.txt and conflict copy on both mounts")
    assert len(copies) == 1, copies
    assert {kept, other} == {from_a, from_b}  # neither edit is lost
    cluster.written |= {"/shared.txt": kept, "/" + copies[0]: other}


def test_a_restarted_node_still_serves_everything(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    last = b"written just before the node restarts\n"
    write(a.path("before-restart.txt"), last)
    cluster.written["/before-restart.txt"] = last
    eventually(lambda: has_bytes(b.path("before-restart.txt"), last), "before-restart.txt on B (so the node has it)")
    cluster.restart_node()

    c = Mount(cluster.root / "c")
    init_device(c, "device-c", cluster.phrase)
    c.cli("space", "add-peer", cluster.space_id, cluster.node.address)
    out = c.cli("sync", cluster.space_id, "--name", c.space).stdout.decode()
    assert "1/1 peers reached" in out, out

    listed = sorted(c.cli("ls", c.space, "/").stdout.decode().split("\n")[:-1])
    assert listed == visible_names(a)
    assert set(cluster.written) <= {"/" + n for n in listed}
    for name in listed:
        assert c.cli("cat", c.space, "/" + name).stdout == a.path(name).read_bytes(), name
    for path, data in cluster.written.items():
        assert c.cli("cat", c.space, path).stdout == data, path
    c.cli("fsck")


def test_status_shows_the_connected_node_and_nothing_to_upload(cluster: Cluster) -> None:
    a = cluster.a
    write(a.path("status.txt"), os.urandom(100_000))  # something to upload, so "0" is reached, not just read

    def settled() -> dict[str, object] | None:
        (space,) = status_json(a)
        peers = space["peers"]
        assert isinstance(peers, list) and len(peers) == 1
        ok = space["mounted"] and peers[0]["connected"] and space["blobs_to_upload"] == 0
        return space if ok else None

    space = eventually(settled, "status: mounted, node connected, 0 blobs to upload")
    assert space["space"] == cluster.space_id
    text = a.cli("status", a.space).stdout.decode()
    assert "mounted (syncing)" in text and "blobs not yet uploaded: 0" in text, text
    assert f"{cluster.node.address}: connected" in text, text


# ---------------------------------------------------------------------------------------------- group commit
def test_unsynced_bursts_on_both_mounts_converge(cluster: Cluster) -> None:
    """Group commit with batches in flight on both sides: files created, renamed and removed without any fsync
    travel as batches (each a change) while the other side's batches arrive; both trees end identical. A file
    that B keeps open (created in its open batch, so held back from commits) stays visible to B while A's
    changes land, and reaches A whole once closed."""
    a, b = cluster.a, cluster.b
    held = open(b.path("held-open.txt"), "wb")  # noqa: SIM115 - stays open across the bursts
    try:
        held.write(b"first half, ")
        held.flush()
        expected: dict[str, bytes] = {}
        for m, tag in ((a, "a"), (b, "b")):
            m.path(f"burst-{tag}").mkdir()
        for i in range(40):
            for m, tag in ((a, "a"), (b, "b")):
                body = f"{tag}{i} ".encode() * (1 + i * 37 % 400)
                p = m.path(f"burst-{tag}", f"f{i:02d}")
                p.write_bytes(body)
                if i % 5 == 0:
                    p.rename(m.path(f"burst-{tag}", f"r{i:02d}"))
                    expected[f"burst-{tag}/r{i:02d}"] = body
                elif i % 7 == 0:
                    p.unlink()
                else:
                    expected[f"burst-{tag}/f{i:02d}"] = body
        assert b.path("held-open.txt").stat().st_size == len(b"first half, ")

        def tree_of(m: Mount) -> dict[str, bytes]:
            return {f"{d}/{n}": m.path(d, n).read_bytes() for d in ("burst-a", "burst-b") if m.path(d).is_dir()
                    for n in os.listdir(m.path(d))}

        for m in (a, b):
            eventually(lambda m=m: tree_of(m) == expected, f"both bursts on {m.root.name}")
        held.write(b"second half")
    finally:
        held.close()
    eventually(lambda: has_bytes(a.path("held-open.txt"), b"first half, second half"), "the held file on A, whole")
    assert visible_names(a) == visible_names(b)
    for path, data in expected.items():
        cluster.written["/" + path] = data
    cluster.written["/held-open.txt"] = b"first half, second half"


def test_unsynced_concurrent_edits_still_leave_one_conflict_copy(cluster: Cluster) -> None:
    """The conflict rules see batches as changes: two edits made without fsync on both sides while the node is
    down (each in its device's batch, committed by the timer) give the same single conflict copy as before."""
    a, b = cluster.a, cluster.b
    original = b"the batched original\n"
    write(a.path("batched.txt"), original)
    eventually(lambda: has_bytes(b.path("batched.txt"), original), "batched.txt on B")
    cluster.node.stop()
    from_a, from_b = b"A's unsynced edit\n", b"B's unsynced edit, longer\n"
    a.path("batched.txt").write_bytes(from_a)
    b.path("batched.txt").write_bytes(from_b)
    cluster.node.start()

    def converged() -> tuple[list[str], bytes, bytes] | None:
        names = [visible_names(m) for m in (a, b)]
        copies = [n for n in names[0] if n.startswith("batched.") and ".sync-conflict-" in n]
        if names[0] != names[1] or not copies:
            return None
        kept = [m.path("batched.txt").read_bytes() for m in (a, b)]
        other = [m.path(copies[0]).read_bytes() for m in (a, b)]
        if kept[0] != kept[1] or other[0] != other[1]:
            return None
        return copies, kept[0], other[0]

    copies, kept, other = eventually(converged, "the same batched.txt and conflict copy on both mounts")
    assert len(copies) == 1, copies
    assert {kept, other} == {from_a, from_b}
    cluster.written |= {"/batched.txt": kept, "/" + copies[0]: other}
