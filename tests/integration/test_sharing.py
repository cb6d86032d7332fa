"""Sharing a space between accounts (issue 5): invites and tickets, joining, roles and removal.

In-process over loopback TCP with a real node (like test_sync.py), through the functions behind the CLI
(anysyncfs/net/share.py); then the user-facing commands as subprocesses against a node subprocess. Reader mounts
(EROFS) are tested with the FUSE tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from anysyncfs.core import acl, blob, ids, ops
from anysyncfs.core.address import PeerAddress
from anysyncfs.core.change import make_change, open_payload, parse_change
from anysyncfs.core.ticket import Ticket, encode_ticket, parse_ticket
from anysyncfs.errors import AuthenticationFailed, IntegrityError, NotFound, PermissionDenied, UsageError
from anysyncfs.net import share
from anysyncfs.net.connection import RemoteError
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.net.share import create_invite, join_space, remove_builder, revoke_builder, role_builder, share_change
from anysyncfs.protocol import messages as m
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.files import new_id, put_file
from anysyncfs.replica.home import Unlocked
from anysyncfs.clock import now_us
from anysyncfs.replica.replica import open_replica
from anysyncfs.store.blobfiles import BlobFiles
from anysyncfs.store.db import Store
from tests.conftest import CLI
from tests.conftest import eventually
from tests.integration.test_sync import content, engine, running_node


@dataclass
class Team:
    node: Node
    addr: PeerAddress
    owner: Replica
    writer: Replica
    reader: Replica


async def join(home: Unlocked, ticket: Ticket, name: str = "team") -> Replica:
    # Through the text form, as a user passes it on.
    result = await join_space(home, parse_ticket(encode_ticket(ticket)), name)
    assert result.sync.errors == []
    return open_replica(home, name)


@asynccontextmanager
async def team(tmp_path: Path, make_home) -> AsyncIterator[Team]:
    """Owner (with a file), a writer and a reader, each its own account, joined through a node."""
    owner = create_space(make_home("owner"), "team")
    put_file(owner, "/readme.txt", b"from the owner " * 8000)
    async with running_node(tmp_path / "node") as (node, addr):
        owner.store.add_peer(owner.space_id, str(addr), addr.device)
        writer_invite = await create_invite(owner, acl.Role.WRITER, now_us() + 3600 * 10**6)
        reader_invite = await create_invite(owner, acl.Role.READER, 0)
        assert writer_invite.push.reached == 1 and writer_invite.sync_errors == []
        assert [str(p) for p in writer_invite.ticket.peers] == [str(addr)]
        writer = await join(make_home("writer"), writer_invite.ticket)
        reader = await join(make_home("reader"), reader_invite.ticket)
        for r in (owner, writer):  # everyone learns of every join
            await engine(r).sync_once()
        assert owner.acl.head == writer.acl.head == reader.acl.head
        yield Team(node, addr, owner, writer, reader)


async def fetch_all(replica: Replica) -> Replica:
    """Sync and fetch every blob of the tree (as ``anysyncfs sync`` does); the replica as that left it."""
    report = await _sync_space(replica.unlocked, replica.space_id, None, True, None, 60.0)
    assert report.reached == 1, report.errors
    return Replica(replica.unlocked, replica.store, replica.blobs, replica.space_id)


def forged_change(author: Replica, acl_head: bytes, epoch: int, key: bytes, parents: tuple[bytes, ...],
                  name: bytes) -> bytes:
    """A change signed by ``author`` made with the core directly (Replica.commit would refuse it)."""
    op = ops.Create(new_id(), new_id(), ids.ROOT_NODE, name, ops.KIND_FILE, 0o644, 0, 0, time.time_ns())
    change = make_change(author.identity.account, author.identity.device_id, author.space_id, parents,
                         author.dag.next_lamport(parents), now_us(), acl_head, epoch, key, ops.encode_payload([op]))
    return change.raw


async def put_changes(replica: Replica, addr: PeerAddress, raws: list[bytes]) -> object:
    """PutChanges over a fresh connection of ``replica``'s device."""
    return await share.with_connection(Endpoint(replica.identity), addr,
                                       lambda conn: conn.request(m.PutChanges(replica.space_id, raws)))


