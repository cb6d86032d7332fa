"""Sharing a space: invites and tickets, joining with a ticket, roles and removal, and carrying each ACL change to
the space's peers at once.

An ACL change is made on this device (:mod:`anysyncfs.core.acl` checks it against the rules every replica
applies), stored, then offered to every recorded peer with ``PutAcl``. Before building a record the device first
takes the peers' ACL records (:func:`exchange_acl`), so the record extends the newest head it can see; if it still
loses a fork to a concurrent record, it is built again on the new head (:func:`apply_acl_change`).

Joining (:func:`join_space`) needs nothing but the ticket: the joiner proves it holds the invite secret to one of
the ticket's peers (``OpenSpace`` with an invite proof), reads the space's header and ACL, opens the epoch key the
invite carries, and sends its join record (signed by its account and the invite key). Only once a peer shows the
join on its canonical chain does the device adopt the space, so a failed join leaves nothing behind and a retry
after a failure half-way (the peer has the join, this device not yet) completes the same join.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ..clock import format_minute_utc, now_us
from ..core import acl as acl_mod
from ..core import crypto, ids
from ..core.address import PeerAddress, parse_address
from ..core.ticket import MAX_PEERS, Ticket
from ..errors import (
    IntegrityError,
    NetworkError,
    NotFound,
    PermissionDenied,
    ProtocolError,
    Rejected,
    UsageError,
)
from ..protocol import messages as m
from ..replica.home import Unlocked
from ..replica.replica import Replica, adopt_space
from .connection import Connection, RemoteError, while_serving
from .endpoint import Endpoint
from .runner import Runner
from .sync import Progress, SpaceSync, SyncReport

log = logging.getLogger(__name__)

DEFAULT_INVITE_TTL_US = 7 * 86400 * 10**6  # an invite nobody named an expiry for lasts a week
ACL_ATTEMPTS = 3  # builds of one ACL record when it keeps losing forks to concurrent records
PEER_TIMEOUT_S = 60.0  # one peer, from dialling to the last reply

Build = Callable[[Replica], bytes]  # makes one ACL record on the replica's current head
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------- ACL exchange
@dataclass
class AclPush:
    """What :func:`exchange_acl` achieved: peers recorded, reached, records sent and received, per-peer errors."""

    peers: int = 0
    reached: int = 0
    sent: int = 0
    received: int = 0
    reached_addresses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def _open_as_member(conn: Connection, replica: Replica, run: Runner) -> m.SpaceInfo:
    """OpenSpace; a provider that does not hold the space yet is given it first (PushSpace)."""
    try:
        info = await conn.request(m.OpenSpace(replica.space_id))
    except RemoteError as e:
        if e.code != m.ErrorCode.NOT_FOUND:
            raise
        acl = await run(replica.acl_raws)
        await conn.request(m.PushSpace(replica.header_raw, [raw for _rid, raw in acl]))
        info = await conn.request(m.OpenSpace(replica.space_id))
    if not isinstance(info, m.SpaceInfo):
        raise ProtocolError(f"expected SpaceInfo, got {type(info).__name__}")
    return info


async def _exchange_with(conn: Connection, replica: Replica, run: Runner) -> tuple[int, int]:
    info = await _open_as_member(conn, replica, run)
    theirs = [bytes(r) for r in info.acl]
    received = await run(replica.add_acl_records, theirs) if theirs else 0
    have = set(theirs)
    # Only our canonical records: one that lost a fork here is of no use to the peer (a node refuses a
    # non-admin's), and its author re-applies it on the new head.
    missing = [raw for rid, raw in await run(replica.acl_raws)
               if raw not in have and replica.acl.position(rid) is not None]
    for i in range(0, len(missing), m.MAX_BATCH):
        reply = await conn.request(m.PutAcl(replica.space_id, missing[i : i + m.MAX_BATCH]))
        if not isinstance(reply, m.Accepted):
            raise ProtocolError(f"expected Accepted, got {type(reply).__name__}")
    return len(missing), received


async def with_connection(endpoint: Endpoint, addr: PeerAddress, work: Callable[[Connection], Awaitable[T]]) -> T:
    """Dial ``addr``, serve the connection while ``work(conn)`` runs, close it; errors come out as themselves
    (see :func:`~.connection.while_serving`)."""
    conn = await endpoint.dial(addr)
    try:
        return await while_serving(conn, functools.partial(work, conn))
    finally:
        await conn.abort("done")


async def exchange_acl(replica: Replica, endpoint: Endpoint, run: Runner, *,
                       timeout: float = PEER_TIMEOUT_S) -> AclPush:
    """Take every recorded peer's ACL records and give it ours (a provider without the space gets it whole)."""
    report = AclPush()
    rows = await run(replica.store.peers, replica.space_id)
    report.peers = len(rows)
    for row in rows:
        try:
            addr = parse_address(row.address)
            with trio.fail_after(timeout):
                sent, received = await with_connection(
                    endpoint, addr, lambda conn: _exchange_with(conn, replica, run))
        except (NetworkError, RemoteError, IntegrityError, ProtocolError, UsageError, trio.TooSlowError) as e:
            report.errors.append(f"{row.address}: {e or 'timed out'}")
            continue
        report.reached += 1
        report.reached_addresses.append(row.address)
        report.sent += sent
        report.received += received
    return report


