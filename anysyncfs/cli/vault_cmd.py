"""The account vault on the command line: ``init --restore --peer`` brings back every space of the account;
``vault show`` / ``vault sync``; ``space rename`` / ``space leave``; and the vault update after every command that
creates, joins, renames or leaves a space or changes its providers (docs/protocol.md 25).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..core import ids
from ..core.address import parse_address
from ..core.keys import account_key_from_phrase
from ..core.vault import VaultContents, VaultEntry, leave_entry, merge, put_entry, same_entry
from ..errors import AnysyncError, NetworkError, NotFound, UsageError
from ..net.vault_sync import VaultReport, older_records, restore_fetch, summary, sync_vault, vault_keys
from ..replica.home import Unlocked
from ..store.db import Store
from .progress import ProgressBars

if TYPE_CHECKING:
    from .context import Context


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                space_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vault = sub.add_parser("vault", help="the encrypted list of this account's spaces kept by its providers")
    vsub = vault.add_subparsers(dest="vault_cmd", required=True)
    s = vsub.add_parser("show", help="fetch and merge the vault, then list the spaces it holds")
    s.set_defaults(func=cmd_vault_show)
    s = vsub.add_parser("sync", help="fetch, merge and push the vault to every provider of the account")
    s.set_defaults(func=cmd_vault_sync)

    s = space_sub.add_parser("rename", help="change the local name of a space (kept in the account's vault)")
    s.add_argument("space")
    s.add_argument("name")
    s.set_defaults(func=cmd_space_rename)
    s = space_sub.add_parser("leave", help="forget a space on this device and remove it from the account's vault")
    s.add_argument("space")
    s.set_defaults(func=cmd_space_leave)


def add_restore_options(init: argparse.ArgumentParser) -> None:
    init.add_argument("--peer", action="append", default=[], metavar="ADDRESS",
                      help="with --restore: a provider (anysync://dv-…@host:port) to fetch the account's vault from; "
                           "every space it lists is restored (repeatable)")
    init.add_argument("--lan", action="store_true",
                      help="with --restore: find this account's devices on the LAN (a mount or `sync --watch` with "
                           "discovery on), fetch the vault from them and restore every space from them too")
    init.add_argument("--lan-wait", type=float, default=None, metavar="SECONDS",
                      help="with --restore --lan: how long to listen for the account's devices (default 3)")
    init.add_argument("--list-only", action="store_true",
                      help="with --restore --peer/--lan: list the spaces of the vault, restore nothing")
    init.add_argument("--space", action="append", default=[], metavar="NAME_OR_ID",
                      help="with --restore --peer/--lan: restore only this space (repeatable)")


# ---------------------------------------------------------------------------------------------- updates
def _report(report: VaultReport, *, quiet: bool = False) -> None:
    for line in report.warnings:
        print(f"anysyncfs: WARNING: {line}", file=sys.stderr)
    if quiet and not report.providers:
        return
    print(summary(report), file=sys.stderr)
    for line in report.errors:
        print(f"  {line}", file=sys.stderr)


def _update(unlocked: Unlocked, change: Callable[[VaultContents], VaultContents] | None) -> VaultReport:
    vkeys = vault_keys(unlocked.identity.account.seed)
    return trio.run(lambda: sync_vault(unlocked.home.store(), vkeys, change))


def _space_entry(unlocked: Unlocked, space_id: bytes) -> Callable[[VaultContents], VaultContents]:
    store = unlocked.home.store()
    row = store.space(space_id)
    peers = [p.address for p in store.peers(space_id)]
    pins = store.pins(space_id)
    device = unlocked.identity.device_id

    def change(contents: VaultContents) -> VaultContents:
        have = contents.entry(space_id)
        if have is not None and same_entry(have, space_id, row.name, peers, pins):
            return contents
        return put_entry(contents, device, space_id, name=row.name, peers=peers, pins=pins)

    return change


def record_space(ctx: Context, space_id: bytes, unlocked: Unlocked | None = None) -> None:
    """After a command created or joined a space, or changed its name or providers: write it into the vault and
    push the vault. The command's own work is done: a failure here is a warning, never an error."""
    try:
        unlocked = unlocked or ctx.home.unlock(ctx.passphrase())
        _report(_update(unlocked, _space_entry(unlocked, space_id)), quiet=True)
    except AnysyncError as e:
        print(f"anysyncfs: WARNING: the vault was not updated: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- commands
def cmd_vault_sync(ctx: Context) -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    store = unlocked.home.store()
    rows = store.spaces()
    device = unlocked.identity.device_id

    def add_missing(contents: VaultContents) -> VaultContents:
        """Spaces held here that the vault has never listed (made before the vault existed, or while offline
        and its update failed); a space the vault says was left stays left."""
        for row in rows:
            if contents.entry(row.id) is None:
                contents = put_entry(contents, device, row.id, name=row.name,
                                     peers=[p.address for p in store.peers(row.id)], pins=store.pins(row.id))
        return contents

    report = _update(unlocked, add_missing)
    _report(report)
    if report.providers and not report.reached:
        raise NetworkError("no provider could be reached")
    return 0


def cmd_vault_show(ctx: Context) -> int:
    unlocked = ctx.home.unlock(ctx.passphrase())
    report = _update(unlocked, None)
    _report(report)
    held = {r.id for r in unlocked.home.store().spaces()}
    for e in report.contents.live():
        where = "here" if e.space in held else "not on this device"
        print(f"{ids.space_text(e.space)}  {e.name}  ({where}; {len(e.peers)} peer(s))")
    return 0


def cmd_space_rename(ctx: Context) -> int:
    from ..replica.replica import resolve_space

    unlocked = ctx.home.unlock(ctx.passphrase())
    store = unlocked.home.store()
    space_id = resolve_space(store, ctx.args.space)
    name = ctx.args.name.strip()
    if not name or any(ord(c) < 32 for c in name) or len(name.encode()) > 255:
        raise UsageError("a space name is 1 to 255 bytes without control characters")
    if any(r.name == name and r.id != space_id for r in store.spaces()):
        raise UsageError(f"another space is named {name!r} on this device")
    store.rename_space(space_id, name)
    print(f"{ids.space_text(space_id)}: renamed to {name}")
    record_space(ctx, space_id, unlocked)
    return 0


def cmd_space_leave(ctx: Context) -> int:
    from ..replica.home import space_mounted
    from ..replica.replica import resolve_space

    unlocked = ctx.home.unlock(ctx.passphrase())
    store = unlocked.home.store()
    space_id = resolve_space(store, ctx.args.space)
    if space_mounted(ctx.home.root, space_id):
        raise UsageError("that space is mounted: unmount it first")
    device = unlocked.identity.device_id
    from ..replica.leave import leave_space

    report = _update(unlocked, lambda c: leave_entry(c, device, space_id))
    deleted = leave_space(unlocked, space_id)
    print(f"{ids.space_text(space_id)}: left (forgotten on this device, {deleted} content file(s) deleted, and "
          f"removed from the account's vault)")
    _report(report, quiet=True)
    return 0


# ---------------------------------------------------------------------------------------------- restore
def _keep_serving_devices(store: Store, space_id: bytes, devices: list[str], errors: list[str],
                          vault_peers: list[str]) -> None:
    """After a space was fetched: forget the LAN listeners that did not serve it. A mount or ``sync --watch``
    serves one space per listener, so most of them refuse most spaces; the ones that did serve stay recorded
    (file contents are fetched from them when read; once the space is held, mDNS finds its members anyway)."""
    for address in devices:
        if address not in vault_peers and any(address in line for line in errors):
            store.remove_peer(space_id, address)


def _select(entries: list[VaultEntry], wanted: list[str]) -> list[VaultEntry]:
    if not wanted:
        return entries
    chosen: list[VaultEntry] = []
    for text in wanted:
        match = [e for e in entries if e.name == text or ids.space_text(e.space) == text]
        if not match:
            raise UsageError(f"the vault lists no space named {text!r}")
        chosen.extend(e for e in match if e not in chosen)
    return chosen


def _lan_devices(account_seed: bytes, wait: float) -> list[str]:
    """The listeners of this account's devices announced on the LAN within ``wait`` seconds (70.15)."""
    from ..net.lan import find_account_devices

    try:
        found, heard = find_account_devices(account_seed, wait)
    except OSError as e:
        raise NetworkError(f"cannot look for devices on the LAN: {e.strerror or e}") from None
    if not found:
        raise NetworkError(f"no device of this account found on the LAN within {wait:g} s ({heard} other "
                           f"announcement(s) heard): start a mount or `anysyncfs sync SPACE --watch` on one, or "
                           f"give a provider with --peer")
    print(f"found {len(found)} listener(s) of this account's devices on the LAN", file=sys.stderr)
    return [str(a) for a in found]


def restore(ctx: Context, phrase: str, device_name: str) -> int:
    """``init --restore --peer … / --lan``: the identity, then every space the vault lists (or those asked for),
    from the providers given, the account's devices on the LAN, or both."""
    from ..net.fetch_space import sync_space
    from ..net.lan import DEFAULT_LAN_WAIT_S

    account = account_key_from_phrase(phrase)
    vkeys = vault_keys(account.seed)
    addresses = [str(parse_address(a)) for a in ctx.args.peer]
    wait = DEFAULT_LAN_WAIT_S if ctx.args.lan_wait is None else ctx.args.lan_wait
    if not 0 < wait <= 60:
        raise UsageError("--lan-wait is between 0 and 60 seconds")
    devices = _lan_devices(account.seed, wait) if ctx.args.lan else []
    fetched = restore_fetch(addresses, vkeys, devices=devices, account=account)
    found = [f for f in fetched if f.record is not None and f.contents is not None]
    rollbacks = older_records(fetched)
    for f in fetched:
        if f.error and (found or "does not verify" in f.error):
            print(f"anysyncfs: WARNING: {f.error}", file=sys.stderr)
    for line in rollbacks:
        print(f"anysyncfs: WARNING: {line}", file=sys.stderr)
    sources = [*addresses, *devices]
    if not found:
        if all(f.error and "does not verify" not in f.error for f in fetched):
            what = "no provider could be reached" if not devices else "no provider or device could be reached"
            raise NetworkError(f"{what}: " + "; ".join(f.error or "" for f in fetched))
        raise NotFound("no vault for this recovery phrase on " + ", ".join(sources))
    contents = merge(*(f.contents for f in found if f.contents is not None))
    newest = max((f.record for f in found if f.record is not None), key=lambda r: r.version)
    selected = _select(contents.live(), ctx.args.space)
    if ctx.args.list_only:
        for e in contents.live():
            print(f"{ids.space_text(e.space)}  {e.name}")
        return 0
    unlocked = ctx.home.create_identity(phrase, device_name, ctx.passphrase(new=True))
    print(f"account {unlocked.identity.account_text}")
    print(f"device  {unlocked.identity.device_text} ({device_name})")
    store = unlocked.home.store()
    # The newest record becomes this device's vault (when providers disagree, the next update merges the rest).
    store.put_vault(vkeys.discovery_id, newest.version, newest.raw, newest.version)
    failed: list[str] = []
    with ProgressBars() as bars:
        bars("spaces", 0, len(selected))
        for done, e in enumerate(selected, start=1):
            for text in [*e.peers, *devices]:
                addr = parse_address(text)
                store.add_peer(e.space, str(addr), addr.device)
            try:
                report = sync_space(unlocked, e.space, name=e.name, content=False, progress=bars, timeout=60.0)
            except AnysyncError as err:
                failed.append(f"{ids.space_text(e.space)} ({e.name}): {err}")
            else:
                _keep_serving_devices(store, e.space, devices, report.errors, e.peers)
                if not any(r.id == e.space for r in store.spaces()):
                    failed.append(f"{ids.space_text(e.space)} ({e.name}): " + ("; ".join(report.errors) or
                                                                              "no peer serves it"))
                else:
                    for node_id in e.pins:
                        store.add_pin(e.space, node_id)
                    print(f"restored {ids.space_text(e.space)}  {e.name}  ({report.fetched} changes)")
            bars("spaces", done, len(selected))
    if failed:
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        raise NetworkError(f"{len(failed)} of {len(selected)} spaces could not be restored (their peers are "
                           f"recorded: `anysyncfs sync SPACE_ID --name NAME` later)")
    print(f"{len(selected)} space(s) restored; file contents are fetched when read", file=sys.stderr)
    return 0
