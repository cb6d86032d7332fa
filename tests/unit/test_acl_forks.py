"""The ACL fork rule (docs/protocol.md 20.4) case by case, role reductions with last changes, the judging of
changes that cite a branch that lost a fork, and a provider's refusal of forks by non-admins."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from anysyncfs.core import acl, crypto
from anysyncfs.core.acl import (
    AclRecord,
    Invite,
    Join,
    Remove,
    Role,
    RoleChange,
    SealedFor,
    epoch_keys,
    fold,
    make_role_change,
    parse_record,
    wrap_previous_key,
)
from anysyncfs.core import ops
from anysyncfs.core.change import make_change
from anysyncfs.errors import DecodeError, PermissionDenied, Rejected
from anysyncfs.replica import Replica
from anysyncfs.replica.files import put_file
from anysyncfs.replica.ledger import ACL_HISTORY_CHANGED, ForkRefused
from tests.conftest import CLI
from tests.unit.test_acl import Space, key
from tests.unit.test_ledger import Node, join, new_home, node, owner  # noqa: F401 - fixtures


def ground(sp: Space, author: crypto.SigningKey, kind: acl.Kind, prev: bytes, below: bytes,
           co: crypto.SigningKey | None = None) -> AclRecord:
    """A record on ``prev`` whose ``created_us`` is ground until its ID sorts below ``below`` (the attack)."""
    for t in range(5000):
        rec = sp.forge(author, kind, co=co, prev=prev, created_us=sp.t + 1000 + t)
        if rec.id < below:
            return rec
    raise AssertionError("no lower ID found")


def forged_remove(sp: Space, author: crypto.SigningKey, prev: bytes, member: bytes, below: bytes) -> AclRecord:
    state = fold(sp.id, sp.records).tree_state(prev)
    assert state is not None
    new_key = bytes(32)
    sealed = [SealedFor(r, crypto.seal(r, new_key)) for r in state.key_recipients(member)]
    kind = Remove(member, state.epoch + 1, sealed, wrap_previous_key(sp.id, state.epoch + 1, new_key, bytes(32)), [])
    return ground(sp, author, kind, prev, below)


# ---------------------------------------------------------------------------------------------------- fork rule
def test_reground_join_of_a_removed_member_loses() -> None:
    """Issue 10's attack: the removed member re-signs its Join on the same prev with a lower ID."""
    sp = Space(seed=b"regrind")
    x = key(2)
    inv, ik = sp.invite(Role.WRITER)
    original = sp.join(x, inv, ik)
    sp.member(key(3), Role.READER)
    removal = sp.remove(x.public)
    attack = ground(sp, x, Join(inv.id, ik.public, crypto.seal(x.public, bytes(32))), original.prev, original.id,
                    co=ik)
    v = fold(sp.id, [*sp.records, attack])
    assert v.head == removal.id and v.position(original.id) is not None
    assert v.dropped[attack.id].startswith("lost a fork") and x.public not in v.current.members
    assert 1 not in epoch_keys(v, x, [ik])
    # With a fresh account and the used ticket: the same.
    fake = key(40)
    attack2 = ground(sp, fake, Join(inv.id, ik.public, crypto.seal(fake.public, bytes(32))), original.prev,
                     original.id, co=ik)
    v = fold(sp.id, [*sp.records, attack, attack2])
    assert v.head == removal.id and fake.public not in v.current.members
    # Under "lowest ID wins" both attacks would have taken the chain.
    assert attack.id < original.id and attack2.id < original.id


def test_invites_of_a_removed_admin_are_burned_on_every_branch() -> None:
    sp = Space(seed=b"burn")
    admin = key(2)
    sp.member(admin, Role.ADMIN)
    inv, ik = sp.invite(Role.WRITER, by=admin)
    sp.member(key(3), Role.WRITER)
    removal = sp.remove(admin.public)  # revokes the admin's outstanding invite
    fake = key(41)
    attack = ground(sp, fake, Join(inv.id, ik.public, crypto.seal(fake.public, bytes(32))), inv.id,
                    sp.records[sp.records.index(inv) + 1].id, co=ik)
    v = fold(sp.id, [*sp.records, attack])
    assert v.head == removal.id and fake.public not in v.current.members


