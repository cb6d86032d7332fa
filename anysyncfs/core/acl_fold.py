"""The ACL fold: from a set of verified ACL records to the canonical chain and the state at every step.

``fold`` is a pure, deterministic function of the SET of records: order and duplicates do not matter. The records
form a tree (each names one ``prev``). Top down, every record is checked (``check_step``) against the state after
its ``prev``; the state at a record is a function of its one path, so every valid record has one. Bottom up, at
every record with several valid children the fork rule picks one (each child's *branch* — the child and the path
the rule already picked below it — is resolved once, so the work is linear plus the branches compared at forks).
Every other record (a fork loser, a record the rules forbid, and everything built on either) is dropped with a
reason; its author re-applies it on the new head.

The fork rule (docs/protocol.md 20.4). For a branch b: reduced(b), the accounts it removes or demotes; burned(b),
the invites it revokes plus every invite issued or used by an account in reduced(b) (they know its secret).
Powers (accounts, invites) *discredit* a record authored by one of the accounts or joining with one of the invites,
and, transitively, whatever that record empowers. ``c`` *overrules* ``d`` when the powers of ``c`` that survive
``d``'s counter-attack discredit a record of ``d`` (``d`` counter-attacks only with records ``c`` leaves
standing). One candidate beats another if it overrules it and is not overruled back; otherwise by rank: most
accounts reduced by *established admins* (the fork point's owner and admins that neither branch reduces), most
records by them, most accounts reduced, lowest ID. The candidate that beats every other wins.

Why a removal an honest replica has seen is never undone by records added later. Adversaries: accounts the honest
chain reduces (removed, or demoted), from their reduction on, with the secrets of the invites they issued or used,
and holders of used reader/writer tickets. Claim: for any set of records holding an honest prefix and adversary
records revealed by it, the canonical chain contains the honest prefix up to its last reduction R*. Induction on
the deepest divergence point, from R* upwards. At an honest record H above R*, the honest child c has, by the
induction hypothesis, the honest path to R* in its branch, so reduced(c) holds every adversary that could sign
at H (an admin at H is reduced later, and only by the owner, since only the owner acts on admins) and burned(c)
every invite an adversary knows except used tickets. Any other child d was signed by adversaries only. Every
record of d by a reduced account, or joining with a burned invite, or empowered by one, is discredited by c's full
powers; what remains of d are joins with used reader/writer tickets, which have no powers. So ``d`` has nothing
standing against ``c``, ``c`` keeps its full powers, and ``c`` overrules ``d`` unless ``d`` is made of such joins
only. When ``d`` also overrules ``c`` (its raw powers hit a record of ``c``), or neither overrules, the rank
decides: ``d`` holds no record of an established admin (adversary admins are reduced in ``c``), while ``c`` holds
R*; and whenever ``d`` reduces anyone at all, that power comes from an adversary that was an admin (or joined
with an admin invite), whose first reduction in ``c`` is the owner's: ``c`` then has a reduction by an
established admin. So ``c`` beats every ``d`` and is picked at H; R* and
every reduction before it stay. Residual cases (docs/protocol.md 20.4): honest admins racing with different
removals, a leaked ticket of an admin invite, records of an admin whose demotion this replica has not seen yet.
``tests/unit/test_acl_fork_property.py`` checks the claim on random adversarial histories.

The permission rules (``check_step``) live here too, so the fold and the record builders share one definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import AuthenticationFailed, NotFound, Rejected
from . import crypto
from .acl_records import (
    EPOCH_CHAIN_CONTEXT,
    ZERO_ID,
    AclRecord,
    Genesis,
    Invite,
    Join,
    Kind,
    Remove,
    RevokeInvite,
    Role,
    RoleChange,
)


@dataclass(frozen=True, slots=True)
class InviteState:
    """An invite as the chain knows it."""

    invite_public: bytes
    role: Role
    expires_us: int  # 0 = never
    inviter: bytes  # account that issued it (it knows the invite secret)
    used_by: bytes | None = None  # the account that joined with it
    revoked: bool = False  # by a RevokeInvite, or by the removal of its inviter

    @property
    def outstanding(self) -> bool:
        """Unused and unrevoked: still entitled to new epoch keys."""
        return self.used_by is None and not self.revoked


@dataclass(frozen=True, slots=True)
class AclState:
    """Members, roles, key epoch and invites after some record of the chain. Read-only."""

    owner: bytes
    epoch: int
    members: Mapping[bytes, Role]
    invites: Mapping[bytes, InviteState]  # invite record ID -> state
    invite_publics: frozenset[bytes]  # every invite key ever used on the chain (each may serve one invite only)

    def role_of(self, account: bytes) -> Role | None:
        return self.members.get(account)

    def key_recipients(self, removed: bytes) -> list[bytes]:
        """Who must get the new epoch key when ``removed`` leaves: every remaining member and every outstanding
        invite, except invites issued by the removed member (it knows their secrets). Sorted, unique."""
        out = {m for m in self.members if m != removed}
        out |= {i.invite_public for i in self.invites.values() if i.outstanding and i.inviter != removed}
        return sorted(out)


def genesis_state(record: AclRecord) -> AclState:
    return AclState(record.author, 0, MappingProxyType({record.author: Role.OWNER}), MappingProxyType({}), frozenset())


# ---------------------------------------------------------------------------------------------------- rules
def _require_admin(state: AclState, author: bytes) -> Role:
    role = state.role_of(author)
    if role is None:
        raise Rejected("ACL author is not a member")
    if role < Role.ADMIN:
        raise Rejected("only the owner or an admin may change the ACL")
    return role


def _require_power_over(author_role: Role, target_role: Role, what: str) -> None:
    """An admin acts on readers and writers only; the owner on everyone but itself."""
    if target_role == Role.OWNER:
        raise Rejected(f"nobody may {what} the owner")
    if author_role == Role.ADMIN and target_role >= Role.ADMIN:
        raise Rejected(f"only the owner may {what} an admin")


def check_step(state: AclState, space_id: bytes, head: bytes, record: AclRecord) -> None:
    """Raise :class:`Rejected` unless ``record`` may extend the chain whose head is ``head`` with ``state``."""
    kind = record.kind
    if record.space_id != space_id:
        raise Rejected("ACL record belongs to another space")
    if record.prev != head:
        raise Rejected("ACL record does not extend the head")
    if isinstance(kind, Genesis):
        raise Rejected("a genesis may only be the chain root")
    if isinstance(kind, Join):
        invite = state.invites.get(kind.invite_id)
        if invite is None:
            raise Rejected("join: invite is not on the chain")
        if invite.invite_public != kind.invite_public:
            raise Rejected("join: invite key does not match the invite")
        if invite.revoked:
            raise Rejected("join: invite was revoked")
        if invite.used_by is not None:
            raise Rejected("join: invite was already used")
        if invite.expires_us and record.created_us > invite.expires_us:
            raise Rejected("join: invite expired")
        if record.author in state.members:
            raise Rejected("join: already a member")
        return
    author_role = _require_admin(state, record.author)
    if isinstance(kind, Invite):
        if kind.role >= Role.ADMIN and author_role != Role.OWNER:
            raise Rejected("only the owner may invite an admin")
        if kind.invite_public in state.invite_publics:
            raise Rejected("invite: invite key reused")
        if kind.invite_public in state.members:
            raise Rejected("invite: invite key is a member's key")
    elif isinstance(kind, RoleChange):
        current = state.role_of(kind.member)
        if current is None:
            raise Rejected("role change: not a member")
        _require_power_over(author_role, current, "change the role of")
        if kind.role >= Role.ADMIN and author_role != Role.OWNER:
            raise Rejected("only the owner may appoint an admin")
        if kind.role == current:
            raise Rejected("role change: member already has that role")
        if kind.last_changes and not (kind.role < Role.WRITER <= current):
            raise Rejected("role change: last changes are named only by a reduction below writer")
    elif isinstance(kind, Remove):
        current = state.role_of(kind.member)
        if current is None:
            raise Rejected("remove: not a member")
        _require_power_over(author_role, current, "remove")
        if kind.new_epoch != state.epoch + 1:
            raise Rejected("remove: new epoch is not the next epoch")
        if [s.recipient for s in kind.sealed_keys] != state.key_recipients(kind.member):
            raise Rejected("remove: new key not sealed to exactly the remaining members and outstanding invites")
    elif isinstance(kind, RevokeInvite):
        invite = state.invites.get(kind.invite_id)
        if invite is None:
            raise Rejected("revoke: invite is not on the chain")
        if not invite.outstanding:
            raise Rejected("revoke: invite already used or revoked")
        if invite.role >= Role.ADMIN and author_role != Role.OWNER:
            raise Rejected("only the owner may revoke an admin invite")


def apply_step(state: AclState, record: AclRecord) -> AclState:
    """The state after ``record`` (which :func:`check_step` accepted).

    Copies only the mappings the record changes; states of one chain share the rest (the fold keeps them all).
    """
    kind = record.kind
    members: Mapping[bytes, Role] = state.members
    invites: Mapping[bytes, InviteState] = state.invites
    invite_publics = state.invite_publics
    epoch = state.epoch
    if isinstance(kind, Invite):
        new = InviteState(kind.invite_public, Role(kind.role), kind.expires_us, record.author)
        invites = {**invites, record.id: new}
        invite_publics = invite_publics | {kind.invite_public}
    elif isinstance(kind, Join):
        inv = invites[kind.invite_id]
        used = InviteState(inv.invite_public, inv.role, inv.expires_us, inv.inviter, used_by=record.author)
        invites = {**invites, kind.invite_id: used}
        members = {**members, record.author: inv.role}
    elif isinstance(kind, RoleChange):
        members = {**members, kind.member: Role(kind.role)}
    elif isinstance(kind, Remove):
        members = {m: r for m, r in members.items() if m != kind.member}
        epoch = kind.new_epoch
        revoked = {  # the removed member knows the secrets of the invites it issued
            iid: InviteState(inv.invite_public, inv.role, inv.expires_us, inv.inviter, revoked=True)
            for iid, inv in invites.items()
            if inv.inviter == kind.member and inv.outstanding
        }
        if revoked:
            invites = {**invites, **revoked}
    elif isinstance(kind, RevokeInvite):
        inv = invites[kind.invite_id]
        invites = {
            **invites,
            kind.invite_id: InviteState(inv.invite_public, inv.role, inv.expires_us, inv.inviter, revoked=True),
        }
    return AclState(
        state.owner,
        epoch,
        MappingProxyType(members) if isinstance(members, dict) else members,  # a fresh dict: freeze it
        MappingProxyType(invites) if isinstance(invites, dict) else invites,
        invite_publics,
    )


# ---------------------------------------------------------------------------------------------------- view
def reduces_below_writer(kind: Kind, before: AclState) -> bytes | None:
    """The member a record takes below WRITER (a Remove, or a RoleChange to READER of a writer or admin)."""
    if isinstance(kind, Remove):
        return kind.member
    if isinstance(kind, RoleChange):
        current = before.role_of(kind.member)
        if current is not None and kind.role < Role.WRITER <= current:
            return kind.member
    return None


class AclView:
    """The folded ACL: canonical chain, state after each of its records, and what was dropped and why.

    Besides the canonical chain it keeps the state after every *valid* record off the chain (one the rules allow
    on its own path: a fork loser and what was built on it), so a change citing such a record can still be judged
    (:meth:`citable_state`)."""

    __slots__ = ("space_id", "_records", "_chain", "_states", "_positions", "_reductions", "_last_lowered", "_tree",
                 "dropped")

    def __init__(
        self,
        space_id: bytes,
        records: Sequence[AclRecord],
        states: Sequence[AclState],
        dropped: Mapping[bytes, str],
        tree: Mapping[bytes, tuple[AclRecord, AclState]] | None = None,
    ) -> None:
        self.space_id = space_id
        self._records = tuple(records)
        self._states = tuple(states)
        self._chain = tuple(r.id for r in records)
        self._positions = {rid: i for i, rid in enumerate(self._chain)}
        # member -> [(chain position, "removed" | "demoted", last_changes)] of its reductions below WRITER (Remove,
        # RoleChange to READER): validation asks this for every change.
        self._reductions: dict[bytes, list[tuple[int, str, frozenset[bytes]]]] = {}
        # member -> chain position of the last record that removed it or lowered its role (to any lower role)
        self._last_lowered: dict[bytes, int] = {}
        for pos, r in enumerate(self._records):
            if pos == 0:
                continue
            lowered = _reduction_target(r.kind, self._states[pos - 1])
            if lowered is not None:
                self._last_lowered[lowered] = pos
            member = reduces_below_writer(r.kind, self._states[pos - 1])
            if member is not None:
                assert isinstance(r.kind, (Remove, RoleChange))
                what = "removed" if isinstance(r.kind, Remove) else "demoted"
                self._reductions.setdefault(member, []).append((pos, what, frozenset(r.kind.last_changes)))
        # every valid record (on the chain or not) -> (record, state after it)
        self._tree: Mapping[bytes, tuple[AclRecord, AclState]] = (
            tree if tree is not None else {r.id: (r, st) for r, st in zip(self._records, self._states)})
        self.dropped: Mapping[bytes, str] = MappingProxyType(dict(dropped))

    @property
    def head(self) -> bytes:
        return self._chain[-1]

    @property
    def current(self) -> AclState:
        return self._states[-1]

    @property
    def chain(self) -> tuple[bytes, ...]:
        return self._chain

    @property
    def records(self) -> tuple[AclRecord, ...]:
        """The canonical records, genesis first."""
        return self._records

    def position(self, record_id: bytes) -> int | None:
        return self._positions.get(record_id)

    def state_at(self, record_id: bytes) -> AclState | None:
        pos = self._positions.get(record_id)
        return None if pos is None else self._states[pos]

    def record(self, record_id: bytes) -> AclRecord | None:
        pos = self._positions.get(record_id)
        return None if pos is None else self._records[pos]

    def tree_state(self, record_id: bytes) -> AclState | None:
        """The state after any valid record, on the canonical chain or off it (None: unknown or not valid)."""
        node = self._tree.get(record_id)
        return None if node is None else node[1]

    def fork_point(self, record_id: bytes) -> bytes | None:
        """The last canonical record on the path to a valid record (itself if canonical); None if not valid."""
        while record_id not in self._positions:
            node = self._tree.get(record_id)
            if node is None:
                return None
            record_id = node[0].prev
        return record_id

    def citable_state(self, record_id: bytes, author: bytes) -> tuple[AclState, bytes] | None:
        """The state a change by ``author`` citing ``record_id`` is judged at, and the canonical record its
        anti-backdating rule starts from; None if such a change cannot be judged (unknown or dropped head).

        A canonical head: its own state. A valid head off the chain (its branch lost a fork after an honest
        change cited it): its own state, provided the author was already a member at the fork point, the lost
        branch did not raise its role, nothing on the canonical chain after the fork point removed or demoted the
        author, and no removal on the lost branch changed the key epoch. So a change once accepted is not
        rejected by a reorganization that did nothing to its author, while a branch's own members (joined or
        promoted there) and anyone the canonical chain reduced get nothing from a lost branch."""
        pos = self._positions.get(record_id)
        if pos is not None:
            return self._states[pos], record_id
        node = self._tree.get(record_id)
        if node is None:
            return None
        fork = self.fork_point(record_id)
        assert fork is not None
        at_fork = self.state_at(fork)
        assert at_fork is not None
        state = node[1]
        role_at_fork = at_fork.role_of(author)
        if role_at_fork is None or state.epoch != at_fork.epoch:
            return None
        if (state.role_of(author) or 0) > role_at_fork:
            return None  # a role the lost branch granted was never granted
        if self._last_lowered.get(author, -1) > self._positions[fork]:
            return None  # the canonical chain removed or demoted the author after the fork point
        return state, fork


    def reductions_after(self, record_id: bytes, member: bytes) -> list[tuple[str, frozenset[bytes]]]:
        """("removed" | "demoted", ``last_changes``) of every reduction of ``member`` below WRITER (a Remove, or a
        RoleChange to READER) after ``record_id`` on the chain."""
        pos = self._positions.get(record_id)
        if pos is None:
            raise NotFound("ACL record is not on the canonical chain")
        return [(what, changes) for at, what, changes in self._reductions.get(member, ()) if at > pos]

    def removals_after(self, record_id: bytes, member: bytes) -> list[frozenset[bytes]]:
        """The ``last_changes`` sets of every removal of ``member`` after ``record_id`` on the chain."""
        return [changes for what, changes in self.reductions_after(record_id, member) if what == "removed"]

    def __repr__(self) -> str:
        return f"AclView(length={len(self._chain)}, head={self.head.hex()[:16]}…, epoch={self.current.epoch})"


# ---------------------------------------------------------------------------------------------------- fork rule
def _reduction_target(kind: Kind, before: AclState) -> bytes | None:
    """The member a record removes or demotes (to any lower role), if any."""
    if isinstance(kind, Remove):
        return kind.member
    if isinstance(kind, RoleChange):
        current = before.role_of(kind.member)
        if current is not None and kind.role < current:
            return kind.member
    return None


@dataclass(frozen=True, slots=True)
class _Summary:
    """What the fork rule asks of a whole branch, built bottom up from a record and its picked child's summary
    (so every record is summarized once: the fold stays near linear however many forks there are)."""

    final: AclState  # the state at the end of the branch
    reduced: frozenset[bytes]  # accounts removed or lowered by its records
    revokes: frozenset[bytes]  # invites revoked explicitly (RevokeInvite)
    authors: frozenset[bytes]
    join_invites: frozenset[bytes]  # invites its joins use
    records_by: Mapping[bytes, int]  # author -> how many of its records
    reductions_by: Mapping[bytes, frozenset[bytes]]  # author -> the accounts its records reduce


def _with(items: frozenset[bytes], item: bytes | None) -> frozenset[bytes]:
    return items if item is None or item in items else items | {item}


@dataclass(slots=True)
class _Node:
    """A valid record of the tree: the state before and after it, and (after the bottom-up pass) the child the
    fork rule picks below it and the summary of the branch that starts here."""

    record: AclRecord
    before: AclState
    after: AclState
    children: list[_Node]
    winner: _Node | None = None
    summary: _Summary | None = None

    def summarize(self) -> None:
        below = self.winner.summary if self.winner is not None else None
        r, kind = self.record, self.record.kind
        target = _reduction_target(kind, self.before)
        revoke = kind.invite_id if isinstance(kind, RevokeInvite) else None
        joined = kind.invite_id if isinstance(kind, Join) else None
        if below is None:
            empty: frozenset[bytes] = frozenset()
            below = _Summary(self.after, empty, empty, empty, empty, MappingProxyType({}), MappingProxyType({}))
        records_by = {**below.records_by, r.author: below.records_by.get(r.author, 0) + 1}
        reductions_by: Mapping[bytes, frozenset[bytes]] = below.reductions_by
        if target is not None:
            reductions_by = {**reductions_by, r.author: _with(reductions_by.get(r.author, frozenset()), target)}
        self.summary = _Summary(below.final, _with(below.reduced, target), _with(below.revokes, revoke),
                                _with(below.authors, r.author), _with(below.join_invites, joined),
                                records_by, reductions_by)


@dataclass(frozen=True, slots=True)
class _Powers:
    """What a set of records of a branch takes away: accounts reduced, invites burned."""

    reduced: frozenset[bytes]
    burned: frozenset[bytes]


def _burned(final: AclState, reduced: frozenset[bytes], revoked: frozenset[bytes]) -> frozenset[bytes]:
    """Invites revoked, plus those whose inviter or user is reduced: they know its secret."""
    if not reduced:
        return revoked
    return revoked | {iid for iid, inv in final.invites.items() if inv.inviter in reduced or inv.used_by in reduced}


class _Branch:
    """The canonical path the fold takes from one candidate child down, with what the fork rule asks of it."""

    __slots__ = ("first", "summary", "raw", "_nodes")

    def __init__(self, first: _Node) -> None:
        assert first.summary is not None
        self.first = first
        self.summary = first.summary
        self.raw = _Powers(self.summary.reduced, _burned(self.summary.final, self.summary.reduced,
                                                         self.summary.revokes))
        self._nodes: list[_Node] | None = None

    @property
    def nodes(self) -> list[_Node]:
        """The records of the branch, walked only when a scan cannot be avoided."""
        if self._nodes is None:
            nodes: list[_Node] = []
            node: _Node | None = self.first
            while node is not None:
                nodes.append(node)
                node = node.winner
            self._nodes = nodes
        return self._nodes

    def powers(self, discredited: frozenset[int]) -> _Powers:
        """Accounts reduced and invites burned by the records not in ``discredited`` (indexes)."""
        if not discredited:
            return self.raw
        reduced: set[bytes] = set()
        revoked: set[bytes] = set()
        for i, n in enumerate(self.nodes):
            if i in discredited:
                continue
            target = _reduction_target(n.record.kind, n.before)
            if target is not None:
                reduced.add(target)
            if isinstance(n.record.kind, RevokeInvite):
                revoked.add(n.record.kind.invite_id)
        return _Powers(frozenset(reduced), _burned(self.summary.final, frozenset(reduced), frozenset(revoked)))

    def discredited_by(self, powers: _Powers) -> frozenset[int]:
        """Indexes of the records whose authority ``powers`` takes away: authored by a reduced account, a join
        with a burned invite, and (transitively) whatever such a record empowered — the account it joined or
        promoted, the invite it created."""
        if not (powers.reduced & self.summary.authors or powers.burned & self.summary.join_invites):
            return frozenset()  # nothing to start from: no scan
        accounts = set(powers.reduced)
        invites = set(powers.burned)
        out: set[int] = set()
        for i, n in enumerate(self.nodes):
            r, kind = n.record, n.record.kind
            if r.author in accounts or (isinstance(kind, Join) and kind.invite_id in invites):
                out.add(i)
                if isinstance(kind, Join):
                    accounts.add(r.author)
                elif isinstance(kind, Invite):
                    invites.add(r.id)
                elif isinstance(kind, RoleChange) and kind.role > (n.before.role_of(kind.member) or 0):
                    accounts.add(kind.member)
        return frozenset(out)


def _overrules(c: _Branch, d: _Branch) -> bool:
    """Whether ``c`` takes away the authority of a record of ``d``: it reduces an author of ``d`` (or the account
    a record of ``d`` depends on), or burns an invite a join of ``d`` uses. Only the reductions of ``c`` that
    survive ``d``'s counter-attack count, where ``d`` counter-attacks only with records ``c`` leaves standing."""
    d_standing = d.powers(d.discredited_by(c.raw))
    c_effective = c.powers(c.discredited_by(d_standing))
    return bool(d.discredited_by(c_effective))


