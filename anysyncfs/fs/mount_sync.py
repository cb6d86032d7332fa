"""The sync engine inside a mount: fetches for reads, pushes commits, invalidates the kernel's caches of what
remote changes touched, runs the blob cache (eviction to the size limit, background fetches of pinned content),
and publishes its state for ``anysyncfs status``.

Cache work (rules in :mod:`anysyncfs.replica.cache`): after every blob fetched for a read, and every
``CACHE_TICK_S`` seconds, the cache evicts down to its limit if it is over it; every tick it also writes the
access times noted by reads. Blobs of pinned files that are not here (new content from another device, or a pin
whose files were never read) are fetched in the background while a provider is connected.

Status file: ``<home>/run/<space>.status.json`` (rewritten atomically every second while the state changes;
removed at unmount), read by ``anysyncfs status``. Layout in docs/protocol.md (60.6).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from ..errors import AnysyncError
from ..net.device_server import ListenSpec
from ..net.endpoint import Endpoint
from ..net.p2p import DevicePeering
from ..net.runner import Runner
from ..net.sync import Progress, SpaceSync
from ..net.tls import make_tls_identity
from ..replica.home import status_path
from ..replica.replica import Replica
from ..store.files import atomic_write
from .fuse import Operations
from .vfs import Vfs

T = TypeVar("T")

log = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0
CACHE_TICK_S = 10.0
PREFETCH_BATCH = 64  # pinned blobs listed per query of the background fetcher


async def run_sync(ops: Operations, replica: Replica, interval: float, fetch_timeout: float,
                   cache_size: int | None = None, first_sync_progress: Progress | None = None, *,
                   listen: ListenSpec | None = None, discovery: bool = False) -> None:
    identity = replica.identity
    endpoint = Endpoint(identity, make_tls_identity(identity.device))
    async def invalidate() -> None:
        await ops.invalidate_changed()

    vfs = ops.vfs
    vfs.cache.limit = cache_size
    runner = BatchFirstRunner(ops.lock, vfs)
    sync = SpaceSync(replica, endpoint, runner, on_changed=invalidate, interval=interval,
                     fetch_timeout=fetch_timeout)
    sync.first_sync_progress = first_sync_progress

    async def fetch(blob_id: bytes) -> None:
        await sync.fetch_blob(blob_id)
        await _after_fetch(ops, runner, blob_id)

    async def fetch_ranges(blob_id: bytes, ranges: Sequence[tuple[int, int]]) -> None:
        await sync.fetch_blob_ranges(blob_id, ranges)
        if replica.blobs.has(blob_id):  # it was fetched whole (or became whole): the cache counts it
            await _after_fetch(ops, runner, blob_id)

    ops.fetcher = fetch
    ops.range_fetcher = fetch_ranges
    path = status_path(replica.unlocked.home.root, replica.space_id)
    peering = DevicePeering(sync, listen=listen, discovery=discovery, on_changed=invalidate)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(peering.run)
            nursery.start_soon(sync.run_forever)
            nursery.start_soon(publish_status, sync, path, peering.status)
            nursery.start_soon(_tend_cache, ops, runner)
            nursery.start_soon(_fetch_pinned, ops, sync, runner)
    finally:
        ops.fetcher = None
        ops.range_fetcher = None
        try:
            path.unlink()
        except OSError:
            pass


class BatchFirstRunner(Runner):
    """The sync engine's calls, under the mount's lock. Those that change the replica from outside (received
    changes, ACL records, refolds: :data:`REPLICA_MUTATORS`) run with the open batch set aside
    (:meth:`~.vfs_base.VfsCore.batch_aside`): they must meet the committed tree, never one with provisional ops
    applied (see :mod:`.batch`). If that commit fails the call fails too (and is retried by the engine later).
    Every other call (store queries, blob reads and writes, cache work) leaves the batch alone."""

    def __init__(self, lock: threading.Lock, vfs: Vfs) -> None:
        super().__init__(lock)
        self.vfs = vfs

    def _locked(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.lock:
            if getattr(fn, "__self__", None) is self.vfs.replica and getattr(fn, "__name__", "") in REPLICA_MUTATORS:
                with self.vfs.batch_aside():
                    return fn(*args)
            return fn(*args)


REPLICA_MUTATORS = frozenset({"ingest", "ingest_batch", "add_acl_record", "add_acl_records", "refresh_acl", "refold"})


async def _after_fetch(ops: Operations, runner: Runner, blob_id: bytes) -> None:
    if ops.vfs.cache.limit is None:
        return
    try:
        await runner(ops.vfs.cache_after_fetch, blob_id)
    except AnysyncError as e:  # the read goes on: it has its blob
        log.warning("cache: eviction failed: %s", e)


async def _tend_cache(ops: Operations, runner: Runner) -> None:
    while True:
        try:
            await runner(ops.vfs.cache_tick)
            # The groups kept by reads of uncached chunks (partial blobs) are bounded apart from the blob cache.
            dropped = await trio.to_thread.run_sync(ops.vfs.replica.partials.prune)
            if dropped:
                log.info("cache: dropped %d partial blobs (the groups reads fetched) past their bound", dropped)
        except AnysyncError as e:
            log.warning("cache: %s", e)
        await trio.sleep(CACHE_TICK_S)


async def _fetch_pinned(ops: Operations, sync: SpaceSync, runner: Runner) -> None:
    """Keep pinned files complete: fetch their missing blobs while a provider is connected (a manifest first;
    its chunks are listed on the next round)."""
    while True:
        await trio.sleep(CACHE_TICK_S)
        while any(p.connected for p in sync.peers.values()):
            try:
                missing = await runner(ops.vfs.cache_missing_pinned, PREFETCH_BATCH)
            except AnysyncError as e:
                log.warning("cache: %s", e)
                break
            if not missing:
                break
            try:
                for blob_id in missing:
                    await sync.fetch_blob(blob_id)
                    await _after_fetch(ops, runner, blob_id)
            except AnysyncError as e:  # unreachable, or gone meanwhile: try again next round
                log.info("pinned content not fetched yet: %s", e)
                break


async def publish_status(sync: SpaceSync, path: Path, extra: Callable[[], dict[str, object]] | None = None) -> None:
    """Keep ``path`` (the status file) up to date until cancelled; ``extra``: more keys (the listener's)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    last = b""
    while True:
        doc = sync.status() | (extra() if extra else {}) | {"pid": os.getpid(), "updated_us": time.time_ns() // 1000}
        body = {k: v for k, v in doc.items() if k != "updated_us"}
        data = json.dumps(body, sort_keys=True).encode()
        if data != last:
            try:
                await trio.to_thread.run_sync(atomic_write, path, json.dumps(doc, indent=1).encode(), 0o600)
                last = data
            except (OSError, AnysyncError) as e:
                log.warning("cannot write %s: %s", path, e)
        await trio.sleep(STATUS_EVERY_S)
