"""A provider collects the blobs nothing references (issue 10, item 7, last bullet), over real TCP on loopback.

Before this, a member could fill a space with blobs no change uses (and a device that crashed between uploading
and committing left its blobs behind), and the node kept them for ever: it holds no keys, so it could not tell.
Now every change lists in clear the blobs it references; the node collects the rest after a grace period, and
devices refuse a change whose list does not match its payload."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from hostile import RecordLogs, connected

from anysyncfs.core import content as content_mod
from anysyncfs.core import crypto, ids, keys, ops, space
from anysyncfs.core.address import PeerAddress
from anysyncfs.core.change import make_change
from anysyncfs.net.connection import RemoteError, ServiceError
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.net.runner import Runner
from anysyncfs.net.sync import SpaceSync
from anysyncfs.protocol import messages as m
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.blob_gc import DEFAULT_GRACE_US
from anysyncfs.replica.files import put_file, read_file, resolve
from anysyncfs.replica.home import Unlocked
from anysyncfs.clock import now_us
from anysyncfs.replica.unreadable import REFS_LIE
from tests.conftest import CLI

pytestmark = pytest.mark.trio

# Small chunks, so a 1.5 MB file has more than 128 of them and its content is a manifest blob.
SMALL_CHUNKS = space.Chunking(min_size=4096, avg_size=4096, max_size=8192)


class Clock:
    """The node's clock: real time until a test sets it (nobody sleeps through a grace period)."""

    def __init__(self) -> None:
        self.set_us: int | None = None

    def __call__(self) -> int:
        return now_us() if self.set_us is None else self.set_us


class ChangeRefusingNode(Node):
    """A node that stores blobs but answers every PutChanges with an error (a provider that fails between the
    blobs of a round and its changes, as a dropped link or a full disk would)."""

    refuse = True

    async def handle(self, conn: object, body: object) -> object:
        if isinstance(body, m.PutChanges) and self.refuse:
            raise ServiceError(m.ErrorCode.UNAVAILABLE, "try again later")
        return await super().handle(conn, body)  # type: ignore[arg-type]


@asynccontextmanager
async def running_node(path: Path, clock: Callable[[], int], node_class: type[Node] = Node
                       ) -> AsyncIterator[tuple[Node, PeerAddress]]:
    node = node_class(path, clock=clock, gc_interval=0)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, "127.0.0.1", 0)
            yield node, node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()
    finally:
        node.close()


def engine(replica: Replica) -> SpaceSync:
    return SpaceSync(replica, Endpoint(replica.identity), Runner())


async def sync(replica: Replica) -> None:
    report = await engine(replica).sync_once()
    assert report.reached == 1 and report.errors == [], report.errors


async def put_blob(address: PeerAddress, who: Replica, data: bytes) -> bytes:
    """Upload ``data`` as a blob of ``who``'s space over a fresh connection of its device; returns the blob ID."""
    blob_id = crypto.blake3(data)
    async with connected(address, who.identity) as conn:
        assert isinstance(await conn.request(m.PutBlob(who.space_id, blob_id, data)), m.Ok)
    return blob_id


async def node_serves(address: PeerAddress, who: Replica, blob_id: bytes) -> bool:
    async with connected(address, who.identity) as conn:
        try:
            reply = await conn.request(m.GetBlob(who.space_id, blob_id))
        except RemoteError as e:
            assert e.code == m.ErrorCode.NOT_FOUND
            return False
    assert isinstance(reply, m.Blob) and crypto.blake3(reply.data) == blob_id
    return True


def listed_blobs(replica: Replica) -> set[bytes]:
    """Every blob any accepted change of the space lists: the current files' and those of older versions."""
    return {b for change, _ops in replica.payloads() for b in change.header.blob_refs}


def file_bytes(replica: Replica, path: str) -> bytes:
    return b"".join(read_file(replica, resolve(replica.tree, path)))