def _rank(b: _Branch, established: frozenset[bytes]) -> tuple[int, int, int, bytes]:
    """Smaller is better: most accounts reduced by established admins, most records by them, most accounts
    reduced, lowest candidate ID."""
    summary = b.summary
    by_established = sum(summary.records_by.get(a, 0) for a in established)
    endorsed_reductions = frozenset().union(*(summary.reductions_by.get(a, frozenset()) for a in established))
    return (-len(endorsed_reductions), -by_established, -len(b.raw.reduced), b.first.record.id)


def _beats(a: _Branch, b: _Branch, admins: frozenset[bytes]) -> bool:
    """One candidate against another: the one that overrules the other (and is not overruled back) wins;
    otherwise the better rank, where established admins are the fork point's admins (and owner) that neither
    branch reduces."""
    a_over, b_over = _overrules(a, b), _overrules(b, a)
    if a_over != b_over:
        return a_over
    established = admins - a.raw.reduced - b.raw.reduced
    return _rank(a, established) < _rank(b, established)


def _choose(state: AclState, candidates: list[_Node]) -> _Node:
    """The fork rule (docs/protocol.md 20.4): the candidate that beats every other one pairwise (:func:`_beats`).
    If there is none (a cycle, which needs branches that overrule each other in turn), the one with the most
    pairwise wins, then the best rank."""
    branches = [_Branch(c) for c in candidates]
    admins = frozenset(a for a, role in state.members.items() if role >= Role.ADMIN)
    wins = {id(b): sum(_beats(b, o, admins) for o in branches if o is not b) for b in branches}
    for b in branches:
        if wins[id(b)] == len(branches) - 1:
            return b.first
    everyone = admins - frozenset().union(*(b.raw.reduced for b in branches))
    return min(branches, key=lambda b: (-wins[id(b)], _rank(b, everyone))).first


