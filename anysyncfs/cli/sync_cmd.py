"""Network commands: ``node serve`` / ``gc``, ``space add-peer`` / ``peers`` / ``remove-peer``, ``sync``, ``status``."""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import ids
from ..core.address import parse_address
from ..errors import AnysyncError, Incomplete, NetworkError, NotFound, UsageError
from ..replica.unreadable import STATUS_IDS_MAX as UNREADABLE_IDS_SHOWN
from . import config
from .node_backends import add_backend_options, open_backends
from .progress import ProgressBars

if TYPE_CHECKING:
    from ..store.db import Store
    from .context import Context

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                space_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="run a provider node").add_subparsers(dest="node_cmd", required=True)
    s = node.add_parser("serve", help="serve spaces to their members (foreground; prints its address)")
    s.add_argument("--listen", metavar="HOST:PORT", help="default: listen in config.toml, else 127.0.0.1:7733")
    s.add_argument("--data", type=Path, required=True, help="directory for the node's data (with --db and --blobs: "
                   "only its identity, which every process of one deployment shares)")
    add_backend_options(s)
    s.add_argument("--quota", default="10G", metavar="SIZE",
                   help="bytes of changes, ACL records and blobs per space (default 10G)")
    s.add_argument("--quota-per-account", default="10G", metavar="SIZE",
                   help="the same over all the spaces one account owns; each space is charged to the account that "
                        "signed its header (default 10G)")
    s.add_argument("--quota-total", metavar="SIZE",
                   help="the same over every space this node holds (default: 100G, or 90%% of the disk room the "
                        "node has — free space plus what it stores — if that is less)")
    s.add_argument("--max-spaces-per-account", type=_positive, default=100, metavar="N",
                   help="spaces one account may own here (default 100)")
    s.add_argument("--allow-account", action="append", default=[], metavar="ac-…",
                   help="only these accounts may store NEW spaces here (repeatable; default: any member of the "
                        "space it offers, within the quotas)")
    s.add_argument("--max-connections-per-address", type=_positive, default=16, metavar="N",
                   help="connections open at once from one IP address (IPv6: one /64); more are refused at "
                        "accept (default 16)")
    s.add_argument("--max-connections", type=_positive, default=512, metavar="N",
                   help="connections open at once in total (default 512)")
    s.add_argument("--max-in-flight", default="32M", metavar="SIZE",
                   help="request bytes one connection may have in flight; beyond, the node stops reading it until "
                        "it has answered (default 32M)")
    s.add_argument("--max-requests-in-flight", type=_positive, default=64, metavar="N",
                   help="requests one connection may have in flight (default 64)")
    s.add_argument("--gc-grace", default="24h", metavar="DURATION",
                   help="how long an uploaded blob may wait for a change that references it before it is "
                        "collected (default 24h; e.g. 90m, 2d)")
    s.add_argument("--gc-interval", default="1h", metavar="DURATION",
                   help="time between two collections of unreferenced blobs (default 1h; 0 never)")
    s.add_argument("--vault-quota", default="128K", metavar="SIZE",
                   help="bytes one account vault may hold here (default 128K; the node holds at most 10000 vaults)")
    s.set_defaults(func=cmd_node_serve, needs_identity=False)
    s = node.add_parser("gc", help="collect now the blobs no accepted change references (on the SQLite default "
                                   "the node must not be serving this data directory: a serving node collects by "
                                   "itself; on PostgreSQL it may, as each space is collected under the database's "
                                   "write lock)")
    s.add_argument("--data", type=Path, required=True, help="the node's data directory (with --db and --blobs: "
                   "only its identity)")
    add_backend_options(s)
    s.add_argument("--gc-grace", default="24h", metavar="DURATION",
                   help="keep blobs uploaded less than this long ago (default 24h; 0 collects every "
                        "unreferenced blob: only when no device is between uploading and committing)")
    s.set_defaults(func=cmd_node_gc, needs_identity=False)

    s = space_sub.add_parser("add-peer", help="record a peer or provider (anysync://dv-…@host:port) for a space")
    s.add_argument("space", help="space name or ID (an ID also for a space this device does not hold yet)")
    s.add_argument("address")
    s.set_defaults(func=cmd_add_peer)
    s = space_sub.add_parser("remove-peer", help="forget a peer of a space")
    s.add_argument("space")
    s.add_argument("address")
    s.set_defaults(func=cmd_remove_peer)
    s = space_sub.add_parser("peers", help="list the peers recorded for a space")
    s.add_argument("space")
    s.set_defaults(func=cmd_peers)

    s = sub.add_parser("sync", help="reconcile a space once with every known peer, then exit (--watch: keep it "
                                    "in sync until stopped)")
    s.add_argument("space", help="space name or ID (an ID fetches a space this device does not hold yet)")
    s.add_argument("--name", help="local name for a space fetched for the first time")
    s.add_argument("--metadata-only", action="store_true", help="fetch changes but not file contents")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per peer (default 600)")
    s.add_argument("--watch", action="store_true",
                   help="keep syncing until SIGINT/SIGTERM, without a mount: dial peers, accept members' devices, "
                        "find members on the LAN")
    s.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT…]",
                   help="with --watch: listen=HOST:PORT|off (default all interfaces, port 7734 or a free one), "
                        "discovery=on|off (mDNS, default on), sync_interval=SECONDS")
    s.set_defaults(func=cmd_sync)

    s = sub.add_parser("status", help="peers, pending changes and blobs, last sync of each space")
    s.add_argument("space", nargs="?")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--watch", action="store_true", help="keep showing it, refreshed every --interval (Ctrl-C ends)")
    s.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh period of --watch "
                                                                                  "(default 2)")
    s.set_defaults(func=cmd_status)