# ---------------------------------------------------------------------------------------------------- in-process
async def test_invite_join_write_read(tmp_path: Path, make_home) -> None:
    async with team(tmp_path, make_home) as t:
        assert t.writer.role == acl.Role.WRITER and t.reader.role == acl.Role.READER
        # joined with metadata only: the tree is there, the content comes later
        assert [i.name for i in _listing(t.reader)] == ["readme.txt"]
        data = os.urandom(300_000)
        put_file(t.writer, "/from-writer.bin", data)
        report = await engine(t.writer).sync_once()
        assert report.errors == [] and report.sent == 1
        reader = await fetch_all(t.reader)
        assert content(reader, "/from-writer.bin") == data
        assert content(reader, "/readme.txt") == b"from the owner " * 8000
        with pytest.raises(PermissionDenied, match="reader"):
            put_file(reader, "/nope.txt", b"x")
        t.owner = await fetch_all(t.owner)
        assert content(t.owner, "/from-writer.bin") == data
        assert set(t.owner.acl.current.members) == {
            t.owner.identity.account_id, t.writer.identity.account_id, t.reader.identity.account_id}
        invites = share.list_invites(t.owner)
        assert [i.status for i in invites] == ["used", "used"]
        assert {i.used_by for i in invites} == {t.writer.identity.account_id, t.reader.identity.account_id}


def _listing(replica: Replica) -> list:
    from anysyncfs.replica.files import list_dir

    return list_dir(replica.tree, "/")


async def test_forged_reader_change_is_rejected_by_node_and_writer(tmp_path: Path, make_home) -> None:
    async with team(tmp_path, make_home) as t:
        epoch, key = t.reader.current_epoch_key()  # readers hold the key: they can read, not write
        raw = forged_change(t.reader, t.reader.acl.head, epoch, key, t.reader.heads, b"forged.txt")
        with pytest.raises(RemoteError) as e:
            await put_changes(t.reader, t.addr, [raw])
        assert e.value.code == m.ErrorCode.INVALID and "reader may not write" in e.value.remote_message
        cid = parse_change(raw).id
        assert cid not in t.node._ledger(t.owner.space_id).change_ids()
        heads = t.writer.heads
        [result] = t.writer.ingest_batch([raw])
        assert result.status == "rejected" and result.reason == "reader may not write"
        assert t.writer.heads == heads and "forged.txt" not in [i.name for i in _listing(t.writer)]
        # a reader's engine never gets it accepted either: the writer syncs and still lacks it
        await engine(t.writer).sync_once()
        assert cid not in t.writer.change_ids()


