"""``anysyncfs sync``: one full reconciliation of a space with every known peer — also the first fetch of a space
this device does not hold yet (a second device of the same account, restored from the recovery phrase)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import trio

from ..core import ids, space
from ..core.address import parse_address
from ..errors import (
    IntegrityError,
    NetworkError,
    NotFound,
    ProtocolError,
    UsageError,
)
from ..protocol import messages as m
from ..replica.files import tree_blobs
from ..replica.home import Unlocked
from ..replica.replica import Replica, adopt_space
from .connection import RemoteError, while_serving
from .endpoint import Endpoint
from .runner import Runner
from .sync import TRANSFERS_IN_FLIGHT, Progress, SpaceSync, SyncReport, for_each_limited
from .tls import make_tls_identity

log = logging.getLogger(__name__)


@dataclass
class FullReport(SyncReport):
    blobs_fetched: int = 0
    blobs_failed: int = 0  # blobs of the tree that no reachable peer delivered


def sync_space(unlocked: Unlocked, space_id: bytes, *, name: str | None, content: bool, progress: Progress | None,
               timeout: float) -> FullReport:
    return trio.run(_sync_space, unlocked, space_id, name, content, progress, timeout)


def _check_not_mounted(unlocked: Unlocked, space_id: bytes) -> None:
    from ..mounts import LOCKS_DIR, lock_held  # the mount owns the lock file format

    lock = unlocked.home.root / LOCKS_DIR / f"{ids.space_text(space_id)}.lock"
    if lock.exists() and lock_held(lock):
        raise UsageError("that space is mounted on this device: its mount syncs it already")


async def _sync_space(unlocked: Unlocked, space_id: bytes, name: str | None, content: bool,
                      progress: Progress | None, timeout: float) -> FullReport:
    _check_not_mounted(unlocked, space_id)
    store = unlocked.home.store()
    endpoint = Endpoint(unlocked.identity, make_tls_identity(unlocked.identity.device))
    report = FullReport()
    if not any(r.id == space_id for r in store.spaces()):
        replica = await _bootstrap(unlocked, endpoint, space_id, name, report)
        if replica is None:
            return report
    else:
        replica = Replica(unlocked, store, unlocked.home.blobs(), space_id)
    sync = SpaceSync(replica, endpoint, Runner(), fetch_timeout=timeout)
    got = await sync.sync_once(progress, per_peer_timeout=timeout)
    report.peers, report.reached = got.peers, got.reached
    report.fetched, report.sent, report.blobs_uploaded = got.fetched, got.sent, got.blobs_uploaded
    report.errors.extend(got.errors)
    if content and got.reached:
        report.blobs_fetched = await _fetch_content(sync, progress, timeout, report)
    return report


async def _bootstrap(unlocked: Unlocked, endpoint: Endpoint, space_id: bytes, name: str | None,
                     report: FullReport) -> Replica | None:
    """Get the signed header and ACL of a space we do not hold from the first peer that serves it to us."""
    rows = unlocked.home.store().peers(space_id)
    report.peers = len(rows)
    for row in rows:
        try:
            addr = parse_address(row.address)
            conn = await endpoint.dial(addr)
            try:
                info = await while_serving(conn, functools.partial(conn.request, m.OpenSpace(space_id)))
            finally:
                await conn.abort("done")
            if not isinstance(info, m.SpaceInfo):
                raise ProtocolError(f"expected SpaceInfo, got {type(info).__name__}")
            # Checked before adopting: adopting first would leave another space on this device (IdMismatch).
            space.parse_space_header(bytes(info.header), space_id)
            label = name or ids.space_text(space_id)[:16]
            return await trio.to_thread.run_sync(adopt_space, unlocked, label, bytes(info.header),
                                                 [bytes(r) for r in info.acl])
        except (NetworkError, RemoteError, IntegrityError, ProtocolError, UsageError) as e:
            report.errors.append(f"{row.address}: {e}")
    return None


def _missing_blobs(replica: Replica) -> list[bytes]:
    """Blobs the current tree needs that are not on this device (a manifest first: its chunks show next round)."""
    return [b for b in tree_blobs(replica) if not replica.blobs.has(b)]


async def _fetch_content(sync: SpaceSync, progress: Progress | None, timeout: float, report: FullReport) -> int:
    """Fetch every blob of the current tree, connecting to the peers again (one connection each)."""
    fetched = 0
    if not await sync.run(_missing_blobs, sync.replica):
        return 0  # everything is here: no connection needed
    async with trio.open_nursery() as nursery:
        for addr in await sync.addresses():
            nursery.start_soon(sync.hold_connection, addr)
        failed: set[bytes] = set()
        while True:
            want = [b for b in await sync.run(_missing_blobs, sync.replica) if b not in failed]
            if not want:
                break
            done = 0

            async def fetch(blob_id: bytes) -> None:
                nonlocal fetched, done
                try:
                    await sync.fetch_blob(blob_id, timeout=timeout)
                    fetched += 1
                except NotFound as e:
                    failed.add(blob_id)
                    report.blobs_failed += 1
                    report.errors.append(str(e))
                done += 1
                if progress:
                    progress("content", done, len(want))

            await for_each_limited(want, fetch, TRANSFERS_IN_FLIGHT)
        nursery.cancel_scope.cancel()
    return fetched