async def apply_acl_change(replica: Replica, endpoint: Endpoint, run: Runner, build: Build, *,
                           timeout: float = PEER_TIMEOUT_S) -> tuple[bytes, AclPush]:
    """Pull the peers' ACL, build one record on the newest head, store it and push it; rebuild it on the new head
    if it lost a fork meanwhile. Returns (the record on the canonical chain — or stored locally only when no peer
    was reached —, the last push report)."""
    await exchange_acl(replica, endpoint, run, timeout=timeout)
    for _attempt in range(ACL_ATTEMPTS):
        raw = await run(build, replica)
        await run(replica.add_acl_record, raw)
        push = await exchange_acl(replica, endpoint, run, timeout=timeout)
        if replica.acl.position(crypto.blake3(raw)) is not None:
            return raw, push
        log.info("ACL record lost a fork to a concurrent change; building it again on the new head")
    raise Rejected("the ACL kept changing under this command (concurrent changes by other admins): try again")


async def share_change(replica: Replica, build: Build, *, presync: bool = False, endpoint: Endpoint | None = None,
                       run: Runner | None = None, timeout: float = PEER_TIMEOUT_S) -> tuple[bytes, AclPush, list[str]]:
    """One ACL change as the CLI makes it: with ``presync`` first a full sync with every peer (so a removal names
    the member's latest changes, and a joiner finds the space's content on the peers), then
    :func:`apply_acl_change`. Returns (record, push report, errors of the presync)."""
    endpoint = endpoint or Endpoint(replica.identity)
    run = run or Runner()
    errors: list[str] = []
    if presync:
        report = await SpaceSync(replica, endpoint, run).sync_once(per_peer_timeout=timeout * 10)
        errors = report.errors
    raw, push = await apply_acl_change(replica, endpoint, run, build, timeout=timeout)
    return raw, push, errors


@dataclass
class NewInvite:
    ticket: Ticket
    invite_id: bytes
    push: AclPush
    sync_errors: list[str]


async def create_invite(replica: Replica, role: acl_mod.Role, expires_us: int, *, presync: bool = True,
                        endpoint: Endpoint | None = None, timeout: float = PEER_TIMEOUT_S) -> NewInvite:
    """Invite for ``role`` (``expires_us`` 0 = never), pushed to the peers; the ticket names the peers reached
    first."""
    keys: list[crypto.SigningKey] = []
    raw, push, errors = await share_change(replica, invite_builder(role, expires_us, keys.append), presync=presync,
                                           endpoint=endpoint, timeout=timeout)
    ticket = ticket_for(replica, keys[-1], role, expires_us, push.reached_addresses)
    return NewInvite(ticket, crypto.blake3(raw), push, errors)


# ---------------------------------------------------------------------------------------------------- builders
def require_admin(replica: Replica, what: str) -> acl_mod.Role:
    role = replica.role
    if role is None:
        raise PermissionDenied("you are not a member of this space")
    if role < acl_mod.Role.ADMIN:
        raise PermissionDenied(f"only the owner or an admin may {what}; you are a {role.name.lower()} here")
    return role


def invite_builder(role: acl_mod.Role, expires_us: int,
                   keep: Callable[[crypto.SigningKey], None]) -> Build:
    """A builder of an invite for ``role`` that seals the current epoch key to the invite key (so the joiner
    needs no admin online); ``keep`` receives the invite key of the record built last."""

    def build(replica: Replica) -> bytes:
        require_admin(replica, "invite")
        _epoch, key = replica.current_epoch_key()
        raw, invite_key = acl_mod.make_invite(replica.identity.account, replica.acl, role, expires_us, key, now_us())
        keep(invite_key)
        return raw

    return build