async def test_removal_new_epoch_and_later_changes_rejected(tmp_path: Path, make_home) -> None:
    async with team(tmp_path, make_home) as t:
        before = b"written by the writer before removal " * 5000
        put_file(t.writer, "/before.txt", before)
        await engine(t.writer).sync_once()
        t.writer = await fetch_all(t.writer)
        t.owner = await fetch_all(t.owner)
        old_head, old_heads = t.writer.acl.head, t.writer.heads
        old_epoch, old_key = t.writer.current_epoch_key()
        writer_id = t.writer.identity.account_id
        reader_sync = engine(t.reader, interval=0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader_sync.run_forever)  # the reader keeps syncing through the removal
            await eventually(lambda: any(p.connected for p in reader_sync.peers.values()), "reader connected")

            record, push, errors = await share_change(t.owner, remove_builder(writer_id), presync=True)
            assert push.reached == 1 and errors == []
            assert t.owner.role_of(writer_id) is None and t.owner.acl.current.epoch == old_epoch + 1
            removal = acl.parse_record(record).kind
            assert isinstance(removal, acl.Remove) and set(removal.last_changes) <= set(t.owner.change_ids())
            assert writer_id not in [s.recipient for s in removal.sealed_keys]

            secret = os.urandom(100_000)  # one chunk, in a blob of its own
            change = put_file(t.owner, "/after-removal.bin", secret)
            assert change.header.epoch == old_epoch + 1
            await engine(t.owner).sync_once()
            new_blob = next(iter(_blob_ids(t.owner, "/after-removal.bin")))

            # The remaining reader keeps syncing: it gets the new epoch key and the new file.
            await eventually(lambda: change.id in t.reader.heads, "reader has the owner's new change")
            await trio.to_thread.run_sync(reader_sync.run.lock.acquire)
            try:
                assert t.reader.acl.current.epoch == old_epoch + 1
            finally:
                reader_sync.run.lock.release()
            await reader_sync.fetch_blob(new_blob, timeout=20)
            await trio.to_thread.run_sync(reader_sync.run.lock.acquire)
            try:
                assert content(t.reader, "/after-removal.bin") == secret
            finally:
                reader_sync.run.lock.release()
            nursery.cancel_scope.cancel()

        # The removed member is given every byte the node stores.
        node_dir = tmp_path / "node"
        store = Store(str(node_dir / "node.db"))
        try:
            acl_raws = [raw for _rid, raw in store.acl_records(t.owner.space_id)]
            node_changes = dict(store.iter_change_raws(t.owner.space_id))
        finally:
            store.close()
        node_blobs = BlobFiles(node_dir / "blobs")
        assert change.id in node_changes and node_blobs.has(new_blob)
        view = acl.fold(t.owner.space_id, [acl.parse_record(r) for r in acl_raws])
        held = dict(t.writer.unlocked.epoch_keys(t.owner.space_id))
        held.update(t.writer.keys)
        held.update(acl.epoch_keys(view, t.writer.identity.account))  # whatever the full ACL opens for it
        assert old_epoch + 1 not in held, "the removed member got the new epoch key"
        assert held[old_epoch] == old_key
        new_change = parse_change(node_changes[change.id])
        blob_bytes = node_blobs.get(new_blob)
        for key in held.values():
            with pytest.raises(AuthenticationFailed):
                open_payload(new_change, key)
            # Even knowing the plaintext, no key it holds yields the chunk key, nor the same blob.
            ref = ops.ChunkRef(new_blob, blob.chunk_key(blob.chunk_key_base(key), secret), len(secret))
            with pytest.raises(AuthenticationFailed):
                blob.open_chunk(blob_bytes, ref)
            assert blob.seal_chunk(secret, blob.chunk_key_base(key))[0].blob != new_blob
        # The member's earlier changes stay valid everywhere; what it could read before stays readable to it.
        assert content(t.owner, "/before.txt") == before
        assert content(t.writer, "/before.txt") == before
        assert content(t.writer, "/readme.txt") == b"from the owner " * 8000

        # A change it signs afterwards, citing its old ACL head, is rejected everywhere.
        late = forged_change(t.writer, old_head, old_epoch, old_key, old_heads, b"late.txt")
        async with running_node(node_dir) as (node, addr):
            with pytest.raises(RemoteError) as e:
                await put_changes(t.writer, addr, [late])
            assert e.value.code == m.ErrorCode.FORBIDDEN  # not a member any more
            with pytest.raises(RemoteError) as e:  # relayed by a member: refused on its merits
                await put_changes(t.reader, addr, [late])
            assert e.value.code == m.ErrorCode.INVALID and "removed member" in e.value.remote_message
            assert parse_change(late).id not in node._ledger(t.owner.space_id).change_ids()
        [result] = t.owner.ingest_batch([late])
        assert result.status == "rejected" and result.reason == "change by removed member"


def _blob_ids(replica: Replica, path: str) -> set[bytes]:
    from anysyncfs.replica.files import resolve

    node = resolve(replica.tree, path)
    return {e.chunk.blob for e in node.content.extents}


