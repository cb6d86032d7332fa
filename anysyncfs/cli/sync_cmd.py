"""Network commands: ``node serve``, ``space add-peer`` / ``peers`` / ``remove-peer``, ``sync``, ``status``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import ids
from ..core.address import parse_address
from ..errors import AnysyncError, NetworkError, NotFound, UsageError

if TYPE_CHECKING:
    from .main import Context

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                space_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = sub.add_parser("node", help="run a provider node").add_subparsers(dest="node_cmd", required=True)
    s = node.add_parser("serve", help="serve spaces to their members (foreground; prints its address)")
    s.add_argument("--listen", default="127.0.0.1:7733", metavar="HOST:PORT", help="default 127.0.0.1:7733")
    s.add_argument("--data", type=Path, required=True, help="directory for the node's data")
    s.add_argument("--quota", default="10G", help="bytes of changes and blobs per space (default 10G)")
    s.add_argument("--allow-account", action="append", default=[], metavar="ac-…",
                   help="only these accounts may store NEW spaces here (repeatable; default: any member of the "
                        "space it offers)")
    s.set_defaults(func=cmd_node_serve, needs_identity=False)

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

    s = sub.add_parser("sync", help="reconcile a space once with every known peer, then exit")
    s.add_argument("space", help="space name or ID (an ID fetches a space this device does not hold yet)")
    s.add_argument("--name", help="local name for a space fetched for the first time")
    s.add_argument("--metadata-only", action="store_true", help="fetch changes but not file contents")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per peer (default 600)")
    s.set_defaults(func=cmd_sync)

    s = sub.add_parser("status", help="peers, pending changes and blobs, last sync of each space")
    s.add_argument("space", nargs="?")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_status)


# ---------------------------------------------------------------------------------------------- node
def _host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen needs HOST:PORT, got {text!r}")
    return host, int(port)


def cmd_node_serve(ctx: Context) -> int:
    import trio

    from ..fs.mount import parse_size
    from ..net.node import Node

    host, port = _host_port(ctx.args.listen)
    quota = parse_size(ctx.args.quota)
    logging.basicConfig(level=logging.DEBUG if ctx.args.debug else logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    allowed = frozenset(ids.from_text(ids.PREFIX_ACCOUNT, a) for a in ctx.args.allow_account) or None
    node = Node(ctx.args.data, quota_bytes=quota, allowed_accounts=allowed)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(node.serve, host, port)
            except OSError as e:
                raise NetworkError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
            bound = listeners[0].socket.getsockname()[1]
            print(node.address(host, bound), flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    finally:
        node.close()
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
    return 0


def cmd_remove_peer(ctx: Context) -> int:
    addr = parse_address(ctx.args.address)
    space_id = _space_id(ctx, ctx.args.space)
    if not ctx.home.store().remove_peer(space_id, str(addr)):
        raise NotFound(f"{addr} is not a peer of that space")
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
class _Bar:
    """A one-line progress display on a terminal (nothing otherwise)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.enabled or (time.monotonic() - self._last < 0.1 and done < total):
            return
        self._last = time.monotonic()
        width = 30
        filled = width * done // total if total else width
        print(f"\r{what:8} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end="", file=sys.stderr,
              flush=True)

    def done(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def cmd_sync(ctx: Context) -> int:
    from ..net.fetch_space import sync_space

    unlocked = ctx.home.unlock(ctx.passphrase())
    space_id = _space_id(ctx, ctx.args.space)
    bar = _Bar()
    try:
        report = sync_space(unlocked, space_id, name=ctx.args.name, content=not ctx.args.metadata_only,
                            progress=bar, timeout=ctx.args.timeout)
    finally:
        bar.done()
    print(f"{ids.space_text(space_id)}: {report.reached}/{report.peers} peers reached, {report.fetched} changes "
          f"fetched, {report.sent} sent, {report.blobs_uploaded} blobs uploaded, {report.blobs_fetched} fetched")
    for err in report.errors:
        print(f"  {err}", file=sys.stderr)
    if report.peers == 0:
        raise UsageError("no peers are recorded for this space (anysyncfs space add-peer SPACE ADDRESS)")
    if report.reached == 0:
        raise NetworkError("no peer could be reached")
    return 0


# ---------------------------------------------------------------------------------------------- status
def cmd_status(ctx: Context) -> int:
    from ..fs.mount_sync import status_path
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
        peers = []
        for p in store.peers(row.id):
            lp = live_peers.get(p.address, {})
            peers.append({
                "address": p.address,
                "connected": bool(lp.get("connected", False)),
                "last_sync_us": lp.get("last_sync_us") or p.last_sync_us,
                "last_error": lp.get("last_error") or p.last_error or "",
                "changes_to_fetch": lp.get("to_fetch", 0),
                "changes_to_send": lp.get("to_send", 0),
            })
        out.append({
            "space": ids.space_text(row.id), "name": row.name, "mounted": live is not None,
            "blobs_to_upload": store.count_pending_uploads(row.id), "peers": peers,
            "rejected_after_acl_change": store.count_rejected_with_reason(row.id, ACL_HISTORY_CHANGED),
        })
    if ctx.args.json:
        print(json.dumps(out, indent=1))
        return 0
    for s in out:
        print(f"{s['space']}  {s['name']}  {'mounted (syncing)' if s['mounted'] else 'not mounted'}")
        print(f"  blobs not yet uploaded: {s['blobs_to_upload']}")
        if s["rejected_after_acl_change"]:
            print(f"  WARNING: ACL history changed: {s['rejected_after_acl_change']} change(s) accepted earlier are "
                  "now rejected (see the mount log)")
        if not s["peers"]:
            print("  no peers (anysyncfs space add-peer SPACE ADDRESS)")
        for p in s["peers"]:
            state = "connected" if p["connected"] else "not connected"
            print(f"  {p['address']}: {state}, last sync {_when(p['last_sync_us'])}, "
                  f"changes to fetch {p['changes_to_fetch']}, to send {p['changes_to_send']}"
                  + (f", last error: {p['last_error']}" if p["last_error"] else ""))
    return 0


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
