"""Property: forks of the ACL never undo a removal or a demotion an honest replica has seen (issue 10, item 1).

The world: an honest history, one linear chain of records made with the builders (the owner and honest admins
invite, members join with their own ticket, roles change, members are removed, invites revoked; nobody who left is
invited again). Every account the history reduces (removes, or demotes to a lower role) is an adversary from its
first reduction on, together with the invite secrets it issued or used; so are the holders of every used reader
or writer ticket. Adversaries then sign whatever the rules allow them anywhere in the tree of records: joins by
themselves or by fresh accounts with the secrets they hold, and (where they were admins) invites, removals,
demotions, promotions and revocations, each on a record of their choosing, with ``created_us`` ground so the
record ID sorts first among its siblings.

An honest replica holds a prefix of the honest chain and some of the adversary records it could already know to
be hostile. If its fold shows X removed at epoch e (or an account demoted), then for every larger set of records
(more honest history, more adversary records): the reduction stays on the canonical chain, X is no member after
it, X's keys (account, invite secrets, the fresh accounts it joined with them) open no epoch >= e, and no record
of a branch that lost a fork lets X (or those accounts) write. Two replicas with the same set in any order fold
to the same view.

CI runs a bounded number of examples (ANYSYNCFS_ACL_EXAMPLES, default 200); ``scripts/acl_soak`` runs many more.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anysyncfs.core import crypto
from anysyncfs.core.acl import (
    AclRecord,
    AclState,
    AclView,
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
    wrap_previous_key,
)
from anysyncfs.core.space import make_space_header
from anysyncfs.errors import PermissionDenied

EXAMPLES = int(os.environ.get("ANYSYNCFS_ACL_EXAMPLES", "200"))
T0 = 1_767_225_600_000_000
GRIND = 8  # created_us values an adversary tries per record, keeping the lowest ID


def key(n: int) -> crypto.SigningKey:
    return crypto.SigningKey(crypto.derive_key("anysyncfs test acl property", n.to_bytes(4, "big")))


OWNER = key(0)
CANDIDATES = [key(i) for i in range(1, 7)]  # accounts the honest history may invite
FAKES = [key(100 + i) for i in range(40)]  # fresh accounts adversaries join with


@dataclass
class World:
    space_id: bytes
    honest: list[AclRecord]
    invite_keys: dict[bytes, crypto.SigningKey]  # invite record ID -> its secret (honest and adversary invites)
    reduced_at: dict[bytes, int]  # account -> position of its first reduction on the honest chain
    adversary: list[AclRecord] = field(default_factory=list)
    known_at: dict[bytes, int] = field(default_factory=dict)  # adversary record -> honest prefix that reveals it
    fakes_of: dict[bytes, bytes] = field(default_factory=dict)  # fake account -> invite secret it joined with


# ---------------------------------------------------------------------------------------------------- honest
def honest_history(data: st.DataObject, rng: random.Random) -> World:
    header = make_space_header(OWNER, T0, nonce=rng.randbytes(32))
    space_id = crypto.blake3(header)
    epoch_key = rng.randbytes(32)
    records = [parse_record(make_genesis(OWNER, header, epoch_key, T0))]
    invite_keys: dict[bytes, crypto.SigningKey] = {}
    pending: dict[bytes, tuple[bytes, crypto.SigningKey]] = {}  # invitee -> (invite ID, secret)
    ever_member: set[bytes] = {OWNER.public}
    reduced_at: dict[bytes, int] = {}
    keys_by_account = {OWNER.public: OWNER, **{c.public: c for c in CANDIDATES}}
    t = T0
    for _step in range(data.draw(st.integers(2, 14), label="honest steps")):
        view = fold(space_id, records)
        state = view.current
        admins = sorted(a for a, r in state.members.items() if r >= Role.ADMIN and a not in reduced_at)
        members = sorted(a for a, r in state.members.items() if r != Role.OWNER)
        fresh = [c for c in CANDIDATES if c.public not in ever_member and c.public not in pending]
        options = ["invite"] * (2 if fresh else 0) + ["join"] * (3 if pending else 0)
        options += ["role", "role", "remove", "remove"] if members else []
        options += ["revoke"] if pending else []
        if not options:
            break
        what = data.draw(st.sampled_from(options), label="honest action")
        author = keys_by_account[data.draw(st.sampled_from(admins), label="admin")]
        t += 1
        try:
            if what == "invite":
                invitee = data.draw(st.sampled_from(fresh), label="invitee")
                roles = [Role.WRITER, Role.READER] + ([Role.ADMIN, Role.ADMIN] if author is OWNER else [])
                role = data.draw(st.sampled_from(roles), label="invite role")
                raw, ik = make_invite(author, view, role, 0, epoch_key, t)
                pending[invitee.public] = (crypto.blake3(raw), ik)
                invite_keys[crypto.blake3(raw)] = ik
            elif what == "join":
                invitee_pub = data.draw(st.sampled_from(sorted(pending)), label="joiner")
                iid, ik = pending.pop(invitee_pub)
                raw = make_join(keys_by_account[invitee_pub], ik, view, iid, epoch_key, t)
                ever_member.add(invitee_pub)
            elif what == "role":
                target = data.draw(st.sampled_from(members), label="role target")
                role = data.draw(st.sampled_from([Role.READER, Role.WRITER, Role.ADMIN]), label="new role")
                if target in reduced_at and role > (state.role_of(target) or 0):
                    continue  # nobody trusts a reduced account again
                raw = make_role_change(author, view, target, role, t)
                if role < (state.role_of(target) or 0):
                    reduced_at.setdefault(target, len(records))
            elif what == "remove":
                target = data.draw(st.sampled_from(members), label="removed")
                raw, epoch_key = make_remove(author, view, target, epoch_key, [], t)
                reduced_at.setdefault(target, len(records))
            else:
                invitee_pub = data.draw(st.sampled_from(sorted(pending)), label="revoked invite")
                iid, _ik = pending.pop(invitee_pub)
                raw = make_revoke_invite(author, view, iid, t)
        except PermissionDenied:
            continue
        records.append(parse_record(raw))
        assert fold(space_id, records).head == records[-1].id  # the honest history is one linear chain
    return World(space_id, records, invite_keys, reduced_at)


# ---------------------------------------------------------------------------------------------------- adversary
def secrets_of(world: World, account: bytes, view: AclView) -> set[bytes]:
    """Invite IDs whose secret ``account`` holds: those it issued or used, on any branch."""
    out = set()
    for rid in world.invite_keys:
        rec = next((r for r in [*world.honest, *world.adversary] if r.id == rid), None)
        if rec is not None and rec.author == account:
            out.add(rid)
    for r in [*world.honest, *world.adversary]:
        if isinstance(r.kind, Join) and r.author == account:
            out.add(r.kind.invite_id)
    return out


def _forge(world: World, author: crypto.SigningKey, prev: bytes, kind: Kind, siblings: list[bytes],
           co: crypto.SigningKey | None = None) -> AclRecord:
    """A record on ``prev``; ``created_us`` ground so its ID sorts below its siblings' if it can."""
    best: AclRecord | None = None
    for t in range(GRIND):
        body = RecordBody(world.space_id, prev, author.public, T0 + 10_000 + t, kind)
        rec = parse_record(encode_record(author, body, co))
        if best is None or rec.id < best.id:
            best = rec
        if siblings and best.id < min(siblings):
            break
    assert best is not None
    return best