def test_removal_names_the_members_last_changes(tmp_path: Path) -> None:
    from tests.integration.test_replicas import invite_and_join, new_home

    owner = create_space(new_home(tmp_path, "owner"), "s")
    writer = invite_and_join(owner, new_home(tmp_path, "writer"), acl.Role.WRITER)
    writer_id = writer.identity.account_id
    assert share.last_changes_of(owner, writer_id) == []
    c1 = put_file(writer, "/one.txt", b"1")
    owner.ingest_batch([c1.raw])
    assert share.last_changes_of(owner, writer_id) == [c1.id]
    o1 = put_file(owner, "/by-owner.txt", b"o")  # a child of c1 by someone else: c1 stays the last
    writer.ingest_batch([o1.raw])
    assert share.last_changes_of(owner, writer_id) == [c1.id]
    # two concurrent changes of the writer (two of its devices, say): both are last
    epoch, key = writer.current_epoch_key()
    x = forged_change(writer, writer.acl.head, epoch, key, (o1.id,), b"x.txt")
    y = forged_change(writer, writer.acl.head, epoch, key, (o1.id,), b"y.txt")
    assert [r.status for r in owner.ingest_batch([x, y])] == ["applied", "applied"]
    last = share.last_changes_of(owner, writer_id)
    assert last == sorted([parse_change(x).id, parse_change(y).id])
    raw = remove_builder(writer_id)(owner)
    owner.add_acl_record(raw)
    assert owner.role_of(writer_id) is None
    assert {parse_change(x).id, parse_change(y).id, c1.id} <= set(owner.change_ids())  # all still valid
    late = forged_change(writer, writer.acl.head, epoch, key, (o1.id,), b"late.txt")
    [result] = owner.ingest_batch([late])
    assert result.status == "rejected" and result.reason == "change by removed member"


async def test_role_change_reaches_peers(tmp_path: Path, make_home) -> None:
    async with team(tmp_path, make_home) as t:
        reader_id = t.reader.identity.account_id
        with pytest.raises(PermissionDenied, match="only the owner or an admin"):
            await share_change(t.writer, role_builder(reader_id, acl.Role.WRITER))
        await share_change(t.owner, role_builder(reader_id, acl.Role.WRITER))
        await engine(t.reader).sync_once()  # the reader's engine picks up the role from the node
        assert t.reader.role == acl.Role.WRITER
        put_file(t.reader, "/now-a-writer.txt", b"yes")
        report = await engine(t.reader).sync_once()
        assert report.errors == [] and report.sent == 1
        with pytest.raises(NotFound, match="not a member"):
            await share_change(t.owner, role_builder(bytes(32), acl.Role.WRITER))