def revoke_builder(invite_id: bytes) -> Build:
    def build(replica: Replica) -> bytes:
        require_admin(replica, "revoke an invite")
        invite = replica.acl.current.invites.get(invite_id)
        if invite is None:
            raise NotFound(f"no invite {ids.to_text(ids.PREFIX_RECORD, invite_id)} in this space "
                           "(see anysyncfs space invites SPACE)")
        if invite.used_by is not None:
            raise UsageError("that invite was used already: remove the member instead")
        if invite.revoked:
            raise UsageError("that invite is revoked already")
        return acl_mod.make_revoke_invite(replica.identity.account, replica.acl, invite_id, now_us())

    return build


def role_builder(member: bytes, role: acl_mod.Role) -> Build:
    """A role change; a reduction below writer names the member's last accepted changes, as a removal does, so
    nothing it signs later counts (whatever ACL head it cites)."""

    def build(replica: Replica) -> bytes:
        require_admin(replica, "change roles")
        _require_member(replica, member)
        current = replica.role_of(member)
        reduces = current is not None and role < acl_mod.Role.WRITER <= current
        last = last_changes_of(replica, member) if reduces else []
        return acl_mod.make_role_change(replica.identity.account, replica.acl, member, role, now_us(), last)

    return build


def remove_builder(member: bytes) -> Build:
    """Removal starts a new key epoch for everyone else and names the member's last accepted changes: anything
    it signs later is invalid on every replica (including the providers)."""

    def build(replica: Replica) -> bytes:
        require_admin(replica, "remove members")
        _require_member(replica, member)
        _epoch, key = replica.current_epoch_key()
        raw, _new_key = acl_mod.make_remove(replica.identity.account, replica.acl, member, key,
                                            last_changes_of(replica, member), now_us())
        return raw

    return build


def _require_member(replica: Replica, member: bytes) -> None:
    if replica.role_of(member) is None:
        raise NotFound(f"{ids.account_text(member)} is not a member of this space (see anysyncfs space members)")


def last_changes_of(replica: Replica, member: bytes) -> list[bytes]:
    """The member's accepted changes that are not ancestors of another of its accepted changes: naming these in
    a removal keeps every change it made so far valid, and nothing it makes later."""
    rows = replica.store.change_rows(replica.space_id)
    authored = {r.id for r in rows if r.author == member}
    if not authored:
        return []
    covered: set[bytes] = set()  # changes with a strict descendant authored by the member
    # A change's lamport exceeds its parents', so descending lamport visits every child before its parents.
    for r in sorted(rows, key=lambda r: (r.lamport, r.id), reverse=True):
        if r.id in authored or r.id in covered:
            covered.update(r.parents)
    last = sorted(authored - covered)
    if len(last) > acl_mod.MAX_LAST_CHANGES:
        raise UsageError(f"the member has {len(last)} unmerged lines of changes (a removal names at most "
                         f"{acl_mod.MAX_LAST_CHANGES}): let the space sync and merge first")
    return last


# ---------------------------------------------------------------------------------------------------- tickets
def ticket_for(replica: Replica, invite_key: crypto.SigningKey, role: acl_mod.Role, expires_us: int,
               first: Sequence[str] = ()) -> Ticket:
    """A ticket for an invite: the space, the invite secret and the space's recorded peers (those in ``first``,
    the peers just reached, before the others; at most MAX_PEERS)."""
    rows = replica.store.peers(replica.space_id)
    ordered = sorted(rows, key=lambda r: r.address not in first)
    peers: list[PeerAddress] = []
    for row in ordered:
        try:
            peers.append(parse_address(row.address))
        except UsageError as e:
            log.warning("peer %r left out of the ticket: %s", row.address, e)
        if len(peers) == MAX_PEERS:
            break
    return Ticket(replica.space_id, role, invite_key.seed, expires_us, tuple(peers))


@dataclass(frozen=True, slots=True)
class InviteInfo:
    """One invite of a space as ``anysyncfs space invites`` shows it."""

    id: bytes
    role: acl_mod.Role
    created_us: int
    expires_us: int
    inviter: bytes
    status: str  # "outstanding" | "used" | "revoked" | "expired"
    used_by: bytes | None


