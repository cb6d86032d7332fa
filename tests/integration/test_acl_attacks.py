"""Issue 10, items 1 and 2, as attacks through a real node over loopback TCP (and on the owner's device):

* a removed member re-signs its Join (with the invite secret of its used ticket) on the same previous record,
  ground so its ID sorts below the original Join: the node refuses it (from the member itself, and relayed by a
  member), and fed straight to the owner's device it loses the fork: the removal stands, the owner's change
  written after the removal stays accepted, and the removed member opens no newer epoch;
* the same with a fresh account and the used ticket;
* a writer demoted to reader signs a change citing an ACL head from before its demotion: node and owner refuse it;
* an honest join racing an admin's record at the same head is refused by the node as a fork and re-applied on the
  new head by ``join_space``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anysyncfs.core import acl, crypto
from anysyncfs.core.change import parse_change
from anysyncfs.net import share
from anysyncfs.net.connection import RemoteError
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.share import create_invite, join_space, remove_builder, role_builder, share_change
from anysyncfs.protocol import messages as m
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.files import put_file
from anysyncfs.clock import now_us
from tests.integration.test_sharing import fetch_all, forged_change, join, put_changes
from tests.integration.test_sync import engine, running_node


def reground_join(member: crypto.SigningKey, invite_key: crypto.SigningKey, original: acl.AclRecord,
                  epoch_key: bytes) -> acl.AclRecord:
    """The attack of issue 10: the Join re-signed on the original's previous record, ``created_us`` ground until
    the new record's ID sorts below the original's."""
    assert isinstance(original.kind, acl.Join)
    for t in range(10_000):
        kind = acl.Join(original.kind.invite_id, invite_key.public, crypto.seal(member.public, epoch_key))
        body = acl.RecordBody(original.space_id, original.prev, member.public, original.created_us + 1 + t, kind)
        rec = acl.parse_record(acl.encode_record(member, body, co_signer=invite_key))
        if rec.id < original.id:
            return rec
    raise AssertionError("could not grind a lower ID")


async def put_acl(replica: Replica, addr, raws: list[bytes]) -> object:  # type: ignore[no-untyped-def]
    return await share.with_connection(Endpoint(replica.identity), addr,
                                       lambda conn: conn.request(m.PutAcl(replica.space_id, raws)))


@pytest.mark.parametrize("joiner", ["member itself", "fresh account"])
async def test_reground_join_of_a_removed_member_is_refused_and_loses(tmp_path: Path, make_home,
                                                                       joiner: str) -> None:
    owner = create_space(make_home("owner"), "team")
    put_file(owner, "/readme.txt", b"from the owner")
    async with running_node(tmp_path / "node") as (node, addr):
        owner.store.add_peer(owner.space_id, str(addr), addr.device)
        writer_invite = await create_invite(owner, acl.Role.WRITER, 0)
        reader_invite = await create_invite(owner, acl.Role.READER, 0)
        writer = await join(make_home("writer"), writer_invite.ticket)
        reader = await join(make_home("reader"), reader_invite.ticket)
        put_file(writer, "/by-writer.txt", b"before the removal")
        await engine(writer).sync_once()
        await engine(owner).sync_once()
        epoch0_key = writer.current_epoch_key()[1]
        writer_id = writer.identity.account_id
        original = next(r for r in owner.acl.records
                        if isinstance(r.kind, acl.Join) and r.author == writer_id)

        await share_change(owner, remove_builder(writer_id), presync=True)
        assert owner.acl.current.epoch == 1 and owner.role_of(writer_id) is None
        after = put_file(owner, "/after-removal.txt", os.urandom(1000))
        assert after.header.epoch == 1
        assert (await engine(owner).sync_once()).errors == []

        # The attack: the invite secret of the writer's used ticket signs a Join on the same previous record.
        signer = writer.identity.account if joiner == "member itself" else crypto.SigningKey(os.urandom(32))
        attack = reground_join(signer, writer_invite.ticket.invite_key, original, epoch0_key)
        assert attack.id < original.id and attack.prev == original.prev

        # The node refuses it from the removed member (not a member, and the join does not make it one) ...
        with pytest.raises(RemoteError) as e:
            await put_acl(writer, addr, [attack.raw])
        assert e.value.code == m.ErrorCode.FORBIDDEN
        # ... and relayed by a member: a fork by a non-admin.
        with pytest.raises(RemoteError) as e:
            await put_acl(reader, addr, [attack.raw])
        assert e.value.code == m.ErrorCode.FORBIDDEN and "forks the ACL" in e.value.remote_message
        ledger = node._ledger(owner.space_id)
        assert attack.id not in ledger.acl_ids() and ledger.acl.current.epoch == 1

        # Fed straight to the owner's device, it loses the fork: nothing of the removal is undone.
        head = owner.acl.head
        owner.add_acl_record(attack.raw)
        assert attack.id in owner.acl_ids()
        assert owner.acl.head == head and owner.acl.position(attack.id) is None
        assert owner.acl.dropped[attack.id].startswith("lost a fork")
        assert owner.acl.current.epoch == 1 and owner.role_of(writer_id) is None
        assert owner.role_of(signer.public) is None
        assert after.id in owner.change_ids() and after.id not in owner.rejected_ids()
        assert put_file(owner, "/still-writing.txt", b"x").header.epoch == 1
        opened = acl.epoch_keys(owner.acl, signer, [writer_invite.ticket.invite_key])
        assert 1 not in opened, "the removed member opens the newest epoch"


async def test_demoted_writer_cannot_backdate_a_change(tmp_path: Path, make_home) -> None:
    owner = create_space(make_home("owner"), "team")
    put_file(owner, "/readme.txt", b"from the owner")
    async with running_node(tmp_path / "node") as (node, addr):
        owner.store.add_peer(owner.space_id, str(addr), addr.device)
        writer = await join(make_home("writer"), (await create_invite(owner, acl.Role.WRITER, 0)).ticket)
        early = put_file(writer, "/early.txt", b"written as a writer")
        await engine(writer).sync_once()
        writer = await fetch_all(writer)
        old_head, old_heads = writer.acl.head, writer.heads
        epoch, key = writer.current_epoch_key()
        writer_id = writer.identity.account_id

        raw, _push, errors = await share_change(owner, role_builder(writer_id, acl.Role.READER), presync=True)
        assert errors == []
        assert owner.role_of(writer_id) == acl.Role.READER
        await engine(writer).sync_once()
        assert writer.role == acl.Role.READER

        # The attack: a change citing the ACL head from before the demotion (same epoch: no key changed).
        late = forged_change(writer, old_head, epoch, key, old_heads, b"late.txt")
        with pytest.raises(RemoteError) as e:
            await put_changes(writer, addr, [late])
        assert e.value.code == m.ErrorCode.INVALID and "demoted member" in e.value.remote_message
        assert parse_change(late).id not in node._ledger(owner.space_id).change_ids()
        [result] = owner.ingest_batch([late])
        assert result.status == "rejected" and result.reason == "change by demoted member"
        assert early.id in owner.change_ids()  # what it wrote as a writer stays valid
        demotion = acl.parse_record(raw).kind  # because the demotion names it
        assert isinstance(demotion, acl.RoleChange) and demotion.last_changes == [early.id]


async def test_join_racing_an_admin_record_is_refused_then_reapplied(tmp_path: Path, make_home,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    owner = create_space(make_home("owner"), "team")
    async with running_node(tmp_path / "node") as (node, addr):
        owner.store.add_peer(owner.space_id, str(addr), addr.device)
        ticket = (await create_invite(owner, acl.Role.WRITER, 0)).ticket
        # The owner's next record (another invite), made on the same head the joiner is about to build on.
        racing, _ik = acl.make_invite(owner.identity.account, owner.acl, acl.Role.READER, 0, None, now_us())
        real_make_join = acl.make_join
        builds: list[bytes] = []

        def make_join_after_the_race(*args, **kw):  # type: ignore[no-untyped-def]
            raw = real_make_join(*args, **kw)
            if not builds:  # the admin's record reaches the node between the joiner's read and its write
                node._ledger(owner.space_id).add_acl_records([racing])
            builds.append(raw)
            return raw

        monkeypatch.setattr(share.acl_mod, "make_join", make_join_after_the_race)
        result = await join_space(make_home("joiner"), ticket, "team")
        assert len(builds) == 2, "the refused join was built again on the new head"
        first, second = (acl.parse_record(b) for b in builds)
        assert first.prev == acl.parse_record(racing).prev and second.prev == crypto.blake3(racing)
        ledger = node._ledger(owner.space_id)
        assert first.id not in ledger.acl_ids() and ledger.acl.position(second.id) is not None
        assert result.role == acl.Role.WRITER