async def test_refused_invites(tmp_path: Path, make_home) -> None:
    owner = create_space(make_home("owner"), "team")
    refused: list[Unlocked] = []

    def newcomer(name: str) -> Unlocked:
        refused.append(make_home(name))
        return refused[-1]

    async with running_node(tmp_path / "node") as (_node, addr):
        owner.store.add_peer(owner.space_id, str(addr), addr.device)

        # expired: refused before anything is sent, and by the node when the ticket hides the expiry
        expired = await create_invite(owner, acl.Role.READER, now_us() - 10**6)
        with pytest.raises(PermissionDenied, match="expired"):
            await join_space(newcomer("late"), expired.ticket)
        lying = Ticket(owner.space_id, acl.Role.READER, expired.ticket.invite_secret, 0, expired.ticket.peers)
        with pytest.raises(PermissionDenied, match="invite has expired"):
            await join_space(newcomer("late2"), lying)

        # revoked
        revoked = await create_invite(owner, acl.Role.WRITER, 0)
        await share_change(owner, revoke_builder(revoked.invite_id))
        with pytest.raises(PermissionDenied, match="revoked"):
            await join_space(newcomer("unwanted"), revoked.ticket)
        with pytest.raises(UsageError, match="revoked already"):
            await share_change(owner, revoke_builder(revoked.invite_id))

        # used: an invite is good for one account
        once = await create_invite(owner, acl.Role.READER, 0)
        first_home = make_home("first")
        await join_space(first_home, once.ticket, "team")
        with pytest.raises(PermissionDenied, match="already used"):
            await join_space(newcomer("second"), once.ticket)

        # a ticket whose role was altered (with a fresh checksum) does not match its invite
        good = await create_invite(owner, acl.Role.READER, 0)
        altered = Ticket(owner.space_id, acl.Role.ADMIN, good.ticket.invite_secret, 0, good.ticket.peers)
        with pytest.raises(IntegrityError, match="altered"):
            await join_space(newcomer("greedy"), parse_ticket(encode_ticket(altered)))

        assert [i.status for i in share.list_invites(owner)] == ["expired", "revoked", "used", "outstanding"]
        # only the owner or an admin invites
        with pytest.raises(PermissionDenied, match="only the owner or an admin may invite"):
            await create_invite(open_replica(first_home, "team"), acl.Role.READER, 0)

        # not on the peer yet: stored on the owner's device only (last: it forks the owner's
        # ACL from the node's, which the fold settles by record ID)
        keys: list = []
        raw = share.invite_builder(acl.Role.READER, 0, keys.append)(owner)
        owner.add_acl_record(raw)
        unpushed = share.ticket_for(owner, keys[-1], acl.Role.READER, 0)
        with pytest.raises(NotFound, match="not known"):
            await join_space(newcomer("early"), unpushed)

        for home in refused:  # nothing half-joined
            assert home.home.store().spaces() == []


async def test_join_interrupted_after_the_peer_accepted_can_be_retried(tmp_path: Path, make_home,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    owner = create_space(make_home("owner"), "team")
    put_file(owner, "/a.txt", b"hello")
    async with running_node(tmp_path / "node") as (_node, addr):
        owner.store.add_peer(owner.space_id, str(addr), addr.device)
        invite = await create_invite(owner, acl.Role.WRITER, 0)
        joiner = make_home("joiner")

        def crash(*args: object) -> Replica:
            raise OSError("disk on fire")

        monkeypatch.setattr(share, "adopt_space", crash)
        with pytest.raises(OSError):
            await join_space(joiner, invite.ticket, "team")
        assert joiner.home.store().spaces() == []  # nothing half-joined is left behind
        monkeypatch.undo()
        result = await join_space(joiner, invite.ticket, "team")
        assert result.rejoined and result.role == acl.Role.WRITER
        assert [i.name for i in _listing(open_replica(joiner, "team"))] == ["a.txt"]
        with pytest.raises(UsageError, match="already holds"):
            await join_space(joiner, invite.ticket, "again")


# ---------------------------------------------------------------------------------------------------- CLI
class Cli:
    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.env, self.home = env, home

    def __call__(self, *args: str, input: bytes | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*CLI, "--home", str(self.home), *args], input=input.decode() if input else None,
                           env=self.env, capture_output=True, text=True, timeout=120, check=False)
        if ok and p.returncode != 0:
            raise AssertionError(f"{args} exited {p.returncode}: {p.stderr}")
        return p

    def account(self) -> str:
        return next(line.split()[1] for line in self("whoami").stdout.splitlines() if line.startswith("account"))


