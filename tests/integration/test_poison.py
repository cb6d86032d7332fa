"""Issue 10, item 3: a correctly signed change whose payload does not open or decode is no poison pill.

A writer ("mallory", a real second account with the WRITER role) signs changes a keyless node must accept: one
encrypted under a random key with the right epoch number, one whose plaintext is not a payload, one whose ops the
tree refuses, and an honest one on top of them. They go to a real node over loopback TCP; afterwards the honest
devices still push and receive, their trees show everything else, and ``status`` / ``fsck`` (the CLI, as a
subprocess) report the unreadable changes. Before the fix the first sync that fetched them raised inside the batch
and, since sync fetched before it sent, no member could push anything again.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from anysyncfs.core import acl, crypto, ids, ops
from anysyncfs.core.change import Change, make_change
from anysyncfs.net.share import create_invite
from anysyncfs.protocol import messages as m
from anysyncfs.replica import Replica
from anysyncfs.replica.files import history, list_dir, new_id, put_file
from anysyncfs.clock import now_us
from tests.conftest import CLI
from tests.integration.test_sharing import join, put_changes, team
from tests.integration.test_sync import content, engine

pytestmark = pytest.mark.trio


def signed_change(author: Replica, payload: bytes, *, key: bytes | None = None,
                  parents: tuple[bytes, ...] | None = None, lamport: int | None = None) -> Change:
    """A change ``author`` signs with the core directly (Replica.commit only makes readable ones): the right ACL
    head and epoch number, ``payload`` sealed under ``key`` (default: the real epoch key)."""
    epoch, real_key = author.current_epoch_key()
    parents = author.heads if parents is None else parents
    return make_change(author.identity.account, author.identity.device_id, author.space_id, parents,
                       lamport if lamport is not None else author.dag.next_lamport(parents), now_us(),
                       author.acl.head, epoch, key if key is not None else real_key, payload)


def create_op(name: bytes, parent: bytes = ids.ROOT_NODE) -> ops.Create:
    return ops.Create(new_id(), new_id(), parent, name, ops.KIND_FILE, 0o644, 0, 0, time.time_ns())


def poison_chain(mallory: Replica) -> tuple[Change, Change, Change, Change]:
    """(unopenable, undecodable, refused ops, honest child), each the parent of the next."""
    unopenable = signed_change(mallory, ops.encode_payload([create_op(b"unopenable.txt")]), key=os.urandom(32))
    undecodable = signed_change(mallory, b"\xc1 this is not msgpack", parents=(unopenable.id,),
                                lamport=unopenable.header.lamport + 1)
    a_file = create_op(b"refused-parent.txt")
    refused = signed_change(mallory, ops.encode_payload([
        a_file,
        ops.Create(new_id(), new_id(), a_file.node, b"under-a-file", ops.KIND_FILE, 0o644, 0, 0, 1),  # not a dir
        ops.Create(new_id(), new_id(), ids.ROOT_NODE, b"..", ops.KIND_FILE, 0o644, 0, 0, 1),  # bad name
        ops.Create(new_id(), new_id(), ids.ROOT_NODE, b"a/b", ops.KIND_DIR, 0o755, 0, 0, 1),  # bad name
        ops.Rename(new_id(), ids.ROOT_NODE, b"ghost"),  # unknown entry
        ops.Unlink(new_id()),
        ops.Write(new_id(), ops.Content(size=3, inline=b"abc"), 1),  # unknown node
        ops.Link(ids.ROOT_NODE, new_id(), ids.ROOT_NODE, b"root-link"),  # hard link to a directory
        ops.SetAttr(new_id(), mode=0o777),
        create_op(b"mixed-ok.txt"),
    ]), parents=(undecodable.id,), lamport=undecodable.header.lamport + 1)
    child = signed_change(mallory, ops.encode_payload([create_op(b"after-poison.txt")]), parents=(refused.id,),
                          lamport=refused.header.lamport + 1)
    return unopenable, undecodable, refused, child


def names(replica: Replica) -> set[str]:
    return {item.name for item in list_dir(replica.tree, "/")}


def cli(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    from tests.conftest import PASSPHRASE, TEST_LOG2N

    env = dict(os.environ, ANYSYNCFS_HOME=str(home), ANYSYNCFS_PASSPHRASE=PASSPHRASE.decode(),
               ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N=str(TEST_LOG2N))
    env.pop("ANYSYNCFS_DEBUG", None)
    p = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)
    if ok:
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p


async def test_unreadable_changes_from_a_writer_stop_nobody(tmp_path: Path, make_home, caplog) -> None:
    async with team(tmp_path, make_home) as t:
        invite = await create_invite(t.owner, acl.Role.WRITER, 0)
        mallory = await join(make_home("mallory"), invite.ticket)
        for r in (t.owner, t.writer, t.reader):
            await engine(r).sync_once()
        assert mallory.role == acl.Role.WRITER
        chain = poison_chain(mallory)
        unopenable, undecodable, refused, child = chain
        # The keyless node cannot tell: it accepts all four (signed by a writer, at the right epoch).
        reply = await put_changes(mallory, t.addr, [c.raw for c in chain])
        assert isinstance(reply, m.Accepted) and reply.accepted == 4, reply

        # The owner has a change of its own waiting when it meets the poison: it is still pushed.
        put_file(t.owner, "/owner-before-sync.txt", b"written while the poison was on its way")
        owner_sync = engine(t.owner)
        report = await owner_sync.sync_once()
        assert report.errors == [] and report.fetched == 4 and report.sent == 1, report
        # what a mount publishes in its status file (60.7)
        assert owner_sync.status()["unreadable_changes"] == 2
        assert set(owner_sync.status()["unreadable_change_ids"]) == {
            ids.change_text(unopenable.id), ids.change_text(undecodable.id)}
        assert {"after-poison.txt", "mixed-ok.txt", "refused-parent.txt", "owner-before-sync.txt"} <= names(t.owner)
        assert "unopenable.txt" not in names(t.owner) and "under-a-file" not in names(t.owner)
        assert set(t.owner.unreadable_changes()) == {unopenable.id, undecodable.id}
        assert {c.id for c in chain} <= set(t.owner.change_ids())  # still DAG members
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "unreadable" in r.getMessage()]
        for cid in (unopenable.id, undecodable.id):  # one line per change and device (owner so far)
            assert len([w for w in warned if f"change {ids.change_text(cid)} " in w]) == 1, warned

        # Both honest writers keep pushing and receiving; the reader receives everything.
        for _ in range(2):
            for label, r in (("writer", t.writer), ("owner", t.owner)):
                put_file(r, f"/from-{label}-{now_us()}.txt", b"still syncing")
                report = await engine(r).sync_once()
                assert report.errors == [] and report.sent >= 1, report
        await engine(t.writer).sync_once()
        await engine(t.reader).sync_once()
        assert t.writer.heads == t.owner.heads == t.reader.heads
        assert t.writer.tree.canonical() == t.owner.tree.canonical() == t.reader.tree.canonical()
        assert content(t.writer, "/owner-before-sync.txt") == b"written while the poison was on its way"
        for r in (t.writer, t.reader):
            assert set(r.unreadable_changes()) == {unopenable.id, undecodable.id}
            assert "after-poison.txt" in names(r)

        # Refolds from scratch, past versions and history skip them too.
        t.owner.refold(revalidate=True)
        assert t.owner.tree.canonical() == t.writer.tree.canonical()
        past = t.owner.materialise([child.id])
        assert "after-poison.txt" in {e.name.decode() for e in past.entries.values() if e.live}
        assert history(t.owner, "/mixed-ok.txt")
        reopened = Replica(t.owner.unlocked, t.owner.store, t.owner.blobs, t.owner.space_id)
        assert reopened.tree.canonical() == t.owner.tree.canonical()

    # The user-facing commands, as subprocesses, on the owner's home.
    owner_home = t.owner.unlocked.home.root
    space = ids.space_text(t.owner.space_id)
    status = json.loads(cli(owner_home, "status", "--json").stdout)
    (entry,) = [s for s in status if s["space"] == space]
    assert entry["unreadable_changes"] == 2
    assert set(entry["unreadable_change_ids"]) == {ids.change_text(unopenable.id), ids.change_text(undecodable.id)}
    text = cli(owner_home, "status").stdout
    assert "unreadable changes (skipped): 2" in text and ids.change_text(unopenable.id) in text
    fsck = cli(owner_home, "fsck", space)
    assert fsck.stdout.count("warning: change") == 2, fsck.stdout
    assert "does not open" in fsck.stdout and "does not decode" in fsck.stdout
    assert ": OK" in fsck.stderr
    assert ids.change_text(child.id) in cli(owner_home, "history", space, "/after-poison.txt").stdout
    assert cli(owner_home, "cat", space, "/after-poison.txt", "--at", ids.change_text(child.id)).stdout == ""


@pytest.mark.parametrize("answer", ["forged-change", "refusal"])
async def test_a_failed_fetch_does_not_stop_sending(make_home, answer: str) -> None:
    """The provider answers GetChanges with a change whose signature is forged, or refuses it: the device still
    sends its own new change in the same round, then reports the failure (and still never applies the forgery)."""
    from hostile import HostileProvider, Refuse, SpaceCopy, flip, serving
    from test_hostile import add_peer, replicas

    a, b = replicas(make_home)
    theirs = put_file(a, "/theirs.txt", b"a change the provider will not deliver intact")
    copy = SpaceCopy.of(a)
    mine = put_file(b, "/mine.txt", b"made on b while the provider misbehaves")
    provider = HostileProvider(copy)
    if answer == "forged-change":
        forged = flip(theirs.raw, -10)  # the signature
        del copy.changes[theirs.id]
        copy.changes[crypto.blake3(forged)] = forged
    else:
        provider.tamper[m.GetChanges] = lambda body, honest: Refuse(m.ErrorCode.INTERNAL, "disk on fire")
    async with serving(provider) as address:
        add_peer(b, address)
        report = await engine(b).sync_once()
    assert report.reached == 0 and len(report.errors) == 1
    assert ("signature" if answer == "forged-change" else "disk on fire") in report.errors[0]
    (conn,) = provider.connections
    kinds = [type(r).__name__ for r in conn.requests]
    assert kinds.index("GetChanges") < kinds.index("PutChanges"), kinds  # fetched first, and still sent
    sent = [bytes(raw) for r in conn.requests if isinstance(r, m.PutChanges) for raw in r.changes]
    assert sent == [mine.raw]
    assert theirs.id not in b.change_ids() and "theirs.txt" not in names(b)
