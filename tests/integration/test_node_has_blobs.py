"""HasBlobs over real TCP on each node backend (SQLite + directory, PostgreSQL + S3): one answer per asked ID,
true only for a blob linked to the asker's space whose bytes the store holds (the node answers a batch with one
database query and, on S3, concurrent HEAD requests instead of one query and one request after another)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from hostile import connected

from anysyncfs.core import crypto
from anysyncfs.net.node import Node
from anysyncfs.protocol import messages as m
from anysyncfs.replica import create_space
from anysyncfs.replica.files import put_file
from tests.integration.test_node_gc import put_blob, sync

pytestmark = pytest.mark.trio


async def test_has_blobs_answers_each_id_for_the_asking_space(tmp_path: Path, make_home,
                                                              node_backend: dict[str, Any]) -> None:
    a = create_space(make_home("a"), "docs")
    other = create_space(make_home("o"), "other")
    put_file(a, "/f.txt", b"x")
    node = Node(tmp_path / "node", gc_interval=0, **node_backend)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, "127.0.0.1", 0)
            addr = node.address("127.0.0.1", listeners[0].socket.getsockname()[1])
            for r in (a, other):
                r.store.add_peer(r.space_id, str(addr), addr.device)
                await sync(r)
            mine = [await put_blob(addr, a, os.urandom(3000 + n)) for n in range(12)]
            theirs = await put_blob(addr, other, os.urandom(500))  # held, but for another space
            node.blobs.delete(mine[3])  # linked, but its bytes are gone: not held
            unknown = [crypto.blake3(b"never %d" % n) for n in range(12)]
            asked = [x for pair in zip(mine, unknown) for x in pair] + [theirs, mine[0]]
            async with connected(addr, a.identity) as conn:
                reply = await conn.request(m.HasBlobs(a.space_id, asked))
            assert isinstance(reply, m.Bits)
            flags = m.flags_of(reply.bits, len(asked))
            want = [b in mine and b != mine[3] for b in asked]
            assert flags == want
            nursery.cancel_scope.cancel()
    finally:
        node.close()
