"""Acceptance of changes against the DAG and the ACL (core/validate.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from anysyncfs.core import crypto
from anysyncfs.core.acl import (
    AclView,
    Role,
    fold,
    make_genesis,
    make_invite,
    make_join,
    make_remove,
    make_role_change,
    parse_record,
)
from anysyncfs.core.change import Change, make_change
from anysyncfs.core.dag import Dag
from anysyncfs.core.space import make_space_header
from anysyncfs.core.validate import check_change, removal_targets
from anysyncfs.errors import NotFound, Rejected

T0 = 1_767_225_600_000_000
DEVICE = crypto.SigningKey(b"\xdd" * 32).public


def key(n: int) -> crypto.SigningKey:
    return crypto.SigningKey(bytes([n]) * 32)


OWNER, WRITER, READER, LEAVER, OUTSIDER = key(1), key(2), key(3), key(4), key(5)


class World:
    """A space with an owner, a writer, a reader and a member about to be removed; a DAG with one root change."""

    def __init__(self) -> None:
        header = make_space_header(OWNER, T0, nonce=b"\x00" * 32)
        self.space = crypto.blake3(header)
        self.keys = {0: b"\x10" * 32}
        self.records = [parse_record(make_genesis(OWNER, header, self.keys[0], T0))]
        self.t = T0
        for k, role in ((WRITER, Role.WRITER), (READER, Role.READER), (LEAVER, Role.WRITER)):
            self.add_member(k, role)
        self.dag = Dag()
        self.root = self.change(OWNER, [])
        self.dag.add(self.root.id, self.root.header.parents, self.root.header.lamport)

    @property
    def acl(self) -> AclView:
        return fold(self.space, self.records)

    def now(self) -> int:
        self.t += 1
        return self.t

    def add_member(self, k: crypto.SigningKey, role: Role) -> None:
        raw, ik = make_invite(OWNER, self.acl, role, 0, self.keys[max(self.keys)], self.now())
        inv = parse_record(raw)
        self.records.append(inv)
        self.records.append(parse_record(make_join(k, ik, self.acl, inv.id, self.keys[max(self.keys)], self.now())))

    def remove(self, k: crypto.SigningKey, last: Sequence[bytes]) -> None:
        raw, new_key = make_remove(OWNER, self.acl, k.public, self.keys[max(self.keys)], last, self.now())
        self.records.append(parse_record(raw))
        self.keys[max(self.keys) + 1] = new_key

    def change(
        self,
        author: crypto.SigningKey,
        parents: Sequence[Change],
        *,
        acl_head: bytes | None = None,
        epoch: int | None = None,
        lamport: int | None = None,
        space: bytes | None = None,
        parent_ids: Sequence[bytes] | None = None,
    ) -> Change:
        acl = self.acl
        head = acl.head if acl_head is None else acl_head
        state = acl.state_at(head)
        ep = epoch if epoch is not None else (state.epoch if state else 0)
        ids = [p.id for p in parents] if parent_ids is None else list(parent_ids)
        lam = lamport if lamport is not None else 1 + max((p.header.lamport for p in parents), default=0)
        return make_change(
            author, DEVICE, space or self.space, ids, lam, self.now(), head, ep, self.keys.get(ep, b"\x11" * 32),
            b"payload",
        )

    def check(self, c: Change, pending: dict[bytes, tuple[bytes, ...]] | None = None) -> None:
        check_change(c, self.space, self.dag, self.acl, (pending or {}).get)

    def accept(self, c: Change, pending: dict[bytes, tuple[bytes, ...]] | None = None) -> None:
        self.check(c, pending)
        self.dag.add(c.id, c.header.parents, c.header.lamport)


@pytest.fixture
def world() -> World:
    return World()


def test_valid_changes_pass(world: World) -> None:
    a = world.change(WRITER, [world.root])
    world.accept(a)
    b = world.change(OWNER, [world.root])
    world.accept(b)
    world.accept(world.change(LEAVER, [a, b]))


def test_reader_rejected(world: World) -> None:
    with pytest.raises(Rejected, match="^reader may not write$"):
        world.check(world.change(READER, [world.root]))


def test_non_member_rejected(world: World) -> None:
    with pytest.raises(Rejected, match="^not a member$"):
        world.check(world.change(OUTSIDER, [world.root]))


def test_unknown_acl_head_rejected(world: World) -> None:
    with pytest.raises(Rejected, match="^unknown ACL head$"):
        world.check(world.change(WRITER, [world.root], acl_head=b"\x42" * 32))


def test_member_only_later_on_the_chain(world: World) -> None:
    genesis = world.acl.chain[0]
    with pytest.raises(Rejected, match="^not a member$"):
        world.check(world.change(WRITER, [world.root], acl_head=genesis))


def test_unknown_epoch_rejected(world: World) -> None:
    with pytest.raises(Rejected, match="^unknown key epoch$"):
        world.check(world.change(WRITER, [world.root], epoch=1))
    world.remove(READER, [])
    old_head = world.acl.chain[-2]
    with pytest.raises(Rejected, match="^unknown key epoch$"):  # epoch 1 at a head of epoch 0
        world.check(world.change(WRITER, [world.root], acl_head=old_head, epoch=1))
    with pytest.raises(Rejected, match="^unknown key epoch$"):  # epoch 0 at a head of epoch 1
        world.check(world.change(WRITER, [world.root], epoch=0))
    world.check(world.change(WRITER, [world.root], acl_head=old_head, epoch=0))  # old head, old epoch: fine
    world.check(world.change(WRITER, [world.root], epoch=1))


def test_wrong_space_rejected(world: World) -> None:
    with pytest.raises(Rejected, match="another space"):
        world.check(world.change(WRITER, [world.root], space=b"\x01" * 32))


def test_missing_parents(world: World) -> None:
    with pytest.raises(NotFound, match="^missing parents$"):
        world.check(world.change(WRITER, [], parent_ids=[b"\x03" * 32], lamport=2))


def test_lamport_rules(world: World) -> None:
    with pytest.raises(Rejected, match="lamport"):
        world.check(world.change(WRITER, [world.root], lamport=1))
    with pytest.raises(Rejected, match="lamport"):
        world.check(world.change(WRITER, [world.root], lamport=5))


def test_removed_member_after_removal(world: World) -> None:
    head_before = world.acl.head
    c1 = world.change(LEAVER, [world.root])
    c2 = world.change(LEAVER, [c1])
    world.accept(c1)
    world.accept(c2)
    world.remove(LEAVER, [c2.id])
    # Still valid after the removal (re-validation of what was accepted before).
    world.check(c1)
    world.check(c2)
    # A new change citing the old head (backdating) is refused ...
    late = world.change(LEAVER, [c2], acl_head=head_before, epoch=0)
    with pytest.raises(Rejected, match="^change by removed member$"):
        world.check(late)
    # ... and so is one citing the current head, where the author is no member.
    with pytest.raises(Rejected, match="^not a member$"):
        world.check(world.change(LEAVER, [c2]))
    # A concurrent change the removal did not name is refused too.
    side = world.change(LEAVER, [world.root], acl_head=head_before, epoch=0)
    with pytest.raises(Rejected, match="^change by removed member$"):
        world.check(side)


def test_removal_rule_on_a_fresh_replica(world: World) -> None:
    """A replica that learns of the removed member's changes only after the removal, parents first."""
    head_before = world.acl.head
    c1 = world.change(LEAVER, [world.root])
    c2 = world.change(LEAVER, [c1])
    late = world.change(LEAVER, [c2], acl_head=head_before, epoch=0)
    world.remove(LEAVER, [c2.id])
    assert removal_targets(c1, world.acl) == frozenset({c2.id})
    # c1 arrives alone: it cannot be judged until c2 is known.
    with pytest.raises(NotFound):
        world.check(c1)
    # With c2 and the later change received but pending, c1 is an ancestor of a named change: accepted.
    pending = {c.id: c.header.parents for c in (c1, c2, late)}
    world.accept(c1, pending)
    world.accept(c2, pending)
    with pytest.raises(Rejected, match="^change by removed member$"):
        world.check(late, pending)


