"""The node's PostgreSQL LISTEN connection comes back after the server kills it (issue 14), on the real server.

Two nodes on one database (each with its own connections, as two processes have): a device subscribed to node 1,
pushes through node 2. Node 1 learns of them through LISTEN/NOTIFY and announces the new heads. The test kills
node 1's LISTEN backend with ``pg_terminate_backend``; once node 1 listens again (a new backend), a push through
node 2 is announced by node 1 once more — by a notice, since the catch-up that follows a reconnection is drained
first."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
import trio

from anysyncfs.net.connection import Connection
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.node import Node
from anysyncfs.protocol import messages as m
from anysyncfs.replica import create_space
from anysyncfs.replica.files import put_file
from anysyncfs.store.dialect import NOTIFY_CHANNEL
from tests.backends.fixtures import PgS3
from tests.integration.test_sync import engine, eventually

pytestmark = pytest.mark.trio


def listen_backends(db: str) -> list[int]:
    """The PIDs of the server backends LISTENing on the node's channel in this database."""
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
                            "pg_backend_pid() AND query ILIKE %s", (f"LISTEN {NOTIFY_CHANNEL}%",)).fetchall()
    return [int(r[0]) for r in rows]


def terminate(db: str, pid: int) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


async def test_the_listen_connection_reconnects_after_the_server_kills_it_and_notices_flow_again(
        tmp_path: Path, make_home, pg_s3: PgS3) -> None:
    node1 = Node(tmp_path / "node", gc_interval=0, **pg_s3.node_kwargs())
    node2 = Node(tmp_path / "node", gc_interval=0, **pg_s3.node_kwargs())  # the same identity, as one deployment
    a = create_space(make_home("a"), "docs")
    put_file(a, "/one.txt", b"one")
    announced: list[m.Heads] = []

    async def on_notify(_conn: Connection, body: object) -> None:
        if isinstance(body, m.Heads) and body.space == a.space_id:
            announced.append(body)

    async def push_through_node2(path: str) -> list[bytes]:
        put_file(a, path, os.urandom(1000))
        report = await engine(a).sync_once()
        assert report.reached == 1 and report.errors == [], report
        return sorted(a.heads)

    try:
        async with trio.open_nursery() as nursery:
            l1 = await nursery.start(node1.serve, "127.0.0.1", 0)
            l2 = await nursery.start(node2.serve, "127.0.0.1", 0)
            addr1 = node1.address("127.0.0.1", l1[0].socket.getsockname()[1])
            addr2 = node2.address("127.0.0.1", l2[0].socket.getsockname()[1])
            nursery.start_soon(node1.follow_other_processes)
            a.store.add_peer(a.space_id, str(addr2), addr2.device)  # a's engine pushes through node 2 only
            await push_through_node2("/two.txt")
            await eventually(lambda: len(listen_backends(pg_s3.db)) == 1, "node 1 listens", timeout=10)
            [first_pid] = listen_backends(pg_s3.db)

            conn = await Endpoint(a.identity).dial(addr1)  # a subscriber of node 1
            conn.on_notify = on_notify
            nursery.start_soon(conn.serve)
            assert isinstance(await conn.request(m.OpenSpace(a.space_id)), m.SpaceInfo)

            heads = await push_through_node2("/three.txt")
            await eventually(lambda: any(sorted(h.heads) == heads for h in announced), "node 1 announces", 10)

            terminate(pg_s3.db, first_pid)
            await eventually(lambda: listen_backends(pg_s3.db) not in ([], [first_pid]), "node 1 listens again",
                             timeout=20)
            await trio.sleep(0.5)  # node 1's catch-up announcement after reconnecting (every subscribed space)
            announced.clear()

            heads = await push_through_node2("/four.txt")
            await eventually(lambda: any(sorted(h.heads) == heads for h in announced),
                             "node 1 announces a push through node 2 after the reconnection", 10)
            await conn.abort("done")
            nursery.cancel_scope.cancel()
    finally:
        node1.close()
        node2.close()
