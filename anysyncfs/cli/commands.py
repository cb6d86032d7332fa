"""The commands behind :mod:`anysyncfs.cli.main`. Each takes the CLI context and returns an exit code."""

from __future__ import annotations

import socket
import stat
import sys
from typing import TYPE_CHECKING

from ..clock import format_time_us
from ..core import ids, keys, ops
from ..errors import AlreadyExists, FsckFailed, UsageError
from ..replica import files
from ..replica.fsck import fsck
from ..replica.replica import create_space, open_replica, resolve_space

if TYPE_CHECKING:
    from .context import Context

PHRASE_MAX = 4096


def cmd_init(ctx: "Context") -> int:
    home = ctx.home
    if home.has_identity():
        raise AlreadyExists(f"an identity already exists in {home.root}")
    name = ctx.args.device_name or socket.gethostname() or "device"
    fetch = ctx.args.peer or ctx.args.lan
    if (fetch or ctx.args.list_only or ctx.args.space or ctx.args.lan_wait is not None) \
            and not (ctx.args.restore and fetch) or (ctx.args.lan_wait is not None and not ctx.args.lan):
        raise UsageError("--peer, --lan, --list-only and --space go with --restore (--list-only and --space need "
                         "--peer or --lan, --lan-wait needs --lan)")
    if ctx.args.restore:
        if sys.stdin.isatty():
            print("Recovery phrase (24 words): ", end="", file=sys.stderr, flush=True)
        phrase = keys.normalize_phrase(sys.stdin.read(PHRASE_MAX))
        if fetch:
            from .vault_cmd import restore

            return restore(ctx, phrase, name)
    else:
        phrase = keys.generate_phrase()
    unlocked = home.create_identity(phrase, name, ctx.passphrase(new=True))
    if not ctx.args.restore:
        print("Your recovery phrase (write it down now; it is shown only once and restores this identity):")
        print(phrase)
    print(f"account {unlocked.identity.account_text}")
    print(f"device  {unlocked.identity.device_text} ({name})")
    return 0


def cmd_whoami(ctx: "Context") -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    print(f"account {unlocked.identity.account_text}")
    print(f"device  {unlocked.identity.device_text} ({unlocked.identity.device_name})")
    return 0


def cmd_space_create(ctx: "Context") -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = create_space(unlocked, ctx.args.name)
    print(ids.space_text(replica.space_id))
    from .vault_cmd import record_space

    record_space(ctx, replica.space_id, unlocked)
    return 0


def cmd_space_list(ctx: "Context") -> int:
    """The spaces held here on stdout (``ID  NAME``, one a line: scripts read it); then, on stderr, the spaces the
    account's vault (as this device last merged it) lists but this device does not hold, with how to fetch one."""
    from ..errors import AnysyncError
    from ..net.vault_sync import local_state, vault_keys

    unlocked = ctx.home.unlock(ctx.passphrase())
    store = ctx.home.store()
    rows = store.spaces()
    for row in rows:
        print(f"{ids.space_text(row.id)}  {row.name}")
    try:
        contents = local_state(store, vault_keys(unlocked.identity.account.seed))[0]
    except AnysyncError as e:  # a damaged vault row: the held spaces are listed all the same
        print(f"anysyncfs: WARNING: the vault kept here does not open: {e}", file=sys.stderr)
        return 0
    held = {row.id for row in rows}
    elsewhere = [e for e in contents.live() if e.space not in held]
    if elsewhere:
        print("not on this device (listed in the account's vault; to fetch one: anysyncfs space add-peer SPACE "
              "PEER, then anysyncfs sync SPACE --name NAME):", file=sys.stderr)
        for e in elsewhere:
            peers = f"peers: {', '.join(e.peers)}" if e.peers else "no peer recorded"
            print(f"  {ids.space_text(e.space)}  {e.name}  ({peers})", file=sys.stderr)
    return 0


def cmd_space_members(ctx: "Context") -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    me = unlocked.identity.account_id
    state = replica.acl.current
    for member, role in sorted(state.members.items(), key=lambda kv: (-int(kv[1]), kv[0])):
        mark = "  (you)" if member == me else ""
        print(f"{ids.account_text(member)}  {role.name.lower()}{mark}")
    return 0


def cmd_put(ctx: "Context") -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    change = files.put_file(replica, ctx.args.path, sys.stdin.buffer)
    replica.sync()  # the command's output promises the change is saved
    print(ids.change_text(change.id))
    return 0


def cmd_cat(ctx: "Context") -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    state = replica.tree
    if ctx.args.at:
        state = replica.materialise([ids.from_text(ids.PREFIX_CHANGE, ctx.args.at)])
    node = files.resolve(state, ctx.args.path)
    out = sys.stdout.buffer
    for piece in files.read_file(replica, node):
        out.write(piece)
    out.flush()
    return 0


def cmd_ls(ctx: "Context") -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    replica = open_replica(unlocked, ctx.args.space)
    for item in files.list_dir(replica.tree, ctx.args.path):
        if ctx.args.long:
            kind = {
                ops.KIND_DIR: stat.S_IFDIR, ops.KIND_SYMLINK: stat.S_IFLNK, ops.KIND_FIFO: stat.S_IFIFO,
                ops.KIND_SOCKET: stat.S_IFSOCK, ops.KIND_CHAR: stat.S_IFCHR, ops.KIND_BLOCK: stat.S_IFBLK,
            }.get(item.kind, stat.S_IFREG)  # fmt: skip
            when = format_time_us(item.mtime_ns // 1000)[:19]
            print(f"{stat.filemode(kind | item.mode)} {item.size:>12} {when} {item.name}")
        else:
            print(item.name + ("/" if item.kind == ops.KIND_DIR else ""))
    return 0


def cmd_fsck(ctx: "Context") -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    store = ctx.home.store()
    targets = [resolve_space(store, ctx.args.space)] if ctx.args.space else [r.id for r in store.spaces()]
    problems = 0
    for space_id in targets:
        report = fsck(unlocked, space_id, repair=ctx.args.repair)
        for line in report.problems:
            print(f"{ids.space_text(space_id)[:12]}…: {line}")
        for line in report.warnings:
            print(f"{ids.space_text(space_id)[:12]}…: warning: {line}")
        for line in report.repaired:
            print(f"{ids.space_text(space_id)[:12]}…: repaired: {line}")
        problems += len(report.problems)
        print(f"{ids.space_text(space_id)}: {report.summary()}", file=sys.stderr)
    if problems:
        raise FsckFailed(f"fsck found {problems} problem(s)")
    return 0
