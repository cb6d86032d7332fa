"""ACL log: record round trips, the fold (determinism, fork rule, drops), permissions, invites and joins,
removals and key epochs, flipped bits, and the test vectors."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import crypto
from anysyncfs.core.acl import (
    ZERO_ID,
    AclRecord,
    AclView,
    Genesis,
    Invite,
    Join,
    Kind,
    RecordBody,
    Remove,
    RevokeInvite,
    Role,
    RoleChange,
    SealedFor,
    encode_record,
    epoch_keys,
    fold,
    make_genesis,
    make_invite,
    make_join,
    make_remove,
    make_revoke_invite,
    make_role_change,
    parse_record,
    unwrap_previous_key,
    wrap_previous_key,
)
from anysyncfs.core.space import make_space_header
from anysyncfs.errors import BadSignature, DecodeError, IdMismatch, NotFound, PermissionDenied

VECTOR_PATH = Path(__file__).resolve().parents[1] / "vectors" / "acl_record.json"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs


class DetRng:
    """Deterministic 'randomness' for reproducible records: BLAKE3 derive_key over a seed and a counter."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        self.counter += 1
        return crypto.derive_key("anysyncfs 2026 test rng", self.seed + self.counter.to_bytes(8, "big"), n)


def key(n: int) -> crypto.SigningKey:
    return crypto.SigningKey(bytes([n]) * 32)


class Space:
    """A space under construction: its records and the epoch keys as the owner knows them."""

    def __init__(self, seed: bytes = b"space", owner: crypto.SigningKey | None = None) -> None:
        self.rng = DetRng(seed)
        self.owner = owner or key(1)
        self.header = make_space_header(self.owner, T0, nonce=self.rng(32))
        self.id = crypto.blake3(self.header)
        self.keys = {0: self.rng(32)}
        self.records: list[AclRecord] = []
        self.add(make_genesis(self.owner, self.header, self.keys[0], T0, self.rng))
        self.t = T0

    @property
    def view(self) -> AclView:
        return fold(self.id, self.records)

    @property
    def key(self) -> bytes:
        return self.keys[max(self.keys)]

    def now(self) -> int:
        self.t += 1
        return self.t

    def add(self, raw: bytes) -> AclRecord:
        rec = parse_record(raw, crypto.blake3(raw))
        self.records.append(rec)
        return rec

    def invite(
        self, role: Role, by: crypto.SigningKey | None = None, expires_us: int = 0, offline: bool = True
    ) -> tuple[AclRecord, crypto.SigningKey]:
        raw, ik = make_invite(
            by or self.owner, self.view, role, expires_us, self.key if offline else None, self.now(), rng=self.rng
        )
        return self.add(raw), ik

    def join(self, joiner: crypto.SigningKey, invite: AclRecord, ik: crypto.SigningKey) -> AclRecord:
        return self.add(make_join(joiner, ik, self.view, invite.id, self.key, self.now(), rng=self.rng))

    def member(self, joiner: crypto.SigningKey, role: Role, by: crypto.SigningKey | None = None) -> AclRecord:
        inv, ik = self.invite(role, by)
        return self.join(joiner, inv, ik)

    def remove(self, member: bytes, by: crypto.SigningKey | None = None, last: Sequence[bytes] = ()) -> AclRecord:
        raw, new_key = make_remove(by or self.owner, self.view, member, self.key, last, self.now(), rng=self.rng)
        rec = self.add(raw)
        self.keys[max(self.keys) + 1] = new_key
        return rec

    def forge(
        self,
        author: crypto.SigningKey,
        kind: Kind,
        co: crypto.SigningKey | None = None,
        prev: bytes | None = None,
        created_us: int | None = None,
    ) -> AclRecord:
        """A correctly signed record built without the builders' permission checks."""
        view = self.view
        body = RecordBody(
            self.id, view.head if prev is None else prev, author.public, created_us or self.now(), kind
        )
        return parse_record(encode_record(author, body, co))

    def accepts(self, rec: AclRecord) -> bool:
        """Would the fold put ``rec`` on the chain (as the new head)?"""
        view = fold(self.id, [*self.records, rec])
        if view.head == rec.id:
            return True
        assert rec.id in view.dropped
        return False


