"""Level 8: sharing between three identities in separate processes — an owner, a writer and a reader, each with
its own home and mount, joined through invite tickets over a provider node (``anysyncfs node serve``).

The owner's space is mounted while it invites (the CLI stores the invite and pushes it to the node itself); the
writer and the reader join with ``anysyncfs join TICKET`` and mount. A file written on any writable mount shows up on
the others; every write on the reader's mount fails with EROFS, and the mount says so when it starts.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

from .conftest import (
    TEST_MOUNT_OPTS,
    Mount,
    SyncNode,
    _check_fuse,
    cluster_cleanup,
    eventually,
    init_device,
)
from .conftest import write_synced as write
from .test_7_sync import has_bytes

# Sync through the provider only: no listener, so no direct device-to-device path (tests/fuse/test_11_p2p.py).
SYNC_OPTS = ("-o", "sync_interval=2,fetch_timeout=20,listen=off")


@dataclass
class Team:
    node: SyncNode
    owner: Mount
    writer: Mount
    reader: Mount


def invite(owner: Mount, role: str) -> str:
    out = owner.cli("space", "invite", owner.space, "--role", role).stdout.decode().split()
    tickets = [w for w in out if w.startswith("anysync:")]
    assert len(tickets) == 1, out
    return tickets[0]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    _check_fuse()
    root = tmp_path_factory.mktemp("sharing")
    node = SyncNode(root / "node", free_port())
    owner, writer, reader = Mount(root / "owner"), Mount(root / "writer"), Mount(root / "reader")
    with cluster_cleanup(node, owner, writer, reader):
        address = node.start()
        init_device(owner, "owner")
        owner.cli("space", "create", owner.space)
        owner.cli("space", "add-peer", owner.space, address)
        owner.mount(*SYNC_OPTS)
        write(owner.path("welcome.txt"), b"from the owner")
        for m, role in ((writer, "writer"), (reader, "reader")):
            ticket = invite(owner, role)  # the owner's space is mounted: the CLI pushes the invite itself
            init_device(m, role)
            m.cli("join", ticket, "--name", m.space)
            if role == "reader":
                m.expect_log(r"mounting read-only: you are a reader in this space")
            m.mount(*SYNC_OPTS)
        yield Team(node, owner, writer, reader)


def test_everyone_reads_what_the_owner_wrote(team: Team) -> None:
    for m in (team.writer, team.reader):
        eventually(lambda m=m: has_bytes(m.path("welcome.txt"), b"from the owner"), f"welcome.txt on {m.root.name}")


def test_a_writers_file_reaches_the_owner_and_the_reader(team: Team) -> None:
    data = os.urandom(700_000)
    write(team.writer.path("report.bin"), data)
    for m in (team.owner, team.reader):
        eventually(lambda m=m: has_bytes(m.path("report.bin"), data), f"report.bin on {m.root.name}")
    write(team.owner.path("reply.txt"), b"thanks")
    eventually(lambda: has_bytes(team.writer.path("reply.txt"), b"thanks"), "reply.txt on the writer")


def test_every_write_on_the_readers_mount_fails_with_erofs(team: Team) -> None:
    r = team.reader
    eventually(lambda: r.path("welcome.txt").exists(), "welcome.txt on the reader")

    def erofs(fn, *args) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(OSError) as caught:
            fn(*args)
        assert caught.value.errno == errno.EROFS, (fn, args, caught.value)

    erofs(open, r.path("new.txt"), "w")
    erofs(open, r.path("welcome.txt"), "a")
    erofs(os.mkdir, r.path("dir"))
    erofs(os.rename, r.path("welcome.txt"), r.path("renamed.txt"))
    erofs(os.unlink, r.path("welcome.txt"))
    erofs(os.chmod, r.path("welcome.txt"), 0o600)
    erofs(os.symlink, "welcome.txt", r.path("link"))
    erofs(os.setxattr, r.path("welcome.txt"), "user.note", b"x")
    assert r.path("welcome.txt").read_bytes() == b"from the owner"  # reading still works
    assert sorted(os.listdir(r.mountpoint)) == sorted(os.listdir(team.owner.mountpoint))


def test_the_readers_background_mount_says_it_is_read_only(team: Team, tmp_path: Path) -> None:
    """`anysyncfs mount` (background) tells a reader at once that the mount is read-only."""
    r = team.reader
    second = tmp_path / "mnt2"
    second.mkdir()
    # The space is mounted already (one mount per home): use the message a second mount would need instead —
    # unmount the foreground one, mount in the background, check the message, then restore.
    r.unmount()
    try:
        p = r.cli("mount", r.space, str(second), *TEST_MOUNT_OPTS, "-o", "sync_interval=2")
        assert b"read-only: you are a reader in this space" in p.stderr, p.stderr
        assert (second / "welcome.txt").read_bytes() == b"from the owner"
        with pytest.raises(OSError) as caught:
            open(second / "x.txt", "w")
        assert caught.value.errno == errno.EROFS
        r.cli("unmount", str(second))
    finally:
        if os.path.ismount(second):
            os.system(f"fusermount3 -uz {second}")
        r.mount(*SYNC_OPTS)