def test_a_demoted_admin_cannot_fork_from_before_its_demotion() -> None:
    sp = Space(seed=b"demoted")
    admin, writer = key(2), key(3)
    sp.member(admin, Role.ADMIN)
    sp.member(writer, Role.WRITER)
    fork_at = sp.records[-1].id
    nxt = sp.member(key(4), Role.READER)  # the honest chain goes on
    demotion = sp.add(make_role_change(sp.owner, sp.view, admin.public, Role.WRITER, sp.now()))
    first_after = sp.records[sp.records.index(nxt) - 1]
    # The demoted admin, backdating: removes the writer and invites itself a helper, ground to sort first.
    attack = forged_remove(sp, admin, fork_at, writer.public, first_after.id)
    helper_key = key(50)
    attack2 = sp.forge(admin, Invite(helper_key.public, int(Role.WRITER), 0, b""), prev=attack.id)
    v = fold(sp.id, [*sp.records, attack, attack2])
    assert v.head == demotion.id and writer.public in v.current.members
    assert v.dropped[attack.id].startswith("lost a fork")


def test_a_removal_beats_a_concurrent_branch_without_one() -> None:
    """Honest concurrency: an admin's invite and the owner's removal on one head; the removal stands."""
    sp = Space(seed=b"concurrent")
    admin, writer = key(2), key(3)
    sp.member(admin, Role.ADMIN)
    sp.member(writer, Role.WRITER)
    head = sp.records[-1].id
    removal = sp.remove(writer.public)
    for n in range(6):  # whatever the IDs
        invite = ground(sp, admin, Invite(key(60 + n).public, int(Role.READER), 0, b""), head, removal.id) \
            if n % 2 else sp.forge(admin, Invite(key(60 + n).public, int(Role.READER), 0, b""), prev=head)
        v = fold(sp.id, [*sp.records, invite])
        assert v.head == removal.id, n


def test_one_invite_two_joins_the_branch_established_members_built_on_wins() -> None:
    """A leaked ticket used twice on one head: the join the owner built on wins, whatever the IDs."""
    sp = Space(seed=b"leak")
    inv, ik = sp.invite(Role.WRITER)
    honest = sp.join(key(2), inv, ik)
    built = sp.member(key(3), Role.READER)  # the owner's invite (and its join) on top of the honest join
    thief = key(42)
    stolen = ground(sp, thief, Join(inv.id, ik.public, crypto.seal(thief.public, bytes(32))), inv.id, honest.id,
                    co=ik)
    v = fold(sp.id, [*sp.records, stolen])
    assert v.head == built.id and thief.public not in v.current.members


def test_the_fold_is_still_a_function_of_the_set() -> None:
    sp = Space(seed=b"set")
    x = key(2)
    inv, ik = sp.invite(Role.ADMIN)
    original = sp.join(x, inv, ik)
    sp.member(key(3), Role.WRITER)
    sp.remove(x.public)
    attack = ground(sp, x, Join(inv.id, ik.public, crypto.seal(x.public, bytes(32))), original.prev, original.id,
                    co=ik)
    records = [*sp.records, attack]
    expected = fold(sp.id, records)
    rng = random.Random(5)
    for _ in range(20):
        rng.shuffle(records)
        v = fold(sp.id, records + records[:3])
        assert (v.chain, dict(v.dropped)) == (expected.chain, dict(expected.dropped))


# ---------------------------------------------------------------------------------------------------- role changes
def test_role_change_names_last_changes_only_when_it_takes_write_away() -> None:
    sp = Space(seed=b"roles")
    w = key(2)
    sp.member(w, Role.WRITER)
    last = [b"\x09" * 32, b"\x08" * 32]
    raw = make_role_change(sp.owner, sp.view, w.public, Role.READER, sp.now(), last)
    rec = sp.add(raw)
    assert isinstance(rec.kind, RoleChange) and rec.kind.last_changes == sorted(last)
    v = sp.view
    assert v.reductions_after(sp.records[-2].id, w.public) == [("demoted", frozenset(last))]
    assert v.removals_after(sp.records[-2].id, w.public) == []
    # promotions carry none; a record that names some anyway is refused by every replica
    rec2 = sp.add(make_role_change(sp.owner, sp.view, w.public, Role.WRITER, sp.now(), last))
    assert isinstance(rec2.kind, RoleChange) and rec2.kind.last_changes == []
    forged = sp.forge(sp.owner, RoleChange(w.public, int(Role.ADMIN), [b"\x01" * 32]))
    assert not sp.accepts(forged)
    with pytest.raises(DecodeError, match="not strictly ascending"):
        sp.forge(sp.owner, RoleChange(w.public, int(Role.READER), [b"\x02" * 32, b"\x01" * 32]))
    with pytest.raises(PermissionDenied, match="at most"):
        make_role_change(sp.owner, sp.view, w.public, Role.READER, sp.now(), [bytes([i, j]) * 16 for i in range(5)
                                                                               for j in range(256)])