def test_rejoined_member_writes_again(world: World) -> None:
    c1 = world.change(LEAVER, [world.root])
    world.accept(c1)
    world.remove(LEAVER, [c1.id])
    world.add_member(LEAVER, Role.WRITER)
    world.accept(world.change(LEAVER, [c1]))


def test_other_members_unaffected_by_removal(world: World) -> None:
    head_before = world.acl.head
    world.remove(LEAVER, [])
    world.check(world.change(WRITER, [world.root], acl_head=head_before, epoch=0))
    world.check(world.change(WRITER, [world.root]))


def test_demoted_member_cannot_backdate(world: World) -> None:
    """A writer demoted to reader: what it wrote (named by the demotion) stays valid; nothing new counts, whatever
    ACL head it cites (issue 10, item 2)."""
    head_before = world.acl.head
    c1 = world.change(WRITER, [world.root])
    c2 = world.change(WRITER, [c1])
    world.accept(c1)
    world.accept(c2)
    world.records.append(parse_record(make_role_change(OWNER, world.acl, WRITER.public, Role.READER, world.now(),
                                                       [c2.id])))
    world.check(c1)
    world.check(c2)
    assert removal_targets(world.change(WRITER, [c2], acl_head=head_before), world.acl) == frozenset({c2.id})
    with pytest.raises(Rejected, match="^change by demoted member$"):
        world.check(world.change(WRITER, [c2], acl_head=head_before))
    with pytest.raises(Rejected, match="^reader may not write$"):
        world.check(world.change(WRITER, [c2]))
    # Promoted again, it writes at the new head; a demotion of an admin to writer restricts nothing.
    world.records.append(parse_record(make_role_change(OWNER, world.acl, WRITER.public, Role.ADMIN, world.now())))
    world.accept(world.change(WRITER, [c2]))
    admin_head = world.acl.head
    world.records.append(parse_record(make_role_change(OWNER, world.acl, WRITER.public, Role.WRITER, world.now())))
    world.check(world.change(WRITER, [c2], acl_head=admin_head))
