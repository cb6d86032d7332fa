"""The sync engine inside a mount: fetches for reads, pushes commits, invalidates the kernel's caches of what
remote changes touched, and publishes its state for ``anysyncfs status``.

Status file: ``<home>/run/<space>.status.json`` (rewritten atomically every second while the state changes;
removed at unmount), read by ``anysyncfs status``. Layout in docs/protocol.md (60.6).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import trio

from ..core import ids
from ..errors import AnysyncError
from ..net.endpoint import Endpoint
from ..net.runner import Runner
from ..net.sync import SpaceSync
from ..net.tls import make_tls_identity
from ..replica.replica import Replica
from ..store.files import atomic_write
from .fuse import Operations

log = logging.getLogger(__name__)

RUN_DIR = "run"
STATUS_EVERY_S = 1.0


def status_path(home_root: Path, space_id: bytes) -> Path:
    return home_root / RUN_DIR / f"{ids.space_text(space_id)}.status.json"


async def run_sync(ops: Operations, replica: Replica, interval: float, fetch_timeout: float) -> None:
    identity = replica.identity
    endpoint = Endpoint(identity, make_tls_identity(identity.device))
    async def invalidate() -> None:
        await ops.invalidate_changed()

    sync = SpaceSync(replica, endpoint, Runner(ops.lock), on_changed=invalidate, interval=interval,
                     fetch_timeout=fetch_timeout)
    ops.fetcher = sync.fetch_blob
    path = status_path(replica.unlocked.home.root, replica.space_id)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync.run_forever)
            nursery.start_soon(_publish_status, sync, path)
    finally:
        ops.fetcher = None
        try:
            path.unlink()
        except OSError:
            pass


async def _publish_status(sync: SpaceSync, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    last = b""
    while True:
        doc = sync.status() | {"pid": os.getpid(), "updated_us": time.time_ns() // 1000}
        body = {k: v for k, v in doc.items() if k != "updated_us"}
        data = json.dumps(body, sort_keys=True).encode()
        if data != last:
            try:
                await trio.to_thread.run_sync(atomic_write, path, json.dumps(doc, indent=1).encode(), 0o600)
                last = data
            except (OSError, AnysyncError) as e:
                log.warning("cannot write %s: %s", path, e)
        await trio.sleep(STATUS_EVERY_S)