# ---------------------------------------------------------------------------------------------------- replicas
def _fork_after(owner: Replica, tmp_path: Path) -> tuple[Replica, AclRecord, bytes]:
    """A writer W; then two admin records on one head: the owner's invite (made first, seen by W) and, concurrent,
    an admin's removal of another member that wins the fork. Returns (W, the losing invite, the winner's raw)."""
    admin = join(owner, new_home(tmp_path, "ada"), acl.Role.ADMIN)
    w = join(owner, new_home(tmp_path, "walt"), acl.Role.WRITER)
    victim = join(owner, new_home(tmp_path, "vic"), acl.Role.READER)
    for r in (admin, w):
        r.add_acl_records([raw for _rid, raw in owner.acl_raws()])
    _epoch, key_ = admin.current_epoch_key()
    removal, _ = acl.make_remove(admin.identity.account, admin.acl, victim.identity.account_id, key_, [], 0)
    lost, _ik = acl.make_invite(owner.identity.account, owner.acl, acl.Role.READER, 0, None, 0)
    owner.add_acl_record(lost)
    w.add_acl_record(lost)
    return w, parse_record(lost), removal


def test_a_change_accepted_before_a_reorganization_stays_accepted(tmp_path: Path, owner: Replica,
                                                                  node: Node) -> None:
    w, lost, removal = _fork_after(owner, tmp_path)
    change = put_file(w, "/w.txt", b"cites the invite that is about to lose")
    assert change.header.acl_head == lost.id
    assert owner.ingest_batch([change.raw])[0].status == "applied"
    ledger = node.adopt(owner)
    assert ledger.ingest_batch([change.raw])[0].status == "applied"
    for holder in (owner, ledger):
        holder.add_acl_records([removal])
        assert holder.acl.position(lost.id) is None and holder.acl.dropped[lost.id].startswith("lost a fork")
        assert change.id in holder.change_ids()
    assert owner.store.count_rejected_with_reason(owner.space_id, ACL_HISTORY_CHANGED) == 0
    # A new change may still cite it (same author, its epoch); the member the new chain removed may not.
    late = make_change(w.identity.account, w.identity.device_id, owner.space_id, (change.id,),
                       owner.dag.next_lamport((change.id,)), 1, lost.id, 0, owner.keys[0], ops.encode_payload([]))
    assert owner.ingest_batch([late.raw])[0].status == "applied"