async def test_node_collects_junk_and_aborted_uploads_and_keeps_every_referenced_blob(
        tmp_path: Path, make_home: Callable[..., Unlocked]) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs", chunking=SMALL_CHUNKS)
    small, chunked, big = b"inline bytes", os.urandom(40_000), os.urandom(1_500_000)
    put_file(a, "/small.txt", small)
    put_file(a, "/chunked.bin", chunked)
    put_file(a, "/big.bin", big)  # more than 128 chunks: a manifest blob listing them
    assert resolve(a.tree, "/big.bin").content.manifest is not None
    first_version = os.urandom(30_000)
    put_file(a, "/edited.bin", first_version)
    old_heads = a.heads
    put_file(a, "/edited.bin", os.urandom(30_000))  # the first version's chunks live on only in the history
    referenced = listed_blobs(a)
    assert len(referenced) > 150

    clock = Clock()
    async with running_node(tmp_path / "node", clock) as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await sync(a)
        ledger = await node.run(node._ledger, a.space_id)
        assert referenced <= set(ledger.blob_ids())

        # The attack: a member fills the space with blobs that no change uses ...
        junk = [await put_blob(addr, a, os.urandom(50_000)) for _ in range(5)]
        # ... and a commit that never happens: its blobs were uploaded by the sync engine, then the device died.
        aborted = content_mod.build_content(os.urandom(60_000), a.chunk_key_base(), a.store_blob, a.chunk_params)
        aborted_blobs = [e.chunk.blob for e in aborted.extents]
        await sync(a)
        assert a.store.count_pending_uploads(a.space_id) == 0
        garbage = junk + aborted_blobs
        garbage_bytes = sum(len(node.blobs.get(b)) for b in garbage)
        for blob_id in garbage:
            assert await node_serves(addr, a, blob_id)

        # Within the grace period nothing is collected: a device uploads blobs before the change that uses them.
        collected = await node.collect_garbage()
        assert collected.unlinked == 0 and collected.files_deleted == 0
        await trio.sleep(0.01)
        middle = now_us()
        await trio.sleep(0.01)
        fresh = await put_blob(addr, a, os.urandom(10_000))  # uploaded after everything above
        before = ledger.usage()

        clock.set_us = middle + DEFAULT_GRACE_US  # a day later for what came before `middle`, not for `fresh`
        collected = await node.collect_garbage()

        assert collected.unlinked == len(garbage)
        assert collected.unlinked_bytes == garbage_bytes
        assert collected.files_deleted == len(garbage) and collected.file_bytes == garbage_bytes
        after = ledger.usage()
        assert after.blob_bytes == before.blob_bytes - garbage_bytes  # the quota no longer counts them
        assert after.blobs == before.blobs - len(garbage)
        for blob_id in garbage:
            assert not node.blobs.path_of(blob_id).exists()
            assert not await node_serves(addr, a, blob_id)
        assert await node_serves(addr, a, fresh)  # still within its grace period
        for blob_id in referenced:  # current files and older versions alike
            assert node.blobs.path_of(blob_id).exists()
        assert referenced | {fresh} == set(ledger.blob_ids())

        # A second device reads every file, and the old version, through the node alone.
        b_home = make_home("b", phrase)
        b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
        full = await _sync_space(b_home, a.space_id, "docs", True, None, 60.0)
        assert full.reached == 1, full.errors
        b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
        assert b.tree.canonical() == a.tree.canonical()
        assert file_bytes(b, "/small.txt") == small
        assert file_bytes(b, "/chunked.bin") == chunked
        assert file_bytes(b, "/big.bin") == big
        old = b.materialise(old_heads)
        old_content = old.nodes[resolve(old, "/edited.bin").id].content
        for ext in old_content.extents:
            assert await node_serves(addr, b, ext.chunk.blob)

        # Collecting again finds nothing more; a collected blob can be uploaded again (it is simply new again).
        assert (await node.collect_garbage()).unlinked == 0
        reuploaded = await put_blob(addr, a, node_copy := os.urandom(1000))
        assert await node_serves(addr, a, reuploaded) and node.blobs.get(reuploaded) == node_copy


def lying_change(author: Replica, parents: tuple[bytes, ...], lamport: int, payload_ops: list[ops.Op],
                 listed: list[bytes]) -> bytes:
    """A change correctly signed by a writer whose header lists ``listed``, whatever its payload references."""
    epoch, key = author.current_epoch_key()
    return make_change(author.identity.account, author.identity.device_id, author.space_id, parents, lamport,
                       now_us(), author.acl.head, epoch, key, ops.encode_payload(payload_ops),
                       blob_refs=listed).raw


def create_op(name: bytes) -> ops.Create:
    return ops.Create(os.urandom(16), os.urandom(16), ids.ROOT_NODE, name, ops.KIND_FILE, 0o644, 0, 0,
                      time.time_ns())