# ---------------------------------------------------------------------------------------------- node
def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"needs a whole number of at least 1, got {text!r}")
    return int(text)


def _size_option(name: str, text: str) -> int:
    from ..fs.mount import parse_size

    size = parse_size(text)
    if size < 1:
        raise UsageError(f"{name} needs a size of at least 1 byte, got {text!r}")
    return size


def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen needs HOST:PORT, got {text!r}")
    return host, int(port)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_duration(text: str, option: str) -> float:
    """``"90"`` / ``"90s"``, ``"15m"``, ``"24h"``, ``"2d"`` -> seconds."""
    m = _DURATION.match(text.strip().lower())
    if m is None:
        raise UsageError(f"{option} needs a duration such as 90s, 15m, 24h or 2d, not {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


LOCK_FILE = "node.lock"
# Test-only: seconds added to the clock a node collects unreferenced blobs by (tests let a day pass this way).
TEST_CLOCK_ENV = "ANYSYNCFS_INSECURE_TEST_CLOCK_OFFSET_S"


def node_clock() -> Callable[[], int]:
    """µs now for the node's blob collection: the wall clock, moved by :data:`TEST_CLOCK_ENV` when set."""
    text = os.environ.get(TEST_CLOCK_ENV)
    if not text:
        return lambda: time.time_ns() // 1000
    try:
        offset_us = int(float(text) * 1e6)
    except ValueError:
        raise UsageError(f"{TEST_CLOCK_ENV} must be a number of seconds") from None
    log.warning("test clock: collecting blobs as if it were %s s later", text)
    return lambda: time.time_ns() // 1000 + offset_us


def lock_node_data(data: Path) -> int:
    """Hold ``<data>/node.lock`` (flock; released when the process ends or the descriptor closes): one process
    at a time serves or collects a data directory, so a collection never races an upload."""
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"{data} is in use by another anysyncfs node (a serving node collects by itself)") from None
    return fd