# ---------------------------------------------------------------------------------------------------- records
def test_genesis_state() -> None:
    sp = Space()
    v = sp.view
    assert v.chain == (sp.records[0].id,)
    assert v.current.owner == sp.owner.public
    assert dict(v.current.members) == {sp.owner.public: Role.OWNER}
    assert v.current.epoch == 0
    assert epoch_keys(v, sp.owner) == {0: sp.keys[0]}
    assert epoch_keys(v, key(9)) == {}
    assert sp.records[0].header is not None and sp.records[0].header.id == sp.id


def test_genesis_must_match_header() -> None:
    sp = Space()
    other = key(2)
    with pytest.raises(DecodeError):  # author is not the header's owner
        make_genesis(other, sp.header, sp.keys[0], T0)
    body = RecordBody(bytes(32), ZERO_ID, sp.owner.public, T0, Genesis(sp.header, bytes(80)))
    with pytest.raises(DecodeError):  # space id is not BLAKE3(header)
        parse_record(encode_record(sp.owner, body))
    body = RecordBody(sp.id, bytes(31) + b"\x01", sp.owner.public, T0, Genesis(sp.header, bytes(80)))
    with pytest.raises(DecodeError):  # genesis off the root
        parse_record(encode_record(sp.owner, body))
    body = RecordBody(sp.id, ZERO_ID, sp.owner.public, T0, RevokeInvite(bytes(32)))
    with pytest.raises(DecodeError):  # non-genesis at the root
        parse_record(encode_record(sp.owner, body))


def test_join_needs_both_signatures() -> None:
    sp = Space()
    inv, ik = sp.invite(Role.WRITER)
    raw = make_join(key(2), ik, sp.view, inv.id, sp.key, sp.now())
    one_sig = raw[: -64 - 1 - 64] + b"\x01" + raw[-128:-64]
    with pytest.raises(DecodeError):
        parse_record(one_sig)
    swapped = raw[:-128] + raw[-64:] + raw[-128:-64]
    with pytest.raises(BadSignature):
        parse_record(swapped)


def test_expected_id() -> None:
    sp = Space()
    with pytest.raises(IdMismatch):
        parse_record(sp.records[0].raw, bytes(32))


def test_size_bound() -> None:
    sp = Space()
    raw = sp.records[0].raw
    huge = raw[:2] + (2 << 20).to_bytes(4, "big") + raw[6:]
    with pytest.raises(DecodeError):
        parse_record(huge)


def test_unsorted_lists_rejected() -> None:
    sp = Space()
    sp.member(key(2), Role.WRITER)
    sp.member(key(3), Role.WRITER)
    v = sp.view
    sealed = [SealedFor(r, crypto.seal(r, bytes(32))) for r in v.current.key_recipients(key(3).public)]
    wrapped = wrap_previous_key(sp.id, 1, bytes(32), sp.key)
    with pytest.raises(DecodeError):
        sp.forge(sp.owner, Remove(key(3).public, 1, sealed[::-1], wrapped, []))
    with pytest.raises(DecodeError):
        sp.forge(sp.owner, Remove(key(3).public, 1, sealed, wrapped, [b"\x02" * 32, b"\x01" * 32]))
    with pytest.raises(DecodeError):
        sp.forge(sp.owner, Remove(key(3).public, 1, sealed, wrapped, [b"\x01" * 32, b"\x01" * 32]))


# ---------------------------------------------------------------------------------------------------- fold
def test_no_genesis() -> None:
    sp = Space()
    sp.member(key(2), Role.WRITER)
    with pytest.raises(NotFound):
        fold(sp.id, sp.records[1:])
    with pytest.raises(NotFound):
        fold(bytes(32), sp.records)


def test_fork_lower_id_wins_and_loser_subtree_dropped() -> None:
    sp = Space()
    base = list(sp.records)
    inv_a, ik_a = sp.invite(Role.WRITER)
    a_child = sp.join(key(2), inv_a, ik_a)
    sp.records = list(base)
    inv_b, ik_b = sp.invite(Role.READER)
    b_child = sp.join(key(3), inv_b, ik_b)
    sp.records = [*base, inv_a, a_child, inv_b, b_child]
    v = sp.view
    (win, win_child), (lose, lose_child) = sorted([(inv_a, a_child), (inv_b, b_child)], key=lambda p: p[0].id)
    assert v.chain == (base[0].id, win.id, win_child.id)
    assert set(v.dropped) == {lose.id, lose_child.id}
    assert v.dropped[lose.id].startswith("lost a fork")
    assert v.dropped[lose_child.id].startswith("built on dropped record")
    assert v.state_at(lose.id) is None and v.position(lose_child.id) is None
    assert v.position(win_child.id) == 2


