"""``anysyncfs node gc --db … --blobs …`` on the real PostgreSQL + S3 servers (tests/backends), through the CLI.

A node on PostgreSQL + S3 serves over loopback TCP; a member uploads blobs no change references; the CLI collects
them from the database and the bucket while the node goes on serving (several processes may share a PostgreSQL
database, so no lock file stands in the way), and every referenced blob stays readable."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from anysyncfs.net.node import Node
from anysyncfs.replica import create_space
from anysyncfs.replica.files import put_file
from anysyncfs.replica.home import Unlocked
from tests.backends.fixtures import PgS3
from tests.conftest import CLI
from tests.integration.test_node_gc import SMALL_CHUNKS, listed_blobs, node_serves, put_blob, sync

pytestmark = pytest.mark.trio


async def test_cli_node_gc_collects_on_postgres_and_s3_while_the_node_serves(
        tmp_path: Path, make_home: Callable[..., Unlocked], cli_env: dict[str, str], pg_s3: PgS3) -> None:
    a = create_space(make_home("a"), "docs", chunking=SMALL_CHUNKS)
    put_file(a, "/kept.bin", os.urandom(30_000))
    data = tmp_path / "node"
    node = Node(data, gc_interval=0, **pg_s3.node_kwargs())
    env = dict(cli_env, **pg_s3.env())

    async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process([*CLI, "node", "gc", "--data", str(data), *pg_s3.serve_args(), *args], env=env,
                                      capture_stdout=True, capture_stderr=True, check=False)

    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, "127.0.0.1", 0)
            addr = node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            a.store.add_peer(a.space_id, str(addr), addr.device)
            await sync(a)
            junk = [await put_blob(addr, a, os.urandom(4000)) for _ in range(3)]
            referenced = listed_blobs(a)
            assert referenced and all(node.blobs.has(b) for b in referenced | set(junk))

            p = await cli()  # the default grace: everything is younger than a day
            assert p.returncode == 0, p.stderr
            assert b"unlinked 0 blob(s)" in p.stdout and all(node.blobs.has(j) for j in junk)

            p = await cli("--gc-grace", "0")  # the node is serving meanwhile: PostgreSQL takes both
            assert p.returncode == 0, p.stderr
            assert b"unlinked 3 blob(s) (12000 bytes)" in p.stdout and b"deleted 3 file(s)" in p.stdout
            assert not any(node.blobs.has(j) for j in junk)  # gone from the bucket
            assert all(node.blobs.has(r) for r in referenced)
            assert not any([await node_serves(addr, a, j) for j in junk])  # and from the database
            assert all([await node_serves(addr, a, r) for r in referenced])
            nursery.cancel_scope.cancel()
    finally:
        node.close()

    # The S3 options without --blobs s3://… are refused, and so is a --db that is not PostgreSQL.
    p = await trio.run_process([*CLI, "node", "gc", "--data", str(data), "--db", "sqlite:///x"], env=env,
                               capture_stdout=True, capture_stderr=True, check=False)
    assert p.returncode != 0 and b"postgresql://" in p.stderr