def adversary_moves(data: st.DataObject, world: World, rng: random.Random) -> None:
    """Adversaries sign records anywhere the rules let them (``known_at``: the honest prefix that reveals them)."""
    honest_pos = {r.id: i for i, r in enumerate(world.honest)}
    used_tickets = {}  # leaked reader/writer tickets used on the honest chain -> position of the use
    for i, r in enumerate(world.honest):
        if isinstance(r.kind, Join):
            state = fold(world.space_id, world.honest[:i + 1]).current
            if state.role_of(r.author) in (Role.READER, Role.WRITER):
                used_tickets[r.kind.invite_id] = i
    if not world.reduced_at and not used_tickets:
        return
    accounts = {c.public: c for c in CANDIDATES}
    fake_iter = iter(FAKES)
    fake_reveal: dict[bytes, int] = {}  # fake account -> honest prefix that reveals the secret it joined with
    for _move in range(data.draw(st.integers(1, 16), label="adversary moves")):
        all_records = [*world.honest, *world.adversary]
        view = fold(world.space_id, all_records)
        valid = [r for r in all_records if view.tree_state(r.id) is not None]
        at = data.draw(st.sampled_from(valid), label="attach to")
        state = view.tree_state(at.id)
        assert state is not None
        siblings = [r.id for r in all_records if r.prev == at.id]
        known = honest_pos[at.id] + 1 if at.id in honest_pos else world.known_at[at.id]
        moves: list[tuple[str, bytes]] = []
        for x, pos in world.reduced_at.items():
            role = state.role_of(x)
            if role is not None and role >= Role.ADMIN:
                moves.append(("admin", x))
            if role is None:
                moves.append(("rejoin", x))
        for fake in fake_reveal:  # a fresh account that joined with an admin invite acts as an admin
            role = state.role_of(fake)
            if role is not None and role >= Role.ADMIN:
                moves.append(("admin", fake))
        holders: dict[bytes, int] = {}
        for x, pos in world.reduced_at.items():
            for iid in secrets_of(world, x, view):
                holders[iid] = min(holders.get(iid, pos), pos)
        for iid, pos in used_tickets.items():
            holders[iid] = min(holders.get(iid, pos), pos)
        for iid, inv in state.invites.items():
            if inv.outstanding and iid in holders and iid in world.invite_keys:
                moves.append(("fake", iid))
        if not moves:
            continue
        kind_of_move, subject = data.draw(st.sampled_from(moves), label="move")
        if kind_of_move == "fake" or kind_of_move == "rejoin":
            if kind_of_move == "rejoin":
                x = subject
                usable = [iid for iid in secrets_of(world, x, view)
                          if iid in state.invites and state.invites[iid].outstanding and iid in world.invite_keys]
                if not usable:
                    continue
                iid = data.draw(st.sampled_from(sorted(usable)), label="rejoin invite")
                joiner = accounts[x]
                reveal = world.reduced_at[x]
            else:
                iid = subject
                joiner = next(fake_iter, None)
                if joiner is None:
                    continue
                world.fakes_of[joiner.public] = iid
                reveal = holders[iid]
                fake_reveal[joiner.public] = reveal
                accounts[joiner.public] = joiner
            ik = world.invite_keys[iid]
            kind: Kind = Join(iid, ik.public, crypto.seal(joiner.public, rng.randbytes(32)))
            rec = _forge(world, joiner, at.id, kind, siblings, co=ik)
        else:
            x = subject
            author = accounts[x]
            reveal = world.reduced_at[x] if x in world.reduced_at else fake_reveal[x]
            lower = sorted(m for m, r in state.members.items() if r <= Role.WRITER and m != x)
            outstanding = sorted(i for i, inv in state.invites.items() if inv.outstanding and inv.role < Role.ADMIN)
            acts = ["invite"] + (["remove", "demote", "promote"] if lower else []) + (["revoke"] if outstanding else [])
            act = data.draw(st.sampled_from(acts), label="admin act")
            if act == "invite":
                ik = crypto.SigningKey(rng.randbytes(32))
                kind = Invite(ik.public, int(data.draw(st.sampled_from([Role.READER, Role.WRITER]))), 0, b"")
                rec = _forge(world, author, at.id, kind, siblings)
                world.invite_keys[rec.id] = ik
            elif act == "revoke":
                rec = _forge(world, author, at.id, RevokeInvite(data.draw(st.sampled_from(outstanding))), siblings)
            else:
                target = data.draw(st.sampled_from(lower), label="target")
                if act == "remove":
                    new_key = rng.randbytes(32)
                    sealed = [SealedFor(r, crypto.seal(r, new_key)) for r in state.key_recipients(target)]
                    wrapped = wrap_previous_key(world.space_id, state.epoch + 1, new_key, rng.randbytes(32))
                    kind = Remove(target, state.epoch + 1, sealed, wrapped, [])
                else:
                    role = Role.READER if act == "demote" else Role.WRITER
                    if state.role_of(target) == role:
                        continue
                    kind = RoleChange(target, int(role), [])
                rec = _forge(world, author, at.id, kind, siblings)
        if fold(world.space_id, [*all_records, rec]).tree_state(rec.id) is None:
            continue  # not allowed there after all (e.g. a demotion that is no demotion)
        world.adversary.append(rec)
        world.known_at[rec.id] = max(known, reveal + 1)