def error_line(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("anysyncfs: error: ")
    return line


@pytest.fixture
def node_process(tmp_path: Path, cli_env: dict[str, str]):  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([*CLI, "node", "serve", "--listen", "127.0.0.1:0", "--data", str(tmp_path / "node")],
                            env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("anysync://"), address
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_cli_invite_join_roles_remove(tmp_path: Path, cli_env: dict[str, str], node_process: str) -> None:
    owner, writer, reader, other = (Cli(cli_env, tmp_path / n) for n in ("o", "w", "r", "x"))
    for c in (owner, writer, reader, other):
        c("init", "--device-name", "dev")
    owner("space", "create", "team")
    owner("space", "add-peer", "team", node_process)
    owner("put", "team", "/hello.txt", input=b"hello " * 1000)

    p = owner("space", "invite", "team", "--role", "writer", "--expires", "2h")
    writer_ticket = p.stdout.strip()
    assert writer_ticket.startswith("anysync:") and "\n" not in writer_ticket
    assert "secret" in p.stderr and "sent to 1/1 peers" in p.stderr
    p = owner("space", "invite", "team", "--role", "reader", "--expires", "never", "--qr")
    reader_ticket, *qr = p.stdout.splitlines()
    assert len(qr) > 20 and any("█" in line for line in qr)

    # a damaged ticket: one character flipped
    pos = len(reader_ticket) // 2
    flipped = reader_ticket[:pos] + ("a" if reader_ticket[pos] != "a" else "b") + reader_ticket[pos + 1:]
    p = reader("join", flipped, ok=False)
    assert p.returncode == 2
    assert error_line(p) == ("anysyncfs: error: ticket is damaged (checksum mismatch): check you copied it whole")

    out = writer("join", writer_ticket, "--name", "team").stdout
    assert "joined sp-" in out and "as writer (local name team)" in out
    out = reader("join", "-", "--name", "team", input=reader_ticket.encode()).stdout  # from stdin
    assert "as reader" in out
    assert writer("ls", "team").stdout.split() == ["hello.txt"]

    writer("put", "team", "/w.txt", input=b"from the writer")
    writer("sync", "team")
    reader("sync", "team")
    assert reader("cat", "team", "/w.txt").stdout == "from the writer"
    assert reader("cat", "team", "/hello.txt").stdout == "hello " * 1000
    p = reader("put", "team", "/r.txt", input=b"no", ok=False)
    assert p.returncode == 10 and "read-only" in error_line(p)

    owner("sync", "team")
    listing = owner("space", "invites", "team").stdout
    assert listing.count("used by ac-") == 2

    # roles: only the owner/admins change them
    reader_id, writer_id = reader.account(), writer.account()
    p = writer("space", "role", "team", reader_id, "writer", ok=False)
    assert p.returncode == 10 and "only the owner or an admin" in error_line(p)
    assert "reader" in owner("space", "members", "team").stdout
    owner("space", "role", "team", reader_id, "writer")
    reader("sync", "team")
    reader("put", "team", "/r.txt", input=b"now I may")

    # revoked and expired invites
    p = owner("space", "invite", "team", "--role", "reader")
    ticket = p.stdout.strip()
    invite_id = next(w for w in p.stderr.split() if w.startswith("acl-"))
    owner("space", "revoke-invite", "team", invite_id)
    p = other("join", ticket, ok=False)
    assert p.returncode == 10 and "revoked" in error_line(p)
    ticket = owner("space", "invite", "team", "--role", "reader", "--expires", "1s").stdout.strip()
    time.sleep(1.5)
    p = other("join", ticket, ok=False)
    assert p.returncode == 10 and "expired" in error_line(p)
    assert "revoked" in owner("space", "invites", "team").stdout

    # removal: a new epoch; the removed member can no longer sync
    out = owner("space", "remove", "team", writer_id).stdout
    assert "removed " + writer_id in out and "key epoch 1" in out
    assert writer_id not in owner("space", "members", "team").stdout
    owner("put", "team", "/after.txt", input=b"not for the writer")
    owner("sync", "team")
    reader("sync", "team")
    assert reader("cat", "team", "/after.txt").stdout == "not for the writer"
    p = writer("sync", "team", ok=False)
    assert p.returncode != 0
    assert "after.txt" not in writer("ls", "team").stdout
    assert writer("cat", "team", "/hello.txt").stdout == "hello " * 1000  # still readable to it