def cmd_node_serve(ctx: Context) -> int:
    import trio

    from ..net.limits import ConnectionLimits
    from ..net.node import Node

    a = ctx.args
    host, port = _host_port(a.listen or config.load().listen.value)
    limits = ConnectionLimits(max_in_flight_bytes=_size_option("--max-in-flight", a.max_in_flight),
                              max_in_flight_requests=a.max_requests_in_flight,
                              max_per_address=a.max_connections_per_address, max_connections=a.max_connections)
    total = None if a.quota_total is None else _size_option("--quota-total", a.quota_total)  # None: from the disk
    quotas = dict(quota_bytes=_size_option("--quota", a.quota),
                  account_quota_bytes=_size_option("--quota-per-account", a.quota_per_account),
                  total_quota_bytes=total, max_spaces_per_account=a.max_spaces_per_account)
    grace = parse_duration(a.gc_grace, "--gc-grace")
    interval = parse_duration(a.gc_interval, "--gc-interval")
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    allowed = frozenset(ids.from_text(ids.PREFIX_ACCOUNT, acct) for acct in a.allow_account) or None
    db, blobs = open_backends(a)
    # One process per SQLite database (its lock file); a PostgreSQL database takes several at once.
    lock = lock_node_data(a.data) if db is None else None
    from ..replica.vault_board import VaultPolicy

    node = Node(a.data, db=db, blobs=blobs, allowed_accounts=allowed, limits=limits, gc_grace_us=int(grace * 1e6),
                gc_interval=interval, clock=node_clock(),
                vault_policy=VaultPolicy(per_vault=_size_option("--vault-quota", a.vault_quota)), **quotas)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(node.serve, host, port)
            except OSError as e:
                raise NetworkError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
            nursery.start_soon(node.collect_periodically)
            nursery.start_soon(node.follow_other_processes)
            bound = listeners[0].socket.getsockname()[1]
            # The receiver first: whoever reads the address may stop the node at once, and must get a clean exit.
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                print(node.address(host, bound), flush=True)
                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    finally:
        node.close()
        if lock is not None:
            os.close(lock)
    return 0


def cmd_node_gc(ctx: Context) -> int:
    from ..net.node import Node

    a = ctx.args
    grace = parse_duration(a.gc_grace, "--gc-grace")
    db, blobs = open_backends(a)
    if db is None and not (a.data / "node.db").exists():
        raise UsageError(f"{a.data} holds no node data")
    if db is not None and not (a.data / "node.identity").exists():
        raise UsageError(f"{a.data} holds no node identity (give the --data of the nodes serving that database)")
    # One process per SQLite database (its lock file). On PostgreSQL the serving processes may go on: each space
    # is collected under the database's write lock, and a blob object is deleted only once no space links it.
    lock = lock_node_data(a.data) if db is None else None
    try:
        node = Node(a.data, db=db, blobs=blobs, gc_grace_us=int(grace * 1e6), clock=node_clock())
        try:
            done = node.collect_garbage_now()
        finally:
            node.close()
    finally:
        if lock is not None:
            os.close(lock)
    print(f"unlinked {done.unlinked} blob(s) ({done.unlinked_bytes} bytes) from their spaces; "
          f"deleted {done.files_deleted} file(s) ({done.file_bytes} bytes)")
    return 0


# ---------------------------------------------------------------------------------------------- peers
def _space_id(ctx: Context, text: str) -> bytes:
    from ..replica.replica import resolve_space

    try:
        return resolve_space(ctx.home.store(), text)
    except NotFound:
        if text.startswith(ids.PREFIX_SPACE + "-"):
            return ids.from_text(ids.PREFIX_SPACE, text)
        raise


def cmd_add_peer(ctx: Context) -> int:
    addr = parse_address(ctx.args.address)
    space_id = _space_id(ctx, ctx.args.space)
    ctx.home.store().add_peer(space_id, str(addr), addr.device)
    print(f"{ids.space_text(space_id)}: peer {addr}")
    _record_in_vault(ctx, space_id)
    return 0