def list_invites(replica: Replica, now: int | None = None) -> list[InviteInfo]:
    """Every invite on the canonical chain, oldest first."""
    now = now_us() if now is None else now
    out = []
    for iid, inv in replica.acl.current.invites.items():
        record = replica.acl.record(iid)
        created = record.created_us if record is not None else 0
        if inv.used_by is not None:
            status = "used"
        elif inv.revoked:
            status = "revoked"
        elif inv.expires_us and now > inv.expires_us:
            status = "expired"
        else:
            status = "outstanding"
        out.append(InviteInfo(iid, inv.role, created, inv.expires_us, inv.inviter, status, inv.used_by))
    out.sort(key=lambda i: (replica.acl.position(i.id) or 0))
    return out


# ---------------------------------------------------------------------------------------------------- joining
@dataclass
class JoinResult:
    space_id: bytes
    name: str
    role: acl_mod.Role
    peer: str  # the ticket peer the join went through
    sync: SyncReport
    rejoined: bool = False  # the peer had this account's join already (a retry after a failure half-way)


class _Refused(Exception):
    """A ticket peer refused the join; tried with the next peer, reported if every peer refuses."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _refusal(e: RemoteError, addr: PeerAddress) -> Exception:
    """A clear, one-line error for a peer's refusal of an invite proof (the node says why: net/node.py)."""
    if e.code == m.ErrorCode.NOT_FOUND:  # the peer lacks the space, or the invite
        return NotFound(f"{addr.host}:{addr.port}: {e.remote_message}")
    if e.code == m.ErrorCode.FORBIDDEN:  # used, revoked, expired
        return PermissionDenied(f"{addr.host}:{addr.port} refused the invite: {e.remote_message}")
    return e


def _check_invite(view: acl_mod.AclView, ticket: Ticket, me: bytes, now: int, peer: str
                  ) -> tuple[bytes, acl_mod.InviteState] | None:
    """The invite record of the ticket, if it can still be taken up; None if this account joined with it
    already. Raises a clear error otherwise."""
    public = ticket.invite_key.public
    found = next(((iid, inv) for iid, inv in view.current.invites.items() if inv.invite_public == public), None)
    if found is None:
        if me in view.current.members:
            return None
        raise NotFound(f"this invite is not known to the peer {peer} (the inviter's device may not have "
                       "pushed it there yet)")
    _iid, inv = found
    if inv.used_by is not None:
        if inv.used_by == me:
            return None
        raise PermissionDenied("this invite was already used (by another account): ask for a new one")
    if inv.revoked:
        raise PermissionDenied("this invite was revoked: ask for a new one")
    if inv.expires_us and now > inv.expires_us:
        raise PermissionDenied(f"this invite expired on {format_minute_utc(inv.expires_us)}: ask for a new one")
    if inv.role != ticket.role:
        raise IntegrityError(f"the ticket says {ticket.role.name.lower()} but its invite grants "
                             f"{inv.role.name.lower()}: the ticket was altered")
    return found


def _fold_info(info: object, space_id: bytes) -> tuple[bytes, list[bytes], acl_mod.AclView]:
    if not isinstance(info, m.SpaceInfo):
        raise ProtocolError(f"expected SpaceInfo, got {type(info).__name__}")
    header = bytes(info.header)
    if not crypto.ct_equal(crypto.blake3(header), space_id):
        raise IntegrityError("the peer sent another space's header")
    raws = [bytes(r) for r in info.acl]
    return header, raws, acl_mod.fold(space_id, [acl_mod.parse_record(r) for r in raws])