async def test_a_change_whose_blob_list_lies_is_not_applied_by_devices(
        tmp_path: Path, make_home: Callable[..., Unlocked]) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs", chunking=SMALL_CHUNKS)
    put_file(a, "/honest.txt", b"honest")
    clock = Clock()
    async with running_node(tmp_path / "node", clock) as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await sync(a)
        data = os.urandom(20_000)
        hidden = content_mod.build_content(data, a.chunk_key_base(), a.store_blob, a.chunk_params)
        junk = os.urandom(5000)
        await sync(a)  # uploads hidden's chunks
        junk_id = await put_blob(addr, a, junk)

        # 1: the payload writes a file of chunks the header does not list (the node would collect them);
        # 2: the header lists a junk blob the payload does not use (the node would keep it for ever);
        # 3: an honest change on top of both.
        under_op = create_op(b"under")
        under = lying_change(a, a.heads, a.dag.next_lamport(a.heads),
                             [under_op, ops.Write(under_op.node, hidden, time.time_ns())], [])
        lamport = a.dag.next_lamport(a.heads) + 1
        over = lying_change(a, (crypto.blake3(under),), lamport, [create_op(b"over")], [junk_id])
        after = lying_change(a, (crypto.blake3(over),), lamport + 1, [create_op(b"after")], [])
        async with connected(addr, a.identity) as conn:
            reply = await conn.request(m.PutChanges(a.space_id, [under, over, after]))
        assert isinstance(reply, m.Accepted) and reply.accepted == 3  # keyless: the node cannot tell

        b_home = make_home("b", phrase)
        b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
        with RecordLogs() as logs:
            full = await _sync_space(b_home, a.space_id, "docs", True, None, 60.0)
            assert full.reached == 1, full.errors  # the batch went through: nothing failed
            await sync(a)  # the author's other device refuses them too
        b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
        for device in (a, b):
            names = {e.name for e in device.tree.entries.values() if e.live}
            assert b"honest.txt" in names and b"after" in names
            assert b"under" not in names and b"over" not in names
            assert crypto.blake3(under) in device.dag and crypto.blake3(over) in device.dag  # stored, not shown
            # marked unreadable (the poison path: kept in the DAG, skipped by the fold, reported by status/fsck)
            assert {crypto.blake3(under), crypto.blake3(over)} <= set(device.unreadable.marks)
            assert all(device.unreadable.marks[c] == REFS_LIE for c in (crypto.blake3(under), crypto.blake3(over)))
        warnings = logs.at_least(logging.WARNING)
        assert sum(REFS_LIE in w for w in warnings) >= 2


async def test_cli_node_gc_collects_and_refuses_while_a_node_serves(
        tmp_path: Path, make_home: Callable[..., Unlocked], cli_env: dict[str, str]) -> None:
    a = create_space(make_home("a"), "docs", chunking=SMALL_CHUNKS)
    put_file(a, "/kept.bin", os.urandom(30_000))
    data = tmp_path / "node"
    async with running_node(data, Clock()) as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        await sync(a)
        junk = [await put_blob(addr, a, os.urandom(4000)) for _ in range(3)]
        node_blobs = node.blobs
    referenced = listed_blobs(a)

    async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process([*CLI, *args], env=cli_env, capture_stdout=True, capture_stderr=True,
                                      check=False)

    p = await cli("node", "gc", "--data", str(data))  # the default grace: everything is younger than a day
    assert p.returncode == 0, p.stderr
    assert b"unlinked 0 blob(s)" in p.stdout and all(node_blobs.has(j) for j in junk)

    p = await cli("node", "gc", "--data", str(data), "--gc-grace", "0")
    assert p.returncode == 0, p.stderr
    assert b"unlinked 3 blob(s) (12000 bytes)" in p.stdout and b"deleted 3 file(s)" in p.stdout
    assert not any(node_blobs.has(j) for j in junk)
    assert all(node_blobs.has(r) for r in referenced)

    # A serving node holds the data directory: a second process may not collect under it.
    serve = await trio.lowlevel.open_process(
        [*CLI, "node", "serve", "--data", str(data), "--listen", "127.0.0.1:0"], env=cli_env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert serve.stdout is not None
        with trio.fail_after(60):
            line = await serve.stdout.receive_some(4096)
        assert line.startswith(b"anysync://"), line
        p = await cli("node", "gc", "--data", str(data), "--gc-grace", "0")
        assert p.returncode != 0 and b"in use by another anysyncfs node" in p.stderr
    finally:
        serve.terminate()
        with trio.fail_after(30):
            await serve.wait()



async def test_uploads_count_as_safe_only_once_their_changes_reached_the_provider(
        tmp_path: Path, make_home: Callable[..., Unlocked]) -> None:
    """A provider collects blobs no change references: a device whose round uploaded the blobs but not the change
    (the provider failed in between) must keep them queued and never evict them, or a later collection could
    lose the only copy. Once a round sends the changes too, they are confirmed."""
    a = create_space(make_home("a"), "docs", chunking=SMALL_CHUNKS)
    put_file(a, "/f.bin", os.urandom(50_000))
    queued = set(a.store.pending_uploads(a.space_id, 1000))
    assert queued
    async with running_node(tmp_path / "node", Clock(), ChangeRefusingNode) as (node, addr):
        a.store.add_peer(a.space_id, str(addr), addr.device)
        report = await engine(a).sync_once()
        assert report.errors, "the provider refused the changes"
        assert all(node.blobs.has(b) for b in queued)  # the blobs did reach it
        assert set(a.store.pending_uploads(a.space_id, 1000)) == queued  # still queued: uploaded again next time
        assert not any(a.store.is_remote_confirmed(b) for b in queued)  # so never evicted
        node.refuse = False  # type: ignore[attr-defined]
        await sync(a)
    assert a.store.pending_uploads(a.space_id, 1000) == []
    assert all(a.store.is_remote_confirmed(b) for b in queued)
