"""Several node processes on one PostgreSQL database and one S3 bucket (real servers: tests/backends).

Devices reach the processes over loopback TCP with the real sync engine; the processes are ``anysyncfs node
serve`` subprocesses sharing a data directory (one node identity), or for the quota race two in-process nodes
(each with its own database connections, as separate processes have)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from anysyncfs.core import crypto, keys
from anysyncfs.core.address import PeerAddress, parse_address
from anysyncfs.net.fetch_space import _sync_space
from anysyncfs.net.node import Node
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.files import put_file, resolve
from anysyncfs.replica.ledger import Ledger, measure_usage
from anysyncfs.replica.quota import QuotaExceeded
from tests.backends.fixtures import PgS3
from tests.conftest import eventually
from tests.integration.test_sync import content, engine


class NodeProcess:
    """``anysyncfs node serve`` on PostgreSQL + S3 in a subprocess; :meth:`stop` ends it (always, in cleanup)."""

    def __init__(self, data: Path, deployment: PgS3, log: Path) -> None:
        env = dict(os.environ, **deployment.env())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[2]), env.get("PYTHONPATH")]))
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anysyncfs", "node", "serve", "--listen", "127.0.0.1:0", "--data", str(data),
             "--gc-interval", "0", *deployment.serve_args()],
            stdout=subprocess.PIPE, stderr=self._log, env=env, start_new_session=True)
        line: list[bytes] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        if not line or not line[0].strip():
            self.stop()
            raise RuntimeError(f"node did not start: {log.read_text()[-2000:]}")
        self.address: PeerAddress = parse_address(line[0].decode().strip())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        self._log.close()


@pytest.fixture
def two_processes(tmp_path: Path, pg_s3: PgS3) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    started: list[NodeProcess] = []
    try:
        for n in (1, 2):  # one data directory: the processes share the node's identity
            started.append(NodeProcess(tmp_path / "node", pg_s3, tmp_path / f"node{n}.log"))
        yield started[0], started[1]
    finally:
        for p in started:
            p.stop()


@pytest.mark.trio
async def test_a_save_through_one_process_is_readable_through_the_other_within_a_second(
        tmp_path: Path, make_home, two_processes: tuple[NodeProcess, NodeProcess]) -> None:
    p1, p2 = two_processes
    assert p1.address.device == p2.address.device  # one node identity, two addresses
    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    put_file(a, "/first.txt", b"one" * 5000)
    a.store.add_peer(a.space_id, str(p1.address), p1.address.device)
    report = await engine(a).sync_once()
    assert report.reached == 1 and report.errors == [], report
    # B knows only process 2: the space, its changes and blobs that process 1 accepted are all there
    b_home.home.store().add_peer(a.space_id, str(p2.address), p2.address.device)
    full = await _sync_space(b_home, a.space_id, "docs", True, None, 60.0)
    assert full.reached == 1, full.errors
    b = Replica(b_home, b_home.home.store(), b_home.home.blobs(), a.space_id)
    assert content(b, "/first.txt") == b"one" * 5000
    sa, sb = engine(a, interval=60.0), engine(b, interval=60.0)  # no periodic round within the test
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sa.run_forever)
        nursery.start_soon(sb.run_forever)
        await eventually(lambda: any(p.connected for p in sb.peers.values()), "b connected to process 2")
        await eventually(lambda: any(p.connected for p in sa.peers.values()), "a connected to process 1")
        await trio.sleep(0.3)  # both subscribed (their first rounds done)
        saved = os.urandom(300_000)
        await trio.to_thread.run_sync(sa.run.lock.acquire)
        try:
            put_file(a, "/second.bin", saved)
        finally:
            sa.run.lock.release()
        start = time.monotonic()
        # A pushes to process 1; process 1's commit NOTIFYs process 2, which announces to B; B fetches the change
        await eventually(lambda: b.heads == a.heads, "b has a's save", timeout=10)
        for extent in resolve(b.tree, "/second.bin").content.extents:
            await sb.fetch_blob(extent.chunk.blob, timeout=10)  # through process 2, from the bucket
        assert content(b, "/second.bin") == saved
        elapsed = time.monotonic() - start
        nursery.cancel_scope.cancel()
    assert elapsed < 1.0, f"the save took {elapsed:.2f} s to be readable on b"


def test_quotas_hold_across_processes(tmp_path: Path, make_home, pg_s3: PgS3) -> None:
    """Two nodes on one database (separate connections, like two processes) take uploads to one space at once:
    together they never store more than its quota."""
    a = create_space(make_home("a"), "docs")
    header, acl_raws = a.header_raw, [raw for _id, raw in a.acl_raws()]
    quota = 200_000
    nodes = [Node(tmp_path / f"n{i}", db=pg_s3.db, blobs=pg_s3.blob_store(), quota_bytes=quota) for i in (1, 2)]
    try:
        Ledger.adopt(nodes[0].store, nodes[0].blobs, header, acl_raws, quota_bytes=quota, book=nodes[0].book)
        ledgers = [node._ledger(a.space_id) for node in nodes]
        stored: list[int] = []
        refused: list[int] = []

        def upload(ledger: Ledger) -> None:
            for _ in range(20):
                data = os.urandom(10_000)
                try:
                    ledger.put_blob(crypto.blake3(data), data)
                    stored.append(len(data))
                except QuotaExceeded:
                    refused.append(len(data))

        threads = [threading.Thread(target=upload, args=(ledger,)) for ledger in ledgers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        usage = measure_usage(nodes[0].store, a.space_id)
        assert refused, "the quota never refused anything"
        assert usage.total_bytes <= quota and sum(stored) == usage.blob_bytes
        assert nodes[1].store.space_state(a.space_id)[1] == usage.total_bytes  # type: ignore[index]
    finally:
        for node in nodes:
            node.close()
