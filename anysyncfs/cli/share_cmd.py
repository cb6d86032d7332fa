"""Sharing commands: ``space invite`` / ``invites`` / ``revoke-invite`` / ``role`` / ``remove`` and ``join``.

Every ACL change is stored here and pushed to the space's recorded peers at once (:mod:`anysyncfs.net.share`);
a mount of the space picks it up at its next sync round.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from typing import TYPE_CHECKING

from ..core import acl as acl_mod
from ..core import ids
from ..core.ticket import encode_ticket, parse_ticket
from ..errors import Incomplete, UsageError
from . import config
from .progress import ProgressBars

if TYPE_CHECKING:
    from ..net.share import AclPush, Build
    from ..replica.replica import Replica
    from .main import Context

GRANTABLE = {"reader": acl_mod.Role.READER, "writer": acl_mod.Role.WRITER, "admin": acl_mod.Role.ADMIN}
_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_EXPIRY_S = 10 * 365 * 86400
TICKET_STDIN_MAX = 64 * 1024


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                space_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = space_sub.add_parser("invite", help="invite someone: prints a ticket (a secret: it lets its holder join)")
    s.add_argument("space")
    s.add_argument("--role", required=True, choices=sorted(GRANTABLE), help="role the invite grants")
    s.add_argument("--expires", default="7d", metavar="DURATION",
                   help="how long the invite can be used: e.g. 30m, 12h, 7d (default), 2w, or never")
    s.add_argument("--qr", action="store_true", help="also draw the ticket as a QR code")
    s.set_defaults(func=cmd_invite)

    s = space_sub.add_parser("invites", help="list a space's invites (outstanding, used, revoked, expired)")
    s.add_argument("space")
    s.set_defaults(func=cmd_invites)

    s = space_sub.add_parser("revoke-invite", help="revoke an unused invite (INVITE as shown by `space invites`)")
    s.add_argument("space")
    s.add_argument("invite", metavar="INVITE", help="invite ID (acl-…)")
    s.set_defaults(func=cmd_revoke_invite)

    s = space_sub.add_parser("role", help="change a member's role")
    s.add_argument("space")
    s.add_argument("member", metavar="MEMBER", help="account ID (ac-…, as shown by `space members`)")
    s.add_argument("role", choices=sorted(GRANTABLE))
    s.set_defaults(func=cmd_role)

    s = space_sub.add_parser("remove", help="remove a member: starts a new key epoch for everyone else")
    s.add_argument("space")
    s.add_argument("member", metavar="MEMBER", help="account ID (ac-…, as shown by `space members`)")
    s.set_defaults(func=cmd_remove)

    s = sub.add_parser("join", help="join a space with an invite ticket (anysync:…)")
    s.add_argument("ticket", metavar="TICKET", help="the ticket, or - to read it from stdin (keeps it out of "
                                                   "your shell history)")
    s.add_argument("--name", help="local name for the space (default: the start of its ID)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per peer (default 60)")
    s.set_defaults(func=cmd_join)


# ---------------------------------------------------------------------------------------------- helpers
def parse_expiry(text: str) -> int | None:
    """Seconds from now for ``30m``/``12h``/``7d``/``2w``/``45s``; None for ``never``."""
    t = text.strip().lower()
    if t == "never":
        return None
    match = _DURATION.match(t)
    if not match:
        raise UsageError(f"--expires takes a duration such as 30m, 12h, 7d, 2w or never, not {text!r}")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 0 < seconds <= MAX_EXPIRY_S:
        raise UsageError("--expires must be more than 0 and at most 10 years (or never)")
    return seconds


def _is_mounted(ctx: Context, space_id: bytes) -> bool:
    from ..mounts import LOCKS_DIR, lock_held  # the mount owns the lock file format

    lock = ctx.home.root / LOCKS_DIR / f"{ids.space_text(space_id)}.lock"
    return lock.exists() and lock_held(lock)


def _apply(replica: Replica, build: Build, *, presync: bool = False) -> tuple[bytes, AclPush, list[str]]:
    """One ACL change against the peers (:func:`anysyncfs.net.share.share_change`)."""
    import functools

    import trio

    from ..net.share import share_change

    return trio.run(functools.partial(share_change, replica, build, presync=presync))


def _report_push(push: AclPush) -> None:
    for err in push.errors:
        print(f"  {err}", file=sys.stderr)
    if push.peers == 0:
        print("no peers are recorded for this space: the change is stored on this device only", file=sys.stderr)
    elif push.reached == 0:
        print("no peer could be reached: the change is stored locally; it reaches your peers at the next sync",
              file=sys.stderr)
    else:
        print(f"sent to {push.reached}/{push.peers} peers", file=sys.stderr)


def _check_delivered(push: AclPush, what: str, space: str, consequence: str = "",
                     more: list[str] | None = None) -> None:
    """Exit with :class:`Incomplete` when the change did not reach every recorded peer (or ``more`` lists other
    failures): it is stored here and goes out at the next sync, but the user (or script) must know."""
    problems = list(more or [])
    if push.reached < push.peers:
        problems.insert(0, f"{push.peers - push.reached} of {push.peers} peers could not be reached")
    if problems:
        raise Incomplete(f"{what} is stored on this device, but {'; '.join(problems)}{consequence}: run "
                         f"`anysyncfs sync {space}` when they are reachable")


def _member(text: str) -> bytes:
    return ids.from_text(ids.PREFIX_ACCOUNT, text)


# ---------------------------------------------------------------------------------------------- invites
def cmd_invite(ctx: Context) -> int:
    import functools

    import trio

    from ..net.share import create_invite, require_admin
    from ..replica.replica import now_us, open_replica

    role = GRANTABLE[ctx.args.role]
    ttl_s = parse_expiry(ctx.args.expires)
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    require_admin(replica, "invite")
    config.record_peers(ctx, config.load(), replica.space_id, config.space_names(ctx, ctx.args.space)[1])
    if not replica.store.peers(replica.space_id):
        raise UsageError("no peers are recorded for this space, so a ticket could name none to join through: add "
                         "a node first (anysyncfs space add-peer SPACE ADDRESS)")
    expires_us = 0 if ttl_s is None else now_us() + ttl_s * 1_000_000
    # The joiner may arrive while this device is offline: send the space's changes and content to the peers
    # first (a mounted space is kept in sync by its mount).
    presync = not _is_mounted(ctx, replica.space_id)
    new = trio.run(functools.partial(create_invite, replica, role, expires_us, presync=presync))
    if new.sync_errors:
        print("warning: not every peer has the space's latest changes (run `anysyncfs sync` later)", file=sys.stderr)
    ticket = encode_ticket(new.ticket)
    push, invite_id = new.push, new.invite_id
    _report_push(push)
    if push.peers and not push.reached:
        print("the joiner needs a peer that has the invite: run `anysyncfs sync` (or mount the space) once a peer "
              "is reachable", file=sys.stderr)
    when = "never expires" if not expires_us else f"expires {_when(expires_us)}"
    print(f"invite {ids.to_text(ids.PREFIX_RECORD, invite_id)} ({role.name.lower()}, {when})", file=sys.stderr)
    print("This ticket is a secret: whoever holds it can join the space until it is used, revoked or expires.",
          file=sys.stderr)
    print(ticket)
    if ctx.args.qr:
        print(render_qr(ticket))
    _check_delivered(push, "the invite", ctx.args.space, " (the joiner needs a peer that has it)",
                     ["not every peer has the space's latest changes"] if new.sync_errors else None)
    return 0


def render_qr(ticket: str) -> str:
    """The ticket as a QR code in text (upper case: QR's alphanumeric mode holds it in fewer modules)."""
    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_L, border=2)
    qr.add_data(ticket.upper())
    qr.make(fit=True)
    out = io.StringIO()
    qr.print_ascii(out=out, tty=False)
    return out.getvalue()