def _record_in_vault(ctx: Context, space_id: bytes) -> None:
    """The providers of a space held here changed: so does the account's vault (cli/vault_cmd.py)."""
    from .vault_cmd import record_space

    if any(r.id == space_id for r in ctx.home.store().spaces()):
        record_space(ctx, space_id)


def cmd_remove_peer(ctx: Context) -> int:
    addr = parse_address(ctx.args.address)
    space_id = _space_id(ctx, ctx.args.space)
    if not ctx.home.store().remove_peer(space_id, str(addr)):
        raise NotFound(f"{addr} is not a peer of that space")
    _record_in_vault(ctx, space_id)
    return 0


def cmd_peers(ctx: Context) -> int:
    space_id = _space_id(ctx, ctx.args.space)
    for row in ctx.home.store().peers(space_id):
        print(f"{row.address}  last sync {_when(row.last_sync_us)}{'  error: ' + row.last_error if row.last_error else ''}")
    return 0


def _when(us: int | None) -> str:
    if not us:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(us / 1e6))


# ---------------------------------------------------------------------------------------------- sync
def cmd_sync(ctx: Context) -> int:
    from ..net.fetch_space import sync_space

    unlocked = ctx.home.unlock(ctx.passphrase())
    space_id = _space_id(ctx, ctx.args.space)
    if ctx.args.watch:
        from .watch_cmd import watch_space

        return watch_space(unlocked, space_id, ctx.args.options)
    if ctx.args.options:
        raise UsageError("-o is for sync --watch")
    names = config.space_names(ctx, ctx.args.space)[1] + ((ctx.args.name,) if ctx.args.name else ())
    config.record_peers(ctx, config.load(), space_id, names)
    with ProgressBars() as bars:
        report = sync_space(unlocked, space_id, name=ctx.args.name, content=not ctx.args.metadata_only,
                            progress=bars, timeout=ctx.args.timeout)
    print(f"{ids.space_text(space_id)}: {report.reached}/{report.peers} peers reached, {report.fetched} changes "
          f"fetched, {report.sent} sent, {report.blobs_uploaded} blobs uploaded, {report.blobs_fetched} fetched")
    for err in report.errors:
        print(f"  {err}", file=sys.stderr)
    if report.peers == 0:
        raise UsageError("no peers are recorded for this space (anysyncfs space add-peer SPACE ADDRESS)")
    if report.reached == 0:
        raise NetworkError("no peer could be reached")
    missing = [f"{report.peers - report.reached} of {report.peers} peers failed"] if report.reached < report.peers else []
    if report.blobs_failed:
        missing.append(f"{report.blobs_failed} blobs could not be fetched")
    if missing or report.errors:
        raise Incomplete(f"sync incomplete: {', '.join(missing) or report.errors[0]}; run it again when the peers "
                         "are reachable")
    return 0


# ---------------------------------------------------------------------------------------------- status
def cmd_status(ctx: Context) -> int:
    if not ctx.args.watch:
        _print_status(ctx, _status(ctx))
        return 0
    if not 0.1 <= ctx.args.interval <= 3600:
        raise UsageError("--interval must be between 0.1 and 3600 seconds")
    return watch_status(ctx)


def watch_status(ctx: Context) -> int:
    """Redraw the status every ``--interval`` seconds until Ctrl-C (or SIGTERM), which ends it with exit code 0. On a
    terminal the screen is cleared before each view; otherwise each view is printed after a time stamp line
    (with --json: one JSON document per line)."""
    tty = sys.stdout.isatty()
    stop = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            rows = _status(ctx)
            if ctx.args.json:
                print(json.dumps(rows), flush=True)
                time.sleep(ctx.args.interval)
                continue
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")  # home, clear screen
            print(f"anysyncfs status at {time.strftime('%H:%M:%S')} (every {ctx.args.interval:g} s; Ctrl-C ends)")
            _print_status(ctx, rows)
            sys.stdout.flush()
            time.sleep(ctx.args.interval)
    except KeyboardInterrupt:
        print()
        return 0
    finally:
        signal.signal(signal.SIGTERM, stop)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends --watch as Ctrl-C does