def test_a_change_whose_author_the_new_chain_reduces_flips_loudly(tmp_path: Path, owner: Replica,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    admin = join(owner, new_home(tmp_path, "ada"), acl.Role.ADMIN)
    w = join(owner, new_home(tmp_path, "walt"), acl.Role.WRITER)
    for r in (admin, w):
        r.add_acl_records([raw for _rid, raw in owner.acl_raws()])
    # Concurrently: the owner invites someone (W sees it and writes citing it); the admin demotes W to reader.
    lost, _ik = acl.make_invite(owner.identity.account, owner.acl, acl.Role.READER, 0, None, 0)
    demotion = acl.make_role_change(admin.identity.account, admin.acl, w.identity.account_id, acl.Role.READER, 0)
    owner.add_acl_record(lost)
    w.add_acl_record(lost)
    change = put_file(w, "/w.txt", b"written while the demotion was on its way")
    assert owner.ingest_batch([change.raw])[0].status == "applied"
    with caplog.at_level("WARNING"):
        owner.add_acl_records([demotion])
    assert owner.acl.position(parse_record(demotion).id) is not None  # the demotion won the fork
    assert owner.rejected_ids() == {change.id}
    assert "ACL history changed: 1 accepted change(s)" in caplog.text
    assert owner.store.count_rejected_with_reason(owner.space_id, ACL_HISTORY_CHANGED) == 1
    # `anysyncfs status` (the CLI, as a user runs it) says so.
    env = dict(os.environ, ANYSYNCFS_HOME=str(owner.unlocked.home.root))
    out = subprocess.run([*CLI, "status", "--json"], env=env, capture_output=True, check=True, timeout=120)
    [row] = json.loads(out.stdout)
    assert row["rejected_after_acl_change"] == 1
    text = subprocess.run([*CLI, "status"], env=env, capture_output=True, check=True, timeout=120).stdout
    assert b"WARNING: ACL history changed: 1 change(s) accepted earlier are now rejected" in text


def test_a_provider_refuses_forks_by_non_admins(tmp_path: Path, owner: Replica, node: Node) -> None:
    ledger = node.adopt(owner)
    _epoch, key_ = owner.current_epoch_key()
    invite_raw, ik = acl.make_invite(owner.identity.account, owner.acl, acl.Role.READER, 0, key_, 0)
    invite_id = parse_record(invite_raw).id
    owner.add_acl_record(invite_raw)
    assert ledger.add_acl_records([invite_raw]) == 1
    join_raw = acl.make_join(key(77), ik, owner.acl, invite_id, key_, 0)  # no fork: taken
    assert ledger.add_acl_records([join_raw]) == 1
    # The same invite secret, another account, on the same previous record: a fork by a non-admin.
    stolen = acl.make_join(key(78), ik, owner.acl, invite_id, key_, 1)
    before = ledger.acl_ids()
    with pytest.raises(ForkRefused, match="forks the ACL"):
        ledger.add_acl_records([stolen])
    assert ledger.acl_ids() == before and isinstance(ForkRefused("x"), Rejected)
    # An admin's record on that same previous record is taken (the fork rule settles it) ...
    other_raw, _ = acl.make_invite(owner.identity.account, owner.acl, acl.Role.WRITER, 0, None, 1)
    assert parse_record(other_raw).prev == invite_id
    assert ledger.add_acl_records([other_raw]) == 1
    # ... and a record already held is no fork.
    assert ledger.add_acl_records([join_raw]) == 0
    # A device (not a provider) stores a fork whatever its author: its fold decides (one join of the two).
    assert owner.add_acl_records([join_raw, stolen]) == 2
    assert [owner.acl.position(parse_record(r).id) is None for r in (join_raw, stolen)].count(True) == 1


def test_a_lost_branch_grants_nothing() -> None:
    """A removed admin's losing fork promotes a reader and lets a fresh account join: neither may write citing
    it, while a writer that was a writer at the fork point may."""
    sp = Space(seed=b"grants")
    admin, reader, writer = key(2), key(3), key(4)
    sp.member(admin, Role.ADMIN)
    sp.member(reader, Role.READER)
    sp.member(writer, Role.WRITER)
    fork_at = sp.records[-1].id
    removal = sp.remove(admin.public)
    promote = ground(sp, admin, RoleChange(reader.public, int(Role.WRITER), []), fork_at, removal.id)
    v = fold(sp.id, [*sp.records, promote])
    assert v.head == removal.id and v.dropped[promote.id].startswith("lost a fork")
    assert v.tree_state(promote.id) is not None and v.fork_point(promote.id) == fork_at
    assert v.citable_state(promote.id, reader.public) is None  # promoted only on the lost branch
    assert v.citable_state(promote.id, admin.public) is None  # removed on the canonical chain
    assert v.citable_state(promote.id, key(9).public) is None  # never a member
    cited = v.citable_state(promote.id, writer.public)
    assert cited is not None and cited[1] == fork_at


def test_a_provider_refuses_forks_by_a_demoted_admin(tmp_path: Path, owner: Replica, node: Node) -> None:
    admin = join(owner, new_home(tmp_path, "ada"), acl.Role.ADMIN)
    admin.add_acl_records([raw for _rid, raw in owner.acl_raws()])
    ledger = node.adopt(owner)
    fork_at = owner.acl.head
    backdated, _ = acl.make_invite(admin.identity.account, admin.acl, acl.Role.READER, 0, None, 0)
    demotion = acl.make_role_change(owner.identity.account, owner.acl, admin.identity.account_id, Role.WRITER, 0)
    assert ledger.add_acl_records([demotion]) == 1
    assert parse_record(backdated).prev == fork_at
    with pytest.raises(ForkRefused, match="forks the ACL"):  # an admin at the fork point, but no more
        ledger.add_acl_records([backdated])
