"""The node on PostgreSQL + S3 when a server goes down in the middle of an upload (real servers, real device
sync engine over loopback TCP): the node answers UNAVAILABLE, links no blob and accepts no change that is not
durable in both, and the device's next round completes the upload — nothing is lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from anysyncfs.core import keys
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.files import put_file
from anysyncfs.store.db import Store
from tests.backends.fixtures import PgS3
from tests.integration.test_sync import content, engine

pytestmark = pytest.mark.trio

FILES = 24
FILE_SIZE = 120_000


@pytest.mark.parametrize("server", ["s3", "postgresql"])
async def test_a_storage_server_stopping_mid_upload_loses_nothing(tmp_path: Path, make_home, pg_s3: PgS3,
                                                                  server: str) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    files = {f"/f{i:02}.bin": os.urandom(FILE_SIZE) for i in range(FILES)}
    for path, data in files.items():
        put_file(a, path, data)
    watcher = Store(pg_s3.db)  # the test's own view of the database
    node = Node(tmp_path / "node", **pg_s3.node_kwargs())
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, "127.0.0.1", 0)
            addr = node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            a.store.add_peer(a.space_id, str(addr), addr.device)
            reports = []

            async def sync() -> None:
                reports.append(await engine(a).sync_once(per_peer_timeout=60))

            nursery.start_soon(sync)
            # Stop the server once the node has linked a few blobs: the upload is under way.
            with trio.fail_after(30):
                while not await trio.to_thread.run_sync(lambda: len(watcher.space_blob_ids(a.space_id)) >= 2
                                                        if watcher.spaces() else False):
                    await trio.sleep(0.01)
            if server == "s3":
                await trio.to_thread.run_sync(pg_s3.s3.stop)
            else:
                await trio.to_thread.run_sync(pg_s3.pg.stop, "immediate")
            with trio.fail_after(60):
                while not reports:
                    await trio.sleep(0.05)
            first = reports[0]
            assert first.errors and any("retry later" in e for e in first.errors), first
            assert a.store.count_pending_uploads(a.space_id) > 0  # nothing confirmed to the device
            # Back up: every blob the node linked is in the bucket, whole; no change was accepted half-way.
            if server == "s3":
                await trio.to_thread.run_sync(pg_s3.s3.start)
            else:
                await trio.to_thread.run_sync(pg_s3.pg.start)
            blobs = pg_s3.blob_store()
            for blob_id in watcher.space_blob_ids(a.space_id):
                assert blobs.get(blob_id)  # verified against its ID
            # The device's next round (its retry) completes the upload.
            second = await engine(a).sync_once(per_peer_timeout=60)
            assert second.errors == [] and second.reached == 1, second
            assert a.store.count_pending_uploads(a.space_id) == 0
            assert set(watcher.accepted_change_ids(a.space_id)) == set(a.change_ids())
            # A fresh device gets every file through the node alone.
            b_home = make_home("b", phrase)
            b_home.home.store().add_peer(a.space_id, str(addr), addr.device)
            full = await _sync_space(b_home, a.space_id, "docs", True, None, 60.0)
            assert full.reached == 1, full.errors
            b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
            for path, data in files.items():
                assert content(b, path) == data
            nursery.cancel_scope.cancel()
    finally:
        node.close()
        watcher.close()
        if server == "s3" and pg_s3.s3.proc is None:
            pg_s3.s3.start()
        if server == "postgresql" and not pg_s3.pg.running:
            pg_s3.pg.start()