def test_invalid_lower_child_skipped_for_valid_higher() -> None:
    sp = Space()
    reader = key(2)
    sp.member(reader, Role.READER)
    head_records = list(sp.records)
    # Many forged invites by the reader on the same head: all invalid, whatever their IDs.
    bad = [sp.forge(reader, Invite(key(40 + i).public, 1, 0, b"")) for i in range(24)]
    good, _ = sp.invite(Role.WRITER)
    v = fold(sp.id, [*head_records, *bad, good])
    assert v.head == good.id
    assert any(b.id < good.id for b in bad) and any(b.id > good.id for b in bad)
    for b in bad:  # invalid records are reported as such, on either side of the winner
        assert v.dropped[b.id] == "only the owner or an admin may change the ACL"


def test_other_space_and_orphans_dropped() -> None:
    sp = Space()
    other = Space(seed=b"other")
    other.member(key(5), Role.WRITER)
    inv, ik = sp.invite(Role.WRITER)
    join = sp.join(key(2), inv, ik)
    v = fold(sp.id, [sp.records[0], join, *other.records])
    assert v.chain == (sp.records[0].id,)
    assert v.dropped[join.id] == "previous record unknown"
    for r in other.records:
        assert v.dropped[r.id] == "belongs to another space"


def _fold_summary(v: AclView) -> tuple[object, ...]:
    return (v.chain, dict(v.dropped), dict(v.current.members), v.current.epoch, dict(v.current.invites))


def _rich_record_set() -> list[AclRecord]:
    """Forks, invalid records, descendants of losers, removals, another space's records, an orphan."""
    sp = Space(seed=b"rich")
    admin, writer, reader = key(2), key(3), key(4)
    sp.member(admin, Role.ADMIN)
    sp.member(writer, Role.WRITER, by=admin)
    fork_base = list(sp.records)
    sp.member(reader, Role.READER)  # branch 1
    branch1 = sp.records[len(fork_base) :]
    sp.records = list(fork_base)
    sp.remove(writer.public, by=admin, last=[b"\x07" * 32])  # branch 2
    sp.member(key(6), Role.WRITER)
    branch2 = sp.records[len(fork_base) :]
    sp.records = list(fork_base)
    bogus = sp.forge(writer, Invite(key(50).public, 1, 0, b""))  # a writer may not invite
    inv, ik = sp.invite(Role.READER)
    orphan = make_join(key(7), ik, sp.view, inv.id, sp.key, sp.now())
    other = Space(seed=b"elsewhere")
    return [*fork_base, *branch1, *branch2, bogus, parse_record(orphan), *other.records]


RICH = _rich_record_set()
RICH_SPACE = RICH[0].space_id
RICH_SUMMARY = _fold_summary(fold(RICH_SPACE, RICH))


@settings(max_examples=150, deadline=None)
@given(st.permutations(RICH), st.lists(st.sampled_from(RICH), max_size=12))
def test_fold_is_a_function_of_the_set(order: list[AclRecord], extra: list[AclRecord]) -> None:
    records = list(order)
    for i, r in enumerate(extra):  # duplicates at arbitrary positions
        records.insert((i * 7) % (len(records) + 1), r)
    assert _fold_summary(fold(RICH_SPACE, records)) == RICH_SUMMARY


def test_rich_set_exercises_the_rules() -> None:
    reasons = set(RICH_SUMMARY[1].values())  # type: ignore[union-attr]
    assert any(r.startswith("lost a fork") for r in reasons)
    assert any(r.startswith("built on dropped record") for r in reasons)
    assert "belongs to another space" in reasons
    assert "previous record unknown" in reasons
    assert "only the owner or an admin may change the ACL" in reasons


# ---------------------------------------------------------------------------------------------------- permissions
AUTHORS = ["owner", "admin", "writer", "reader", "outsider"]
TARGETS = ["owner", "admin2", "writer2", "reader2"]
ROLE_OF = {"owner": Role.OWNER, "admin": Role.ADMIN, "admin2": Role.ADMIN, "writer": Role.WRITER,
           "writer2": Role.WRITER, "reader": Role.READER, "reader2": Role.READER}  # fmt: skip