def _when(us: int) -> str:
    from ..net.share import format_time_us

    return format_time_us(us)


def cmd_invites(ctx: Context) -> int:
    from ..net.share import list_invites
    from ..replica.replica import open_replica

    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    invites = list_invites(replica)
    if not invites:
        print("no invites", file=sys.stderr)
    for inv in invites:
        expiry = "never expires" if not inv.expires_us else f"expires {_when(inv.expires_us)}"
        status = inv.status
        if inv.used_by is not None:
            status = f"used by {ids.account_text(inv.used_by)}"
        print(f"{ids.to_text(ids.PREFIX_RECORD, inv.id)}  {inv.role.name.lower():6}  {status}  "
              f"created {_when(inv.created_us)}, {expiry}")
    return 0


def cmd_revoke_invite(ctx: Context) -> int:
    from ..net.share import revoke_builder
    from ..replica.replica import open_replica

    invite_id = ids.from_text(ids.PREFIX_RECORD, ctx.args.invite)
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    push = _apply(replica, revoke_builder(invite_id))[1]
    _report_push(push)
    print(f"{ids.space_text(replica.space_id)}: invite {ctx.args.invite} revoked")
    _check_delivered(push, "the revocation", ctx.args.space, " (the ticket still works there)")
    return 0


# ---------------------------------------------------------------------------------------------- members
def cmd_role(ctx: Context) -> int:
    from ..net.share import role_builder
    from ..replica.replica import open_replica

    member = _member(ctx.args.member)
    role = GRANTABLE[ctx.args.role]
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    if replica.role_of(member) == role:
        raise UsageError(f"{ctx.args.member} is a {role.name.lower()} already")
    # A reduction below writer names the member's last changes, like a removal: sync first (unless mounted).
    current = replica.role_of(member)
    demotes = current is not None and role < acl_mod.Role.WRITER <= current
    push = _apply(replica, role_builder(member, role), presync=demotes and not _is_mounted(ctx, replica.space_id))[1]
    _report_push(push)
    print(f"{ids.space_text(replica.space_id)}: {ids.account_text(member)} is now a {role.name.lower()}")
    _check_delivered(push, "the role change", ctx.args.space)
    return 0


