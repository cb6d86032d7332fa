"""Level 7: the node killed (SIGKILL) in the middle of a transfer, and restarted at once (issue 18 item 3).

A mounted device writes a 16 MiB file; its blobs are uploaded while it is being written. As soon as the node has
stored one of them, the node gets SIGKILL — no clean shutdown, the upload cut in the middle, whatever the node was
writing left as it was. The node is restarted on the same data directory and port. The device reconnects by
itself and retries: the node ends level (every change, every blob), and a fresh device of the account restoring
through that node gets the file with its exact bytes; fsck passes on it. (``test_11_providers`` covers a provider
killed mid-upload that comes back a day later, after collecting the interrupted upload, with another provider.)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from anysyncfs.core import ids
from tests.conftest import free_port

from .conftest import Mount, SyncNode, _check_fuse, cluster_cleanup, eventually, init_device
from .conftest import write_synced as write
from .test_11_providers import count_changes, count_linked, level, providers_status, space_holdings

BIG = 16 * 1024 * 1024


def test_node_killed_mid_upload_and_restarted_gets_everything(tmp_path: Path) -> None:
    _check_fuse()
    node = SyncNode(tmp_path / "node", free_port())
    writer, fresh = Mount(tmp_path / "writer"), Mount(tmp_path / "fresh")
    with cluster_cleanup(node, writer, fresh):
        addr = node.start()
        phrase = init_device(writer, "writer")
        space_id = writer.cli("space", "create", writer.space).stdout.decode().strip()
        space = ids.from_text(ids.PREFIX_SPACE, space_id)
        writer.cli("space", "add-peer", writer.space, addr)
        writer.mount("-o", "sync_interval=2,fetch_timeout=20")
        write(writer.path("small.txt"), b"before the big one\n")
        eventually(lambda: all(level(p) for p in providers_status(writer).values()), "the node level")

        db = node.data / "node.db"
        had_changes, had_blobs = count_changes(db, space), count_linked(db, space)
        big = os.urandom(BIG)
        writing = threading.Thread(target=write, args=(writer.path("big.bin"), big))
        writing.start()
        try:
            deadline = time.monotonic() + 30
            while count_linked(db, space) == had_blobs:
                assert time.monotonic() < deadline, "the node stored none of big.bin's blobs"
                time.sleep(0.005)
            assert node.proc is not None
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)
        finally:
            writing.join(60)
        node.kill()  # closes its pipe
        assert count_changes(db, space) == had_changes, "the node was not killed in the middle of the upload"

        assert node.start() == addr  # same data, same port: the device reconnects on its own
        eventually(lambda: all(level(p) for p in providers_status(writer).values()), "the node level again")
        want_changes, want_blobs = space_holdings(writer.home / "store.db", space)
        changes, blobs = space_holdings(db, space)
        assert changes == want_changes and want_blobs <= blobs

        init_device(fresh, "fresh", phrase)
        fresh.cli("space", "add-peer", space_id, addr)
        fresh.cli("sync", space_id, "--name", fresh.space)
        assert fresh.cli("cat", fresh.space, "/big.bin", timeout=120).stdout == big
        assert fresh.cli("cat", fresh.space, "/small.txt").stdout == b"before the big one\n"
        fresh.cli("fsck")