def _power(author: str) -> Role | None:
    return ROLE_OF.get(author)


def _matrix_space() -> tuple[Space, dict[str, crypto.SigningKey], dict[Role, AclRecord]]:
    sp = Space(seed=b"matrix")
    people = {name: key(10 + i) for i, name in enumerate(["admin", "admin2", "writer", "writer2", "reader", "reader2"])}
    people["owner"] = sp.owner
    people["outsider"] = key(30)
    for name, k in people.items():
        if name not in ("owner", "outsider"):
            sp.member(k, ROLE_OF[name])
    invites = {role: sp.invite(role)[0] for role in (Role.READER, Role.WRITER, Role.ADMIN)}
    return sp, people, invites


MATRIX, PEOPLE, OPEN_INVITES = _matrix_space()


def _admin_or_owner(author: str) -> bool:
    role = _power(author)
    return role is not None and role >= Role.ADMIN


@pytest.mark.parametrize("author", AUTHORS)
@pytest.mark.parametrize("role", [Role.READER, Role.WRITER, Role.ADMIN])
def test_matrix_invite(author: str, role: Role) -> None:
    expected = _admin_or_owner(author) and (role <= Role.WRITER or author == "owner")
    rec = MATRIX.forge(PEOPLE[author], Invite(key(99).public, int(role), 0, b""))
    assert MATRIX.accepts(rec) == expected
    if not expected:
        with pytest.raises(PermissionDenied):
            make_invite(PEOPLE[author], MATRIX.view, role, 0, None, T0)


@pytest.mark.parametrize("author", AUTHORS)
@pytest.mark.parametrize("target", [*TARGETS, "admin", "writer", "reader"])
@pytest.mark.parametrize("new_role", [Role.READER, Role.WRITER, Role.ADMIN])
def test_matrix_role_change(author: str, target: str, new_role: Role) -> None:
    current = ROLE_OF[target]
    expected = (
        _admin_or_owner(author)
        and current != Role.OWNER
        and current != new_role
        and (author == "owner" or (current <= Role.WRITER and new_role <= Role.WRITER))
    )
    rec = MATRIX.forge(PEOPLE[author], RoleChange(PEOPLE[target].public, int(new_role), []))
    assert MATRIX.accepts(rec) == expected
    if not expected:
        with pytest.raises(PermissionDenied):
            make_role_change(PEOPLE[author], MATRIX.view, PEOPLE[target].public, new_role, T0)
    else:
        after = fold(MATRIX.id, [*MATRIX.records, rec])
        assert after.current.members[PEOPLE[target].public] == new_role


@pytest.mark.parametrize("author", AUTHORS)
@pytest.mark.parametrize("target", [*TARGETS, "admin", "writer", "reader"])
def test_matrix_remove(author: str, target: str) -> None:
    current = ROLE_OF[target]
    expected = _admin_or_owner(author) and current != Role.OWNER and (author == "owner" or current <= Role.WRITER)
    v = MATRIX.view
    if expected:
        raw, _ = make_remove(PEOPLE[author], v, PEOPLE[target].public, MATRIX.key, [], T0)
        assert MATRIX.accepts(parse_record(raw))
    else:
        with pytest.raises(PermissionDenied):
            make_remove(PEOPLE[author], v, PEOPLE[target].public, MATRIX.key, [], T0)
        sealed = [SealedFor(r, bytes(80)) for r in v.current.key_recipients(PEOPLE[target].public)]
        forged = MATRIX.forge(PEOPLE[author], Remove(PEOPLE[target].public, 1, sealed, bytes(48), []))
        assert not MATRIX.accepts(forged)


@pytest.mark.parametrize("author", AUTHORS)
@pytest.mark.parametrize("role", [Role.READER, Role.WRITER, Role.ADMIN])
def test_matrix_revoke(author: str, role: Role) -> None:
    expected = _admin_or_owner(author) and (role <= Role.WRITER or author == "owner")
    rec = MATRIX.forge(PEOPLE[author], RevokeInvite(OPEN_INVITES[role].id))
    assert MATRIX.accepts(rec) == expected
    if expected:
        after = fold(MATRIX.id, [*MATRIX.records, rec])
        assert after.current.invites[OPEN_INVITES[role].id].revoked