def cmd_remove(ctx: Context) -> int:
    from ..net.share import remove_builder
    from ..replica.replica import open_replica

    member = _member(ctx.args.member)
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    if member == unlocked.identity.account_id:
        raise UsageError("you cannot remove yourself")
    # A removal names the member's last changes: sync first so none of its recent work is cut off. A mounted
    # space is kept in sync by its mount (and two processes must not sync one space at once).
    presync = not _is_mounted(ctx, replica.space_id)
    _raw, push, errors = _apply(replica, remove_builder(member), presync=presync)
    if presync and errors:
        print("warning: not every peer could be reached before the removal; changes the member made there that "
              "this device had not seen will be refused", file=sys.stderr)
    _report_push(push)
    print(f"{ids.space_text(replica.space_id)}: removed {ids.account_text(member)}; key epoch "
          f"{replica.acl.current.epoch} started for the remaining members")
    _check_delivered(push, "the removal", ctx.args.space,
                     more=["not every peer could be synced before it"] if presync and errors else None)
    return 0


# ---------------------------------------------------------------------------------------------- join
def cmd_join(ctx: Context) -> int:
    import functools

    import trio

    from ..net.share import join_space

    text = sys.stdin.read(TICKET_STDIN_MAX) if ctx.args.ticket == "-" else ctx.args.ticket
    ticket = parse_ticket(text)
    unlocked = ctx.home.unlock(ctx.passphrase())
    with ProgressBars() as bars:  # on a terminal only
        result = trio.run(functools.partial(join_space, unlocked, ticket, ctx.args.name, timeout=ctx.args.timeout,
                                            progress=bars))
    for err in result.sync.errors:
        print(f"  {err}", file=sys.stderr)
    how = "joined (completing an earlier attempt)" if result.rejoined else "joined"
    print(f"{how} {ids.space_text(result.space_id)} as {result.role.name.lower()} (local name {result.name}); "
          f"{result.sync.fetched} changes fetched, file contents are fetched when read")
    from .vault_cmd import record_space

    record_space(ctx, result.space_id, unlocked)
    if result.sync.errors:
        raise Incomplete(f"joined, but {result.sync.peers - result.sync.reached} of {result.sync.peers} peers "
                         f"could not be synced: run `anysyncfs sync {result.name}` when they are reachable")
    return 0