def fold(space_id: bytes, records: Iterable[AclRecord]) -> AclView:
    """Fold a set of verified records of one space into its canonical chain.

    Raises :class:`NotFound` when no genesis of this space is among the records.
    """
    by_id: dict[bytes, AclRecord] = {}
    for r in records:
        by_id.setdefault(r.id, r)
    dropped: dict[bytes, str] = {}
    children: dict[bytes, list[AclRecord]] = {}
    for rid in sorted(by_id):  # sorted, so every children list is in ascending ID order
        r = by_id[rid]
        if r.space_id != space_id:
            dropped[rid] = "belongs to another space"
        else:
            children.setdefault(r.prev, []).append(r)

    roots = [r for r in children.get(ZERO_ID, []) if isinstance(r.kind, Genesis)]
    if not roots:
        raise NotFound("the ACL genesis of this space is missing")
    genesis = roots[0]
    for loser in roots[1:]:
        dropped[loser.id] = "another genesis has a lower ID"

    # Top down: the state after every valid record (the state at a record is a function of its one path).
    g_state = genesis_state(genesis)
    root = _Node(genesis, g_state, g_state, [])
    order = [root]
    stack = [root]
    while stack:
        node = stack.pop()
        for child in children.get(node.record.id, []):
            try:
                check_step(node.after, space_id, node.record.id, child)
            except Rejected as e:  # not allowed here, whatever else happens on this step
                dropped[child.id] = str(e)
                continue
            sub = _Node(child, node.after, apply_step(node.after, child), [])
            node.children.append(sub)
            order.append(sub)
            stack.append(sub)
    # Bottom up: the fork rule at every record with more than one allowed child (each branch already resolved).
    for node in reversed(order):
        if len(node.children) == 1:
            node.winner = node.children[0]
        elif node.children:
            node.winner = _choose(node.after, node.children)
            for loser in node.children:
                if loser is not node.winner:  # its author re-applies it on the new head
                    dropped[loser.record.id] = f"lost a fork to {node.winner.record.id.hex()[:16]}"
        node.summarize()

    chain: list[AclRecord] = []
    states: list[AclState] = []
    walk: _Node | None = root
    while walk is not None:
        chain.append(walk.record)
        states.append(walk.after)
        walk = walk.winner
    on_chain = {r.id for r in chain}
    tree = {n.record.id: (n.record, n.after) for n in order}
    for n in order:
        for child in n.children:
            if child.record.id not in on_chain and child.record.id not in dropped:
                dropped[child.record.id] = f"built on dropped record {n.record.id.hex()[:16]}"
    # Everything built on a dropped record is dropped with it; whatever remains never reached the genesis.
    frontier = list(dropped)
    while frontier:
        parent = frontier.pop()
        for child in children.get(parent, []):
            if child.id not in dropped:
                dropped[child.id] = f"built on dropped record {parent.hex()[:16]}"
                frontier.append(child.id)
    for rid in by_id:
        if rid not in on_chain and rid not in dropped:
            dropped[rid] = "previous record unknown"
    return AclView(space_id, chain, states, dropped, tree)