def test_nobody_grants_owner() -> None:
    with pytest.raises(DecodeError):
        MATRIX.forge(MATRIX.owner, RoleChange(PEOPLE["admin"].public, int(Role.OWNER), []))
    with pytest.raises(DecodeError):
        MATRIX.forge(MATRIX.owner, Invite(key(98).public, int(Role.OWNER), 0, b""))


# ---------------------------------------------------------------------------------------------------- invites
def test_invite_join_offline() -> None:
    sp = Space()
    inv, ik = sp.invite(Role.WRITER)
    bob = key(2)
    # Before joining, the invite key alone opens the current epoch key (the ticket carries the invite key).
    assert epoch_keys(sp.view, bob, [ik]) == {0: sp.keys[0]}
    assert epoch_keys(sp.view, bob) == {}
    sp.join(bob, inv, ik)
    v = sp.view
    assert v.current.members[bob.public] == Role.WRITER
    assert v.current.invites[inv.id].used_by == bob.public
    # A device restored from the phrase has only the account key: sealed_self is enough.
    assert epoch_keys(v, bob) == {0: sp.keys[0]}


def test_invite_without_offline_key() -> None:
    sp = Space()
    inv, ik = sp.invite(Role.READER, offline=False)
    assert isinstance(inv.kind, Invite) and inv.kind.sealed_key == b""
    assert epoch_keys(sp.view, key(2), [ik]) == {}


def test_expired_invite_rejected() -> None:
    sp = Space()
    inv, ik = sp.invite(Role.WRITER, expires_us=T0 + 100)
    bob = key(2)
    with pytest.raises(PermissionDenied, match="expired"):
        make_join(bob, ik, sp.view, inv.id, sp.key, T0 + 101)
    late = sp.forge(bob, Join(inv.id, ik.public, crypto.seal(bob.public, sp.key)), co=ik, created_us=T0 + 101)
    assert not sp.accepts(late)
    on_time = sp.forge(bob, Join(inv.id, ik.public, crypto.seal(bob.public, sp.key)), co=ik, created_us=T0 + 100)
    assert sp.accepts(on_time)


def test_used_invite_rejected() -> None:
    sp = Space()
    inv, ik = sp.invite(Role.WRITER)
    sp.join(key(2), inv, ik)
    with pytest.raises(PermissionDenied, match="already used"):
        make_join(key(3), ik, sp.view, inv.id, sp.key, sp.now())


def test_revoked_invite_rejected() -> None:
    sp = Space()
    inv, ik = sp.invite(Role.WRITER)
    sp.add(make_revoke_invite(sp.owner, sp.view, inv.id, sp.now()))
    with pytest.raises(PermissionDenied, match="revoked"):
        make_join(key(2), ik, sp.view, inv.id, sp.key, sp.now())
    with pytest.raises(PermissionDenied):  # twice
        make_revoke_invite(sp.owner, sp.view, inv.id, sp.now())


def test_join_rules() -> None:
    sp = Space()
    bob = key(2)
    sp.member(bob, Role.READER)
    inv, ik = sp.invite(Role.WRITER)
    with pytest.raises(PermissionDenied, match="already a member"):
        make_join(bob, ik, sp.view, inv.id, sp.key, sp.now())
    wrong_key = key(60)
    forged = sp.forge(key(3), Join(inv.id, wrong_key.public, bytes(80)), co=wrong_key)
    assert not sp.accepts(forged)  # invite key does not match the invite
    nowhere = sp.forge(key(3), Join(b"\x05" * 32, ik.public, bytes(80)), co=ik)
    assert not sp.accepts(nowhere)  # invite not on the chain
    with pytest.raises(PermissionDenied, match="reused"):
        make_invite(sp.owner, sp.view, Role.READER, 0, None, sp.now(), invite_key=ik)


