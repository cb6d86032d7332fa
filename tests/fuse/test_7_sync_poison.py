"""Issue 10, item 3, through real mounts: a signed change whose payload does not open or decode, pushed to a real
node by a third device of the account, does not stop two mounted devices syncing through that node; the mounts
log it once, ``status`` reports it, and the history folder shows the version at that change.

Before the fix every mount's sync round raised inside the batch (and never sent anything again), and the history
folder of that change was an I/O error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio

from anysyncfs.core import ids, ops
from anysyncfs.core.address import parse_address
from anysyncfs.core.change import Change, make_change
from anysyncfs.fs.virtual import change_dir_name, day_name
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.share import with_connection
from anysyncfs.protocol import messages as m
from anysyncfs.replica.files import new_id
from anysyncfs.replica.home import Home
from anysyncfs.clock import now_us
from anysyncfs.replica.replica import open_replica
from tests.conftest import PASSPHRASE, TEST_LOG2N, free_port

from .conftest import Mount, SyncNode, _check_fuse, cluster_cleanup, eventually, init_device
from .conftest import write_synced as write

# Sync through the provider only: no listener, so no direct device-to-device path (tests/fuse/test_11_p2p.py).
SYNC_OPTS = ("-o", "sync_interval=2,fetch_timeout=20,listen=off")


def has_bytes(path: Path, data: bytes) -> bool:
    return path.read_bytes() == data


def push_poison(home: Path, space_id: str, address: str) -> list[Change]:
    """As the third device: sign a change sealed under a random key and one whose plaintext is not a payload, on
    the current heads, and put them on the node directly (a replica would never make them)."""
    h = Home(home, scrypt_log2_n=TEST_LOG2N)
    try:
        replica = open_replica(h.unlock(PASSPHRASE), space_id)
        epoch, key = replica.current_epoch_key()
        ident = replica.identity
        made: list[Change] = []
        parents, lamport = replica.heads, replica.dag.next_lamport(replica.heads)
        create = ops.Create(new_id(), new_id(), b"\0" * 16, b"never-shown.txt", ops.KIND_FILE, 0o644, 0, 0, 1)
        for payload, seal_key in ((ops.encode_payload([create]), os.urandom(32)), (b"\xc1garbage", key)):
            change = make_change(ident.account, ident.device_id, replica.space_id, parents, lamport, now_us(),
                                 replica.acl.head, epoch, seal_key, payload)
            made.append(change)
            parents, lamport = (change.id,), lamport + 1

        async def put() -> object:
            return await with_connection(Endpoint(ident), parse_address(address),
                                         lambda conn: conn.request(m.PutChanges(replica.space_id,
                                                                                [c.raw for c in made])))

        reply = trio.run(put)
        assert isinstance(reply, m.Accepted) and reply.accepted == 2, reply
        return made
    finally:
        h.close()


def test_a_poison_change_does_not_stop_two_mounts(tmp_path: Path) -> None:
    _check_fuse()
    node = SyncNode(tmp_path / "node", free_port())
    a, b, c = Mount(tmp_path / "a"), Mount(tmp_path / "b"), Mount(tmp_path / "c")
    with cluster_cleanup(node, a, b):
        address = node.start()
        phrase = init_device(a, "device-a")
        space_id = a.cli("space", "create", a.space).stdout.decode().strip()
        a.cli("space", "add-peer", a.space, address)
        a.mount(*SYNC_OPTS)
        for other, name in ((b, "device-b"), (c, "device-c")):
            init_device(other, name, phrase)
            other.cli("space", "add-peer", space_id, address)
        write(a.path("before.txt"), b"before the poison\n")
        b.cli("sync", space_id, "--name", b.space)
        b.mount(*SYNC_OPTS)
        eventually(lambda: has_bytes(b.path("before.txt"), b"before the poison\n"), "before.txt on B")

        c.cli("sync", space_id, "--name", c.space)
        for mount in (a, b):
            mount.expect_log(r"is unreadable \(payload does not (open|decode)")
        unopenable, undecodable = push_poison(c.home, space_id, address)

        # Both mounts go on pushing and receiving through the node.
        write(a.path("after-a.txt"), b"written on A after the poison\n")
        eventually(lambda: has_bytes(b.path("after-a.txt"), b"written on A after the poison\n"), "after-a on B")
        write(b.path("after-b.txt"), b"written on B after the poison\n")
        eventually(lambda: has_bytes(a.path("after-b.txt"), b"written on B after the poison\n"), "after-b on A")
        for mount in (a, b):
            assert "never-shown.txt" not in os.listdir(mount.mountpoint)
            status = json.loads(mount.cli("status", mount.space, "--json").stdout)[0]
            assert status["unreadable_changes"] == 2, status
            status_file = mount.home / "run" / f"{space_id}.status.json"  # what the mount publishes (60.7)
            eventually(lambda f=status_file: json.loads(f.read_text())["unreadable_changes"] == 2,
                       "the mount's status file shows the unreadable changes")
            # the version at the undecodable change: the tree as it was, without its (unreadable) ops
            folder = mount.path(".anysync", "history", day_name(undecodable.header.wall_us).decode(),
                                change_dir_name(undecodable.id, undecodable.header.wall_us).decode())
            assert sorted(os.listdir(folder)) == ["before.txt"]
        for mount in (a, b):
            log = mount.log_text()
            assert log.count(f"change {ids.change_text(unopenable.id)} ") == 1, log  # logged once