def _status(ctx: Context) -> list[dict[str, Any]]:
    from ..replica.home import status_path
    from ..replica.ledger import ACL_HISTORY_CHANGED

    store = ctx.home.store()
    rows = store.spaces()
    if ctx.args.space:
        wanted = _space_id(ctx, ctx.args.space)
        rows = [r for r in rows if r.id == wanted]
        if not rows:
            raise NotFound(f"this device does not hold {ctx.args.space}")
    out: list[dict[str, Any]] = []
    for row in rows:
        live = _read_status(status_path(ctx.home.root, row.id))
        live_peers = {p["address"]: p for p in live.get("peers", [])} if live else {}
        peers = _peers_status(store, row.id, live_peers)
        warnings = [{"provider": ids.device_text(w.provider), "address": w.address, "kind": w.kind,
                     "device": ids.device_text(w.device), "counter": w.counter, "message": w.message,
                     "first_us": w.first_us, "last_us": w.last_us} for w in store.provider_warnings(row.id)]
        unreadable = list(store.unreadable_changes(row.id))
        out.append({
            "space": ids.space_text(row.id), "name": row.name, "mounted": live is not None,
            "blobs_to_upload": store.count_pending_uploads(row.id), "peers": peers, "warnings": warnings,
            "listen": list(live.get("listen", [])) if live else [],  # this device's anysync://dv-…@HOST:PORT
            # accepted changes whose payload does not open or decode here: kept, skipped by the fold (fsck lists
            # them with their reasons)
            "unreadable_changes": len(unreadable),
            "unreadable_change_ids": [ids.change_text(c) for c in unreadable[:UNREADABLE_IDS_SHOWN]],
            "rejected_after_acl_change": store.count_rejected_with_reason(row.id, ACL_HISTORY_CHANGED),
        })
    return out


def _print_status(ctx: Context, out: list[dict[str, Any]]) -> None:
    if ctx.args.json:
        print(json.dumps(out, indent=1))
        return
    for s in out:
        print(f"{s['space']}  {s['name']}  {'mounted (syncing)' if s['mounted'] else 'not mounted'}")
        for address in s["listen"]:
            print(f"  listening at {address}")
        print(f"  blobs not yet uploaded: {s['blobs_to_upload']}")
        if s["unreadable_changes"]:
            more = s["unreadable_changes"] - len(s["unreadable_change_ids"])
            print(f"  unreadable changes (skipped): {s['unreadable_changes']}: "
                  + ", ".join(s["unreadable_change_ids"]) + (f" and {more} more" if more else ""))
        if s["rejected_after_acl_change"]:
            print(f"  WARNING: ACL history changed: {s['rejected_after_acl_change']} change(s) accepted earlier are "
                  "now rejected (see the mount log)")
        if not s["peers"]:
            print("  no peers (anysyncfs space add-peer SPACE ADDRESS)")
        for p in s["peers"]:
            state = "connected" if p["connected"] else "not connected"
            print(f"  {p['address']}: {state} ({_how(p)}), last sync {_when(p['last_sync_us'])}, "
                  f"changes to fetch {p['changes_to_fetch']}, to send {p['changes_to_send']}"
                  + (f", last error: {p['last_error']}" if p["last_error"] else ""))
            print(f"    behind: {p['changes_behind']} change(s), {p['blobs_behind']} blob(s), "
                  f"{_bytes(p['bytes_behind'])}" + (" (never synced)" if p["never_synced"] else ""))
        for w in s["warnings"]:  # a provider caught keeping changes back (signed heads, protocol.md 70.9)
            print(f"  WARNING: {w['message']} (first seen {_when(w['first_us'])}, last {_when(w['last_us'])})")