# ---------------------------------------------------------------------------------------------------- epochs
def test_removal_rotates_keys() -> None:
    sp = Space()
    admin, writer, reader, gone = key(2), key(3), key(4), key(5)
    sp.member(admin, Role.ADMIN)
    sp.member(writer, Role.WRITER)
    sp.member(reader, Role.READER)
    gone_join = sp.member(gone, Role.WRITER)
    pending_inv, pending_ik = sp.invite(Role.READER)  # outstanding: must get the new key
    admin_inv, admin_ik = sp.invite(Role.WRITER, by=admin)  # issued by the admin we remove later
    head_before = sp.view.head
    sp.remove(gone.public, last=[b"\x09" * 32, b"\x08" * 32])
    v = sp.view
    assert v.current.epoch == 1 and gone.public not in v.current.members
    k0, k1 = sp.keys[0], sp.keys[1]
    assert k0 != k1
    for member in (sp.owner, admin, writer, reader):
        assert epoch_keys(v, member) == {0: k0, 1: k1}
    assert epoch_keys(v, key(9), [pending_ik]) == {0: k0, 1: k1}  # outstanding invite
    assert epoch_keys(v, gone) == {0: k0}  # the removed member, given every record, stays at epoch 0
    assert v.removals_after(head_before, gone.public) == [frozenset({b"\x09" * 32, b"\x08" * 32})]
    assert v.removals_after(v.head, gone.public) == []
    assert v.removals_after(gone_join.id, writer.public) == []
    with pytest.raises(NotFound):
        v.removals_after(b"\x01" * 32, gone.public)

    # Removing the admin revokes the invite it issued (it knows that invite's secret).
    sp.remove(admin.public)
    v = sp.view
    k2 = sp.keys[2]
    assert v.current.epoch == 2
    assert v.current.invites[admin_inv.id].revoked
    assert not v.current.invites[pending_inv.id].revoked
    # The admin's invite was outstanding at the first removal (epoch 1), but gets nothing newer.
    assert epoch_keys(v, key(9), [admin_ik]) == {0: k0, 1: k1}
    assert epoch_keys(v, admin) == {0: k0, 1: k1}
    assert epoch_keys(v, writer) == {0: k0, 1: k1, 2: k2}
    # The newest key alone yields every older one: a joiner after two removals gets all history.
    sp.join(key(8), pending_inv, pending_ik)
    assert epoch_keys(sp.view, key(8)) == {0: k0, 1: k1, 2: k2}


def test_removal_rules() -> None:
    sp = Space()
    bob, carol = key(2), key(3)
    sp.member(bob, Role.WRITER)
    sp.member(carol, Role.WRITER)
    v = sp.view
    wrapped = wrap_previous_key(sp.id, 1, b"\x01" * 32, sp.key)
    all_recipients = [SealedFor(r, bytes(80)) for r in v.current.key_recipients(bob.public)]
    assert [s.recipient for s in all_recipients] == sorted([sp.owner.public, carol.public])
    assert sp.accepts(sp.forge(sp.owner, Remove(bob.public, 1, all_recipients, wrapped, [])))
    assert not sp.accepts(sp.forge(sp.owner, Remove(bob.public, 2, all_recipients, wrapped, [])))  # epoch skip
    missing_one = [s for s in all_recipients if s.recipient != carol.public]
    assert not sp.accepts(sp.forge(sp.owner, Remove(bob.public, 1, missing_one, wrapped, [])))
    with_removed = sorted([*all_recipients, SealedFor(bob.public, bytes(80))], key=lambda s: s.recipient)
    assert not sp.accepts(sp.forge(sp.owner, Remove(bob.public, 1, with_removed, wrapped, [])))
    assert not sp.accepts(sp.forge(sp.owner, Remove(key(9).public, 1, all_recipients, wrapped, [])))


def test_prev_key_wrapping() -> None:
    sid, new, old = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    w = wrap_previous_key(sid, 5, new, old)
    assert len(w) == 48 and unwrap_previous_key(sid, 5, new, w) == old
    from anysyncfs.errors import AuthenticationFailed

    for bad in [(b"\x09" * 32, 5, new), (sid, 6, new), (sid, 5, b"\x09" * 32)]:
        with pytest.raises(AuthenticationFailed):
            unwrap_previous_key(bad[0], bad[1], bad[2], w)


# ---------------------------------------------------------------------------------------------------- bit flips
def _one_of_each_kind() -> list[AclRecord]:
    sp = Space(seed=b"flips")
    inv, ik = sp.invite(Role.WRITER)
    sp.join(key(2), inv, ik)
    sp.add(make_role_change(sp.owner, sp.view, key(2).public, Role.READER, sp.now()))
    inv2, _ = sp.invite(Role.READER)
    sp.add(make_revoke_invite(sp.owner, sp.view, inv2.id, sp.now()))
    sp.invite(Role.READER)
    sp.remove(key(2).public, last=[b"\x04" * 32])
    kinds = {type(r.kind) for r in sp.records}
    assert kinds == {Genesis, Invite, Join, RoleChange, Remove, RevokeInvite}
    return sp.records


