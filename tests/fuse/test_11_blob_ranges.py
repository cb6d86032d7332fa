"""Level 11: a read through a real mount of a file whose content is fetched by verified ranges (protocol.md 70.12)
from a provider that corrupts one 16 KiB group of its answer: the read fails with EIO, no byte of the blob reaches
the reader or the device's blob files, and the mount logs the peer as sending a bad blob. The same read through an
honest node returns the file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from anysyncfs.net.node import Node
from anysyncfs.protocol import messages as m
from tests.integration.hostile import NodeThread

from .conftest import Mount, _check_fuse, init_device


class CorruptingNode(Node):
    """A real node, except that while :attr:`corrupt` is set every BlobSlice has its last byte flipped (the last
    byte of the last group of the slice)."""

    corrupt = True

    async def handle(self, conn, body):  # type: ignore[no-untyped-def]
        reply = await super().handle(conn, body)
        if self.corrupt and isinstance(reply, m.BlobSlice):
            data = bytearray(reply.slice)
            data[-1] ^= 0x01
            return m.BlobSlice(bytes(data))
        return reply


class CorruptingNodeThread(NodeThread):
    def make_node(self) -> CorruptingNode:
        return CorruptingNode(self.path)


def blob_files(m_: Mount) -> set[str]:
    return {p.name for p in (m_.home / "blobs").rglob("*") if p.is_file() and len(p.name) == 62}


def test_a_read_through_the_mount_never_sees_a_corrupted_group(tmp_path: Path) -> None:
    _check_fuse()
    a, b = Mount(tmp_path / "a"), Mount(tmp_path / "b")
    thread = CorruptingNodeThread(tmp_path / "node")
    content = os.urandom(200_000)  # one blob (below the 256 KiB minimum chunk), 13 groups
    with thread as address:
        try:
            assert thread.node is not None
            thread.node.corrupt = False
            phrase = init_device(a, "device-a")
            space_id = a.cli("space", "create", a.space).stdout.decode().strip()
            a.cli("space", "add-peer", a.space, str(address))
            a.cli("put", a.space, "/big.bin", input=content)
            a.cli("sync", a.space)
            init_device(b, "device-b", phrase)
            b.cli("space", "add-peer", space_id, str(address))
            b.cli("sync", space_id, "--name", b.space, "--metadata-only")
            before = blob_files(b)
            thread.node.corrupt = True
            b.mount("-o", "sync_interval=2,fetch_timeout=3")
            with pytest.raises(OSError) as failed:
                b.path("big.bin").read_bytes()
            assert failed.value.errno == errno.EIO
            assert blob_files(b) == before  # nothing of the bad blob was stored
            assert "sent a bad blob" in b.log_text() and "does not match the tree" in b.log_text()
            b.stop()
            # An honest node: the same read, from a fresh mount (the bad peer was backed off), returns the file.
            thread.node.corrupt = False
            b.mount("-o", "sync_interval=2,fetch_timeout=20")
            assert b.path("big.bin").read_bytes() == content
        finally:
            b.stop()
            a.stop()
    assert thread.failure is None or isinstance(thread.failure, trio.Cancelled)