def _how(peer: dict[str, Any]) -> str:
    """How a peer was found, and whether it is a member's device, for the text view."""
    if peer["found_by"] == "provider":
        return "provider"
    what = {"device": "a member's device", "provider": "not a member's device"}.get(peer["kind"], "not reached yet")
    return f"{peer['found_by']}, {what}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def _peers_status(store: Store, space_id: bytes, live_peers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every peer of a space: the recorded ones (peers table), then those found by address records or mDNS —
    from the running mount or sync --watch (``live_peers``) and from what earlier runs stored (``peers_seen``).

    What a peer is comes from the live engine once it judged it this run, else from ``peers_seen`` (what an
    engine judged it the last time it reached it), else it is ``unknown`` (never reached since it was recorded):
    never a guess from the peers table alone, which holds providers and devices added with space add-peer alike."""
    from ..net.providers import Backlog, backlog

    seen = store.peers_seen(space_id)  # most recently judged first
    seen_at = {s.address: s for s in seen}
    kind_of_device: dict[bytes, str] = {}
    for s in reversed(seen):  # the newest judgement of a device wins, whatever address it was reached at
        kind_of_device[s.device_key] = s.kind
    out: list[dict[str, Any]] = []

    def add(address: str, device_key: bytes | None, via: str, stored_sync_us: int | None, stored_error: str) -> None:
        lp = live_peers.get(address, {})
        stored = seen_at.get(address)
        kind = (str(lp.get("kind") or "") or (stored.kind if stored is not None else "")
                or (kind_of_device.get(device_key, "") if device_key is not None else "") or "unknown")
        synced = lp.get("last_sync_us") or stored_sync_us or (stored.last_sync_us if stored is not None else None)
        # What this provider may still lack (a member's device holds no backlog of ours). A recorded peer never
        # reached is counted as a provider would be: what it is owed if it is one.
        owed = via == "manual" and device_key is not None and kind != "device"
        behind = backlog(store, space_id, device_key, synced) if owed else Backlog(0, 0, 0, 0)
        out.append({
            "address": address,
            # how it was found: provider (a recorded peer judged no member's device), manual (recorded with
            # space add-peer or a ticket, a member's device or not reached yet), address record, mdns
            "found_by": via if via != "manual" else ("provider" if kind == "provider" else "manual"),
            "kind": kind,  # device (a member's), provider, or unknown (never reached since recorded)
            "connected": bool(lp.get("connected", False)),
            "last_sync_us": synced,
            "last_error": lp.get("last_error") or stored_error or "",
            "changes_to_fetch": lp.get("to_fetch", 0),
            "changes_to_send": lp.get("to_send", 0),
            "changes_behind": behind.changes,
            "blobs_behind": behind.blobs + int(lp.get("blobs_to_backfill", 0)),
            "bytes_behind": behind.bytes + int(lp.get("bytes_to_backfill", 0)),
            "never_synced": not synced,
        })

    recorded = store.peers(space_id)
    listed = {p.address for p in recorded}
    for p in recorded:
        add(p.address, p.device_key, "manual", p.last_sync_us, p.last_error or "")
    for address, lp in live_peers.items():  # found by address records or mDNS in this run
        if address not in listed:
            stored = seen_at.get(address)
            add(address, stored.device_key if stored is not None else None, str(lp.get("via") or "address record"),
                None, "")
    for s in seen:  # found in an earlier run (or this one, before the status file was rewritten)
        if s.via != "manual" and s.address not in listed and s.address not in live_peers:
            add(s.address, s.device_key, s.via, s.last_sync_us, "")
    return out


def _read_status(path: Path) -> dict | None:
    """The live state a mount publishes, if that mount is still running."""
    try:
        doc = json.loads(path.read_bytes()[: 1 << 20])
        os.kill(int(doc["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    except AnysyncError:
        return None
    return doc if isinstance(doc, dict) else None