@pytest.mark.parametrize("index", range(8))
def test_every_bit_flip_rejected(index: int) -> None:
    records = _one_of_each_kind()
    raw = records[index].raw
    rid = records[index].id
    for i in range(len(raw) * 8):
        bad = bytearray(raw)
        bad[i // 8] ^= 1 << (i % 8)
        for expected in (None, rid):
            try:
                parse_record(bytes(bad), expected)
            except (DecodeError, IdMismatch, BadSignature):
                continue
            pytest.fail(f"{type(records[index].kind).__name__}: bit {i} flipped was accepted")


# ---------------------------------------------------------------------------------------------------- vectors
def vector_inputs() -> dict[str, object]:
    return {
        "owner_seed": "01" * 32,
        "joiner_seed": "02" * 32,
        "rng_seed": b"anysyncfs acl vector".hex(),
        "rng": "n bytes = BLAKE3 derive_key('anysyncfs 2026 test rng', rng_seed || counter u64 BE), counter from 1",
        "t0_us": T0,
        "last_changes": [("44" * 32)],
        "role_change_last_changes": [("33" * 32)],
    }


def build_vector(inputs: dict[str, object]) -> tuple[Space, dict[str, AclRecord], crypto.SigningKey]:
    owner = crypto.SigningKey(bytes.fromhex(str(inputs["owner_seed"])))
    joiner = crypto.SigningKey(bytes.fromhex(str(inputs["joiner_seed"])))
    sp = Space(seed=bytes.fromhex(str(inputs["rng_seed"])), owner=owner)
    out = {"genesis": sp.records[0]}
    out["invite"], ik = sp.invite(Role.WRITER, expires_us=T0 + 86_400_000_000)
    out["join"] = sp.join(joiner, out["invite"], ik)
    demoted_last = [bytes.fromhex(x) for x in inputs["role_change_last_changes"]]  # type: ignore[attr-defined]
    out["role_change"] = sp.add(make_role_change(owner, sp.view, joiner.public, Role.READER, sp.now(), demoted_last))
    out["invite_2"], _ = sp.invite(Role.READER, offline=False)
    out["revoke_invite"] = sp.add(make_revoke_invite(owner, sp.view, out["invite_2"].id, sp.now()))
    last = [bytes.fromhex(x) for x in inputs["last_changes"]]  # type: ignore[attr-defined]
    out["remove"] = sp.remove(joiner.public, last=last)
    return sp, out, ik


def test_vector() -> None:
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        inputs = vector_inputs()
        sp, recs, ik = build_vector(inputs)
        doc = {
            "format": "ACL record (signed record, tag 'A', version 1)",
            "inputs": inputs,
            "space_header_hex": sp.header.hex(),
            "space_id_hex": sp.id.hex(),
            "epoch_keys_hex": {str(e): k.hex() for e, k in sp.keys.items()},
            "invite_key_seed_hex": ik.seed.hex(),
            "records": {name: {"encoded_hex": r.raw.hex(), "id_hex": r.id.hex()} for name, r in recs.items()},
        }
        VECTOR_PATH.parent.mkdir(parents=True, exist_ok=True)
        VECTOR_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    doc = json.loads(VECTOR_PATH.read_text())
    assert doc["inputs"] == json.loads(json.dumps(vector_inputs()))
    sp, recs, ik = build_vector(doc["inputs"])
    assert sp.header.hex() == doc["space_header_hex"] and sp.id.hex() == doc["space_id_hex"]
    assert {str(e): k.hex() for e, k in sp.keys.items()} == doc["epoch_keys_hex"]
    assert ik.seed.hex() == doc["invite_key_seed_hex"]
    assert set(recs) == set(doc["records"])
    for name, r in recs.items():
        assert r.raw.hex() == doc["records"][name]["encoded_hex"], name
        assert r.id.hex() == doc["records"][name]["id_hex"], name
    parsed = [
        parse_record(bytes.fromhex(v["encoded_hex"]), bytes.fromhex(v["id_hex"])) for v in doc["records"].values()
    ]
    view = fold(sp.id, parsed)
    assert len(view.chain) == len(parsed) and not view.dropped
    owner = crypto.SigningKey(bytes.fromhex(doc["inputs"]["owner_seed"]))
    assert {str(e): k.hex() for e, k in epoch_keys(view, owner).items()} == doc["epoch_keys_hex"]