# ---------------------------------------------------------------------------------------------------- keys
def wrap_nonce(new_epoch: int) -> bytes:
    """AES-GCM nonce of a removal's prev_key: the new epoch, 12 bytes big-endian (each derived key is used once)."""
    return new_epoch.to_bytes(crypto.NONCE_LEN, "big")


def wrap_previous_key(space_id: bytes, new_epoch: int, new_key: bytes, previous_key: bytes) -> bytes:
    aead = crypto.Aead(crypto.derive_key(EPOCH_CHAIN_CONTEXT, new_key))
    return aead.encrypt(wrap_nonce(new_epoch), previous_key, space_id)


def unwrap_previous_key(space_id: bytes, new_epoch: int, new_key: bytes, wrapped: bytes) -> bytes:
    """Raises :class:`AuthenticationFailed` if ``new_key`` is not the key the removal started."""
    aead = crypto.Aead(crypto.derive_key(EPOCH_CHAIN_CONTEXT, new_key))
    return aead.decrypt(wrap_nonce(new_epoch), wrapped, space_id)


def _try_unseal(key: crypto.SigningKey, sealed: bytes) -> bytes | None:
    if not sealed:
        return None
    try:
        opened = crypto.unseal(key, sealed)
    except AuthenticationFailed:  # sealed to someone else, or garbage from a hostile admin
        return None
    return opened if len(opened) == crypto.KEY_LEN else None