async def _join_through(conn: Connection, addr: PeerAddress, unlocked: Unlocked, ticket: Ticket, now: int
                        ) -> tuple[bytes, list[bytes], bool]:
    """Take up the invite through one peer: (header, ACL records with our join on the canonical chain, rejoined)."""
    identity = unlocked.identity
    me = identity.account_id
    peer = f"{addr.host}:{addr.port}"
    proof = ticket.invite_key.sign(m.invite_proof_message(ticket.space_id, me, identity.device_id))
    try:
        info = await conn.request(m.OpenSpace(ticket.space_id, proof))
    except RemoteError as e:
        if e.code != m.ErrorCode.FORBIDDEN:
            raise _Refused(_refusal(e, addr)) from None
        try:  # a retry after a join that reached the peer: we are a member now and need no proof
            info = await conn.request(m.OpenSpace(ticket.space_id))
        except RemoteError:
            raise _Refused(_refusal(e, addr)) from None
    header, raws, view = _fold_info(info, ticket.space_id)
    rejoined = True
    for _attempt in range(ACL_ATTEMPTS):
        try:
            found = _check_invite(view, ticket, me, now, peer)
        except NotFound as e:
            raise _Refused(e) from None
        if found is None:
            return header, raws, rejoined
        rejoined = False
        invite_id, _inv = found
        keys = acl_mod.epoch_keys(view, identity.account, [ticket.invite_key])
        key = keys.get(view.current.epoch)
        if key is None:
            raise PermissionDenied("the invite carries no key for the space's current epoch: ask for a new invite")
        join = acl_mod.make_join(identity.account, ticket.invite_key, view, invite_id, key, now_us())
        try:
            reply = await conn.request(m.PutAcl(ticket.space_id, [join]))
        except RemoteError as e:
            if e.code != m.ErrorCode.FORBIDDEN:
                raise
            # Another record took the head first (the node refuses a fork by a non-admin): build it again on
            # the new head.
            log.info("join refused by %s (%s); building it again on the new head", peer, e.remote_message)
            info = await conn.request(m.OpenSpace(ticket.space_id, proof))  # still no member: prove the invite
        else:
            if not isinstance(reply, m.Accepted):
                raise ProtocolError(f"expected Accepted, got {type(reply).__name__}")
            info = await conn.request(m.OpenSpace(ticket.space_id))
        header, raws, view = _fold_info(info, ticket.space_id)
        if me in view.current.members:
            return header, raws, rejoined
        # Our join lost a fork to a concurrent ACL record: build it again on the new head.
    raise Rejected("the space's ACL kept changing while joining: try again")


def _local_name(unlocked: Unlocked, space_id: bytes, name: str | None) -> str:
    store = unlocked.home.store()
    rows = store.spaces()
    held = next((r for r in rows if r.id == space_id), None)
    if held is not None:
        raise UsageError(f"this device already holds {ids.space_text(space_id)} (as {held.name!r})")
    label = name or ids.space_text(space_id)[:16]
    if any(r.name == label for r in rows):
        raise UsageError(f"a space named {label!r} already exists here: choose another with --name")
    return label


async def join_space(unlocked: Unlocked, ticket: Ticket, name: str | None = None, *,
                     endpoint: Endpoint | None = None, timeout: float = PEER_TIMEOUT_S,
                     progress: Progress | None = None) -> JoinResult:
    """Join the space of ``ticket`` through the first of its peers that accepts, record its peers, and sync the
    space's changes once (file contents are fetched later, when read)."""
    now = now_us()
    if ticket.expired(now):
        raise PermissionDenied(f"this invite expired on {format_minute_utc(ticket.expires_us)}: ask for a new one")
    if not ticket.peers:
        raise UsageError("the ticket names no peer to join through: ask the inviter to add a node to the space "
                         "(anysyncfs space add-peer) and invite again")
    label = _local_name(unlocked, ticket.space_id, name)
    endpoint = endpoint or Endpoint(unlocked.identity)
    run = Runner()
    errors: list[str] = []
    refusals: list[Exception] = []
    for addr in ticket.peers:
        try:
            with trio.fail_after(timeout):
                header, raws, rejoined = await with_connection(
                    endpoint, addr, functools.partial(_join_through, addr=addr, unlocked=unlocked, ticket=ticket,
                                                      now=now))
        except _Refused as e:
            refusals.append(e.error)
            errors.append(f"{addr}: {e}")
            continue
        except (NetworkError, RemoteError, ProtocolError, trio.TooSlowError) as e:
            errors.append(f"{addr}: {e or 'timed out'}")
            continue
        except IntegrityError as e:  # bad data from this peer, or a ticket that does not match its invite
            refusals.append(e)
            errors.append(f"{addr}: {e}")
            continue
        replica = await run(adopt_space, unlocked, label, header, raws)
        for peer in ticket.peers:
            await run(replica.store.add_peer, replica.space_id, str(peer), peer.device)
        role = replica.role
        if role is None:  # the peer showed us as a member; our own fold must agree
            raise IntegrityError("joined, but this device's copy of the ACL does not list you as a member")
        report = await SpaceSync(replica, endpoint, run).sync_once(progress, per_peer_timeout=timeout)
        return JoinResult(replica.space_id, label, role, str(addr), report, rejoined)
    if refusals:
        # The most telling refusal: the invite's own state (used, revoked, expired) before "not known here".
        refusals.sort(key=lambda e: isinstance(e, NotFound))
        raise refusals[0]
    raise NetworkError("no peer of the ticket could be reached (" + "; ".join(errors[-3:]) + ")")
