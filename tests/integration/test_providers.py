"""Many providers per space (net/providers.py, store/db_uploads.py): real nodes over loopback TCP, in one process.

tests/fuse/test_11_providers.py runs the whole story with node processes, a kill and the real mount; these check
the rules one at a time and fast."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from anysyncfs.core import acl, keys
from anysyncfs.core.change import parse_change
from anysyncfs.core.address import PeerAddress
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.net.providers import backlog
from anysyncfs.net.runner import Runner
from anysyncfs.net.share import create_invite, join_space
from anysyncfs.net.sync import SpaceSync
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.replica import open_replica
from anysyncfs.errors import NotFound
from anysyncfs.replica.files import put_file, read_file, resolve
from anysyncfs.store.db import Store
from tests.conftest import eventually, free_port

pytestmark = pytest.mark.trio


@asynccontextmanager
async def running_node(path: Path, port: int = 0) -> AsyncIterator[tuple[Node, PeerAddress]]:
    node = Node(path)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, "127.0.0.1", port)
            yield node, node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()
    finally:
        node.close()


def node_address(path: Path, port: int) -> PeerAddress:
    """The address a node at ``path`` will have on ``port`` (its identity is made now; it is not serving)."""
    node = Node(path)
    node.close()
    return node.address("127.0.0.1", port)


def engine(replica: Replica, **kw: object) -> SpaceSync:
    return SpaceSync(replica, Endpoint(replica.identity), Runner(), **kw)  # type: ignore[arg-type]


def space_refs(a: Replica) -> tuple[set[bytes], set[bytes]]:
    """(accepted change IDs, every blob those changes list), read independently of net/providers.py."""
    wanted: set[bytes] = set()
    for _cid, raw in a.store.iter_change_raws(a.space_id):
        wanted.update(parse_change(raw).header.blob_refs)
    return set(a.change_ids()), wanted


def holds_everything(node: Node, a: Replica) -> bool:
    """(blocking; call under the node's and the device's locks) The node holds every accepted change of ``a``'s
    space and every blob those changes list."""
    changes, blobs = space_refs(a)
    try:
        ledger = node._ledger(a.space_id)
    except NotFound:
        return False
    return set(ledger.change_ids()) == changes and blobs <= set(ledger.blob_ids()) and all(
        node.blobs.has(b) for b in blobs)


async def eventually_holds(node: Node, a: Replica, sync: SpaceSync, what: str) -> None:
    def check() -> bool:
        with sync.run.lock:
            return holds_everything(node, a)

    with trio.move_on_after(20.0):
        while not await node.run(check):
            await trio.sleep(0.05)
        return
    raise AssertionError(f"never happened: {what}")


async def test_a_blob_stays_queued_until_every_provider_has_it(tmp_path: Path, make_home) -> None:
    a = create_space(make_home("a"), "docs")
    put_file(a, "/big.bin", os.urandom(300_000))
    port2 = free_port()
    addr2 = node_address(tmp_path / "n2", port2)  # recorded, but not serving yet
    async with running_node(tmp_path / "n1") as (n1, addr1):
        a.store.add_peer(a.space_id, str(addr1), addr1.device)
        a.store.add_peer(a.space_id, str(addr2), addr2.device)
        report = await engine(a).sync_once(per_peer_timeout=10)
        assert report.reached == 1 and report.blobs_uploaded >= 1
        queued = a.store.count_pending_uploads(a.space_id)
        assert queued >= 1  # n1 has them, n2 not: still queued, and not evictable
        assert not any(a.store.is_remote_confirmed(b) for b in a.store.pending_uploads(a.space_id, 100))
        b1 = backlog(a.store, a.space_id, addr1.device, a.store.peers(a.space_id)[0].last_sync_us)
        b2 = backlog(a.store, a.space_id, addr2.device, None)
        assert (b1.changes, b1.blobs, b1.bytes) == (0, 0, 0)
        assert b2.changes == len(a.change_ids()) and b2.blobs == queued and b2.blob_bytes > 300_000
        async with running_node(tmp_path / "n2", port2) as (n2, _):
            report = await engine(a).sync_once(per_peer_timeout=10)
            assert report.reached == 2, report.errors
            assert report.blobs_uploaded == queued  # n1 was asked (HasBlobs) and sent nothing again
            assert a.store.count_pending_uploads(a.space_id) == 0
            assert holds_everything(n1, a) and holds_everything(n2, a)
        assert backlog(a.store, a.space_id, addr2.device, a.store.peers(a.space_id)[1].last_sync_us).bytes == 0


async def test_a_provider_added_later_is_backfilled_and_alone_serves_a_restore(tmp_path: Path, make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    files = {f"/f{i}.bin": os.urandom(50_000 + i) for i in range(6)}
    for path, data in files.items():
        put_file(a, path, data)
    async with running_node(tmp_path / "n1") as (n1, addr1):
        a.store.add_peer(a.space_id, str(addr1), addr1.device)
        await engine(a).sync_once()
        assert a.store.count_pending_uploads(a.space_id) == 0  # nothing queued: the queue cannot serve n3
        # a lost one blob since (evicted from its cache): the back-fill relays it from n1
        evicted = resolve(a.tree, "/f0.bin").content.extents[0].chunk.blob
        a.store.mark_evicted([evicted])
        a.blobs.delete(evicted)
        async with running_node(tmp_path / "n3") as (n3, addr3):
            a.store.add_peer(a.space_id, str(addr3), addr3.device)
            sync = engine(a, interval=60.0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.run_forever)
                await eventually_holds(n3, a, sync, "n3 back-filled with every change and blob")
                nursery.cancel_scope.cancel()
            assert a.blobs.has(evicted)  # relayed: fetched from n1 (verified) to be sent to n3
            assert holds_everything(n1, a)
            # A fresh device of the account restoring through n3 only gets every file.
            b_home = make_home("b", phrase)
            b_home.home.store().add_peer(a.space_id, str(addr3), addr3.device)
            full = await _sync_space(b_home, a.space_id, "docs", True, None, 30.0)
            assert full.reached == 1 and full.errors == [], full.errors
            b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
            for path, data in files.items():
                assert b"".join(read_file(b, resolve(b.tree, path))) == data
            # Another account joining with a ticket that names n3 alone gets every file too.
            invite = await create_invite(a, acl.Role.READER, 0)
            assert invite.push.reached == 2, invite.push
            c_home = make_home("c")
            joined = await join_space(c_home, dataclasses.replace(invite.ticket, peers=(addr3,)), "joined")
            assert joined.sync.errors == [] and [p.address for p in c_home.home.store().peers(a.space_id)] == [
                str(addr3)]
            full = await _sync_space(c_home, a.space_id, None, True, None, 30.0)
            assert full.reached == 1 and full.errors == [], full.errors
            c = open_replica(c_home, "joined")
            for path, data in files.items():
                assert b"".join(read_file(c, resolve(c.tree, path))) == data


def connections_of(node: Node, replica: Replica) -> int:
    return sum(1 for c in node.connections if c.peer is not None and c.peer.peer_device == replica.identity.device_id)


async def test_remove_peer_disconnects_a_running_engine_at_once(tmp_path: Path, make_home) -> None:
    a = create_space(make_home("a"), "docs")
    put_file(a, "/x", b"x")
    async with running_node(tmp_path / "n1") as (n1, addr1), running_node(tmp_path / "n2") as (n2, addr2):
        a.store.add_peer(a.space_id, str(addr1), addr1.device)
        a.store.add_peer(a.space_id, str(addr2), addr2.device)
        sync = engine(a, interval=60.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run_forever)
            await eventually(lambda: connections_of(n1, a) == 1 and connections_of(n2, a) == 1, "both connected")
            other = Store(str(a.store.path))  # `anysyncfs space remove-peer` runs in another process
            try:
                assert other.remove_peer(a.space_id, str(addr2))
            finally:
                other.close()
            await eventually(lambda: connections_of(n2, a) == 0, "n2 disconnected", timeout=2.0)
            assert str(addr2) not in sync.peers
            await trio.sleep(1.5)  # a dialling engine reconnects after 0.5 s
            assert connections_of(n2, a) == 0 and connections_of(n1, a) == 1
            nursery.cancel_scope.cancel()