def epoch_keys(
    view: AclView, account: crypto.SigningKey, invite_keys: Sequence[crypto.SigningKey] = ()
) -> dict[int, bytes]:
    """Every epoch key that ``account`` (or one of ``invite_keys``) can open from the canonical chain.

    Directly sealed keys come from the genesis (owner), invites, joins (sealed_self) and removals; then each
    removal's prev_key is opened with its new key, so the newest key yields all older ones.
    """
    holders = {account.public: account}
    for k in invite_keys:
        holders.setdefault(k.public, k)
    found: dict[int, bytes] = {}

    def offer(epoch: int, recipient: bytes, sealed: bytes) -> None:
        holder = holders.get(recipient)
        if holder is None or epoch in found:
            return
        key = _try_unseal(holder, sealed)
        if key is not None:
            found[epoch] = key

    removals: dict[int, Remove] = {}
    for record in view.records:
        kind = record.kind
        state = view.state_at(record.id)
        assert state is not None  # every canonical record has a state
        if isinstance(kind, Genesis):
            offer(0, record.author, kind.sealed_key)
        elif isinstance(kind, Invite):
            offer(state.epoch, kind.invite_public, kind.sealed_key)
        elif isinstance(kind, Join):
            offer(state.epoch, record.author, kind.sealed_self)
        elif isinstance(kind, Remove):
            removals[kind.new_epoch] = kind
            for entry in kind.sealed_keys:
                offer(kind.new_epoch, entry.recipient, entry.sealed)
    for epoch in sorted(removals, reverse=True):
        if epoch in found and epoch - 1 not in found:
            try:
                previous = unwrap_previous_key(view.space_id, epoch, found[epoch], removals[epoch].prev_key)
            except AuthenticationFailed:
                continue
            found[epoch - 1] = previous
    return found
