"""Sync over real TCP on loopback, in one process: a provider node and devices running the sync engine.

Every connection goes through TLS 1.3, the session handshake and the wire messages, exactly as between
processes; only the mount is absent (tests/fuse/test_7_sync.py runs the three-process version)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from anysyncfs.core import keys
from anysyncfs.core.address import PeerAddress
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.net.runner import Runner
from anysyncfs.net.sync import SpaceSync
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.files import put_file, read_file, resolve
from anysyncfs.replica.home import Unlocked
from tests.conftest import eventually

pytestmark = pytest.mark.trio


@asynccontextmanager
async def running_node(path: Path, **backend: Any) -> AsyncIterator[tuple[Node, PeerAddress]]:
    node = Node(path, **backend)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, "127.0.0.1", 0)
            yield node, node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()
    finally:
        node.close()


def engine(replica: Replica, **kw: object) -> SpaceSync:
    return SpaceSync(replica, Endpoint(replica.identity), Runner(), **kw)  # type: ignore[arg-type]


def content(replica: Replica, path: str) -> bytes:
    return b"".join(read_file(replica, resolve(replica.tree, path)))


async def test_second_device_gets_the_whole_space_through_a_node(tmp_path: Path, make_home,
                                                                 node_backend: dict[str, Any]) -> None:
    phrase = keys.generate_phrase()
    a_home = make_home("a", phrase)
    b_home = make_home("b", phrase)
    a = create_space(a_home, "docs")
    big = os.urandom(4_500_000)  # > max chunk (4 MiB): always two blobs or more
    put_file(a, "/notes/hello.txt", b"hello from a")
    put_file(a, "/big.bin", big)
    async with running_node(tmp_path / "node", **node_backend) as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        report = await engine(a).sync_once()
        assert report.reached == 1 and report.errors == [] and report.blobs_uploaded >= 2
        assert a.store.count_pending_uploads(a.space_id) == 0
        # b does not hold the space yet: it knows only the ID and the node
        b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
        full = await _sync_space(b_home, a.space_id, "docs", True, None, 60.0)
        assert full.reached == 1, full.errors
        b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
        assert b.tree.canonical() == a.tree.canonical()
        assert content(b, "/notes/hello.txt") == b"hello from a"
        assert content(b, "/big.bin") == big


async def test_live_push_and_lazy_blob_fetch(tmp_path: Path, make_home, node_backend: dict[str, Any]) -> None:
    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    put_file(a, "/first.txt", b"one")
    async with running_node(tmp_path / "node", **node_backend) as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await engine(a).sync_once()
        b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
        await _sync_space(b_home, a.space_id, "docs", False, None, 60.0)  # metadata only
        b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
        sa, sb = engine(a, interval=60.0), engine(b, interval=60.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sa.run_forever)
            nursery.start_soon(sb.run_forever)
            await eventually(lambda: any(p.connected for p in sb.peers.values()), "b connected")
            await eventually(lambda: any(p.connected for p in sa.peers.values()), "a connected")
            # a commits (the engine sees the heads move), the node announces, b fetches: no interval passes
            await trio.to_thread.run_sync(sa.run.lock.acquire)
            try:
                put_file(a, "/second.txt", b"two" * 1000)
            finally:
                sa.run.lock.release()
            await eventually(lambda: b.heads == a.heads, "b has a's new change")
            node_ = resolve(b.tree, "/second.txt")
            assert not b.blobs.has(node_.content.extents[0].chunk.blob) if node_.content.extents else True
            # content is fetched on demand through the engine
            for ref_blob in [e.chunk.blob for e in node_.content.extents]:
                await sb.fetch_blob(ref_blob, timeout=10)
            assert content(b, "/second.txt") == b"two" * 1000
            nursery.cancel_scope.cancel()


async def test_node_keeps_data_across_restarts_and_holds_no_plaintext(tmp_path: Path, make_home,
                                                                      node_backend: dict[str, Any]) -> None:
    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    secret_name = "very-secret-filename-7f3a.txt"
    secret = b"plaintext-marker-" + os.urandom(8).hex().encode() + b"-end" * 2000  # > INLINE_MAX: in a blob
    put_file(a, f"/{secret_name}", secret)
    data = tmp_path / "node"
    async with running_node(data, **node_backend) as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await engine(a).sync_once()
    # restart the node on another port: its identity and data persist
    async with running_node(data, **node_backend) as (node, addr2):
        assert addr2.device == addr.device
        b_home.home.store().add_peer(a.space_id, str(addr2), addr2.device)
        full = await _sync_space(b_home, a.space_id, "docs", True, None, 60.0)
        assert full.reached == 1, full.errors
    b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
    assert content(b, f"/{secret_name}") == secret
    for f in data.rglob("*"):
        if f.is_file():
            raw = f.read_bytes()
            assert secret_name.encode() not in raw, f
            assert b"plaintext-marker-" not in raw, f
    blobs = node_backend.get("blobs")
    if blobs is not None:  # the bucket holds ciphertext only, too
        stored = blobs.ids_modified_before(2**62)
        assert stored
        for blob_id in stored:
            raw = blobs.get(blob_id)
            assert secret_name.encode() not in raw and b"plaintext-marker-" not in raw


async def test_fsck_tells_remote_only_content_from_a_lost_only_copy(tmp_path: Path, make_home) -> None:
    from anysyncfs.replica import fsck

    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    put_file(a, "/uploaded.bin", os.urandom(200_000))
    async with running_node(tmp_path / "node") as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await engine(a).sync_once()
        b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
        await _sync_space(b_home, a.space_id, "docs", False, None, 60.0)  # metadata only: content stays remote
    report = fsck(b_home, a.space_id)
    assert report.problems == [] and report.remote >= 1, report
    # on a: a blob made here and never uploaded, whose file is gone, is the only copy lost
    put_file(a, "/local-only.bin", os.urandom(200_000))
    pending = a.store.pending_uploads(a.space_id, 10)
    assert pending
    a.blobs.delete(pending[0])
    report = fsck(a_home, a.space_id)
    assert any("no provider has confirmed" in p for p in report.problems), report


async def test_for_each_limited_bounds_concurrency_and_raises_the_first_error_unwrapped() -> None:
    from anysyncfs.errors import NetworkError
    from anysyncfs.net.sync import for_each_limited

    running = peak = 0
    seen: list[int] = []

    async def work(i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await trio.sleep(0.01)
        running -= 1
        seen.append(i)

    await for_each_limited(list(range(20)), work, 4)
    assert sorted(seen) == list(range(20)) and peak == 4

    async def failing(i: int) -> None:
        await trio.sleep(0.01 * (i % 3))
        if i == 5:
            raise NetworkError("peer went away")

    with pytest.raises(NetworkError, match="peer went away"):  # not an ExceptionGroup
        await for_each_limited(list(range(50)), failing, 4)


async def test_node_refuses_acl_records_from_strangers_and_new_spaces_from_unlisted_accounts(
    tmp_path: Path, make_home
) -> None:
    import time as _time

    from anysyncfs.core import acl, crypto
    from anysyncfs.net.connection import RemoteError
    from anysyncfs.protocol import messages as m

    owner_home, stranger_home = make_home("owner"), make_home("stranger")
    a = create_space(owner_home, "docs")
    async with running_node(tmp_path / "node") as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await engine(a).sync_once()
        stranger = stranger_home.identity
        # a well-signed invite by someone who is not an admin: the fold would drop it; the node must not store it
        # (built below the core's own check, which refuses to sign a record its author may not make)
        kind = acl.Invite(crypto.random_bytes(32), int(acl.Role.WRITER), 0, b"")
        junk = acl.encode_record(stranger.account, acl._body(stranger.account, a.acl, _time.time_ns() // 1000, kind))
        conn = await Endpoint(stranger).dial(addr)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.serve)
                with pytest.raises(RemoteError, match="only members"):
                    await conn.request(m.PutAcl(a.space_id, [junk]))
                nursery.cancel_scope.cancel()
        finally:
            await conn.abort("done")
        held = node.store.acl_records(a.space_id)
        assert acl.parse_record(junk).id not in {rid for rid, _ in held}
    # a node that serves only listed accounts refuses a new space from anyone else
    b = create_space(stranger_home, "theirs")
    node2 = Node(tmp_path / "node2", allowed_accounts=frozenset({owner_home.identity.account_id}))
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node2.serve, "127.0.0.1", 0)
            addr2 = node2.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            b.store.add_peer(b.space_id, str(addr2), addr2.device)
            report = await engine(b).sync_once()
            assert report.reached == 0 and any("only for the accounts" in e for e in report.errors), report
            assert not node2.store.spaces()
            nursery.cancel_scope.cancel()
    finally:
        node2.close()


async def test_acl_records_travel_by_range_reconciliation(tmp_path: Path, make_home) -> None:
    """A member's sync asks OpenSpace without the ACL: new records reach the other device only through
    reconciliation of ACL record IDs (GetAcl for what it lacks, PutAcl for what the node lacks)."""
    import time as _time

    from anysyncfs.core import acl

    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    async with running_node(tmp_path / "node") as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await engine(a).sync_once()
        b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
        await _sync_space(b_home, a.space_id, "docs", False, None, 60.0)
        b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
        _epoch, key = a.current_epoch_key()
        for role in (acl.Role.READER, acl.Role.WRITER):  # two new records on a
            raw, _ = acl.make_invite(a.identity.account, a.acl, role, 0, key, _time.time_ns() // 1000)
            a.add_acl_record(raw)
        assert b.acl.head != a.acl.head
        await engine(a).sync_once()  # the node lacks them: a sends them (PutAcl of reconciliation's "have")
        assert set(node.store.acl_records(a.space_id)) == set(a.store.acl_records(a.space_id))
        await engine(b).sync_once()  # b lacks them: GetAcl of reconciliation's "need"
        assert b.acl.head == a.acl.head and set(b.acl_ids()) == set(a.acl_ids())