# ---------------------------------------------------------------------------------------------------- checks
def reductions_on_chain(view: AclView) -> list[tuple[AclRecord, AclState]]:
    """(record, state before it) of every removal or demotion on the canonical chain."""
    out = []
    for i in range(1, len(view.records)):
        r = view.records[i]
        before = view.state_at(view.chain[i - 1])
        assert before is not None
        if isinstance(r.kind, Remove) or (isinstance(r.kind, RoleChange)
                                          and r.kind.role < (before.role_of(r.kind.member) or 0)):
            out.append((r, before))
    return out


def summary(view: AclView) -> tuple[object, ...]:
    return (view.chain, dict(view.dropped), dict(view.current.members), view.current.epoch)


def replica_set(world: World, prefix: int, rng: random.Random, base: set[bytes] | None = None) -> list[AclRecord]:
    """The honest prefix and a random part of the adversary records that prefix reveals (keeping ``base``)."""
    records = list(world.honest[:prefix])
    for r in world.adversary:
        if world.known_at[r.id] <= prefix and ((base is not None and r.id in base) or rng.random() < 0.6):
            records.append(r)
    return records


def check_world(world: World, rng: random.Random) -> None:
    n = len(world.honest)
    for _trial in range(3):
        p = rng.randint(1, n)
        base = replica_set(world, p, rng)
        seen = fold(world.space_id, base)
        reductions = reductions_on_chain(seen)
        base_ids = {r.id for r in base}
        for _superset in range(3):
            bigger = replica_set(world, rng.randint(p, n), rng, base_ids)
            assert base_ids <= {r.id for r in bigger}
            view = fold(world.space_id, bigger)
            shuffled = list(bigger)
            rng.shuffle(shuffled)
            assert summary(fold(world.space_id, shuffled + shuffled[: len(shuffled) // 3])) == summary(view)
            for record, before in reductions:
                assert view.position(record.id) is not None, f"{record} undone"
                if not isinstance(record.kind, Remove):
                    continue
                x = record.kind.member
                epoch = record.kind.new_epoch
                after = view.position(record.id)
                assert after is not None
                for rid in view.chain[after:]:
                    st_ = view.state_at(rid)
                    assert st_ is not None and x not in st_.members, "removed member is back"
                secrets = secrets_of(world, x, view)
                x_key = next((c for c in CANDIDATES if c.public == x), None)
                assert x_key is not None
                invite_keys = [world.invite_keys[i] for i in secrets if i in world.invite_keys]
                opened = epoch_keys(view, x_key, invite_keys)
                assert all(e < epoch for e in opened), f"removed member opens epochs {sorted(opened)} >= {epoch}"
                # Nor can X write by citing a record of a branch that lost a fork (citable_state, 20.6).
                off_chain = [r.id for r in bigger if view.tree_state(r.id) is not None and view.position(r.id) is None]
                assert all(view.citable_state(rid, x) is None for rid in off_chain), "X writes through a lost branch"
                for fake, iid in world.fakes_of.items():
                    if iid in secrets:
                        assert all(view.citable_state(rid, fake) is None for rid in off_chain)
                        fake_key = next(f for f in FAKES if f.public == fake)
                        assert all(e < epoch for e in epoch_keys(view, fake_key)), "a fake of X opens a new epoch"
                        for rid in view.chain[after:]:
                            st_ = view.state_at(rid)
                            assert st_ is not None and fake not in st_.members


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])
@given(st.data(), st.integers(0, 2**32 - 1))
def test_a_seen_reduction_is_never_undone(data: st.DataObject, seed: int) -> None:
    rng = random.Random(seed)
    world = honest_history(data, rng)
    adversary_moves(data, world, rng)
    check_world(world, rng)
