"""``anysyncfs sync SPACE --watch``: keep a space in sync without a mount — dial its peers, accept members'
devices (``-o listen=``), find members on the LAN (``-o discovery=``) — until SIGINT / SIGTERM.

Commits made meanwhile by other processes on this device (``anysyncfs put``, ``rm``, …) are picked up within
``PICK_UP_S`` and pushed at once. The live state goes to the status file a mount writes, so ``anysyncfs status``
shows this process's peers and addresses.
"""

from __future__ import annotations

import logging
import signal
import sys

import trio

from ..errors import AnysyncError, UsageError
from ..fs.mount_sync import publish_status
from ..replica.home import status_path
from ..net.device_server import ListenSpec, parse_listen
from ..net.endpoint import Endpoint
from ..net.fetch_space import check_not_mounted
from ..net.p2p import DevicePeering
from ..net.runner import Runner
from ..net.sync import SpaceSync
from ..replica import Replica
from ..replica.home import Unlocked

log = logging.getLogger(__name__)

PICK_UP_S = 0.05


def parse_watch_options(option_args: list[str]) -> tuple[ListenSpec | None, bool, float]:
    """``-o listen=HOST:PORT|off,discovery=on|off,sync_interval=S`` -> (listen, discovery, interval)."""
    listen, discovery, interval = parse_listen(None), True, 30.0
    for arg in option_args:
        for item in filter(None, (s.strip() for s in arg.split(","))):
            key, _, value = item.partition("=")
            if key == "listen":
                listen = parse_listen(value)
            elif key == "discovery" and value in ("on", "off"):
                discovery = value == "on"
            elif key == "sync_interval":
                try:
                    interval = float(value)
                except ValueError:
                    raise UsageError(f"sync_interval must be a number of seconds, not {value!r}") from None
                if not 0.1 <= interval <= 86400:
                    raise UsageError("sync_interval must be between 0.1 and 86400 seconds")
            else:
                raise UsageError(f"unknown option {item!r} (sync --watch takes listen=, discovery=, sync_interval=)")
    return listen, discovery, interval


def watch_space(unlocked: Unlocked, space_id: bytes, options: list[str]) -> int:
    listen, discovery, interval = parse_watch_options(options)
    check_not_mounted(unlocked, space_id)
    store = unlocked.home.store()
    if not any(r.id == space_id for r in store.spaces()):
        raise UsageError("sync --watch needs a space this device holds (fetch it first: anysyncfs sync SPACE-ID)")
    replica = Replica(unlocked, store, unlocked.home.blobs(), space_id)
    trio.run(_watch, replica, listen, discovery, interval)
    return 0


async def _watch(replica: Replica, listen: ListenSpec | None, discovery: bool, interval: float) -> None:
    identity = replica.identity
    runner = Runner()
    sync = SpaceSync(replica, Endpoint(identity), runner, interval=interval)
    peering = DevicePeering(sync, listen=listen, discovery=discovery)
    path = status_path(replica.unlocked.home.root, replica.space_id)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(peering.run)
                for address in peering.addresses():
                    print(f"listening at {address}", flush=True)
                print(f"watching {replica.name}", flush=True)
                nursery.start_soon(sync.run_forever)
                nursery.start_soon(publish_status, sync, path, lambda: peering.status() | {"mode": "watch"})
                nursery.start_soon(_pick_up_commits, replica, runner)
                async for _sig in signals:
                    nursery.cancel_scope.cancel()
                    break
        finally:
            try:
                path.unlink()
            except OSError:
                pass
    print("stopped", file=sys.stderr, flush=True)


async def _pick_up_commits(replica: Replica, runner: Runner) -> None:
    """Commits of other processes on this device reach the engine's live push (it watches ``replica.heads``)."""
    while True:
        await trio.sleep(PICK_UP_S)
        try:
            await runner(replica.pick_up_commits)
        except AnysyncError as e:
            log.warning("cannot read this device's new commits: %s", e)
