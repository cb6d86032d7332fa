"""Level 11: many providers per space, with real processes — three ``anysyncfs node serve`` processes, a mounted
writer (``anysyncfs mount -f``) and a fresh device that restores from the command line.

One story (issue 14, item 3): two providers; one is killed (SIGKILL) while the writer uploads to it; a day later
in simulated time (the nodes' collection clock is moved by ``ANYSYNCFS_INSECURE_TEST_CLOCK_OFFSET_S``; nothing
sleeps a day) the killed one collects the half-uploaded blobs, comes back, and a third is added to the running
mount. Every provider ends with every change and every blob; a fresh device restoring through the third alone gets
every file; ``status`` showed the killed provider's backlog; ``space remove-peer`` drops a provider from the
running mount at once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anysyncfs.core import ids
from anysyncfs.core.change import parse_change
from tests.conftest import CLI, free_port

from .conftest import REPO, Mount, SyncNode, _check_fuse, assert_clean_log, eventually, init_device
from .conftest import write_synced as write

SYNC_OPTS = ("-o", "sync_interval=2,fetch_timeout=20")
DAY_LATER = str(86400 + 3600)  # seconds the nodes' clock moves: past the default 24 h grace of an upload
CLOCK_ENV = "ANYSYNCFS_INSECURE_TEST_CLOCK_OFFSET_S"
BIG = 16 * 1024 * 1024  # long enough an upload to kill a provider in the middle of it


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[tuple[list[SyncNode], Mount, Mount]]:
    _check_fuse()
    nodes = [SyncNode(tmp_path / f"node-{n}", free_port()) for n in "abc"]
    writer, fresh = Mount(tmp_path / "writer"), Mount(tmp_path / "fresh")
    try:
        yield nodes, writer, fresh
    finally:
        writer.stop()
        for node in nodes:
            node.kill()
    assert_clean_log(writer)
    for node in nodes:
        problems = node.log_problems()
        assert not problems, f"unexpected warnings/errors in {node.root.name}'s log:\n" + "\n".join(problems)


def providers_status(m: Mount) -> dict[str, dict[str, object]]:
    (space,) = json.loads(m.cli("status", m.space, "--json").stdout)
    return {p["address"]: p for p in space["peers"]}


def status_when(m: Mount, ok: Callable[[dict[str, dict[str, object]]], bool]) -> dict[str, dict[str, object]] | None:
    status = providers_status(m)
    return status if ok(status) else None


def level(p: dict[str, object]) -> bool:
    return not p["never_synced"] and p["changes_behind"] == 0 and p["blobs_behind"] == 0 and p["bytes_behind"] == 0


def read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def space_holdings(db: Path, space: bytes) -> tuple[set[bytes], set[bytes]]:
    """(accepted change IDs, blob IDs the store links to the space or its changes list) of a store.db/node.db."""
    with read_only(db) as conn:
        rows = conn.execute("SELECT id, raw FROM changes WHERE space = ? AND status = 1", (space,)).fetchall()
        linked = {r[0] for r in conn.execute("SELECT blob FROM space_blobs WHERE space = ?", (space,))}
    referenced: set[bytes] = set()
    for cid, raw in rows:
        referenced.update(parse_change(raw, cid).header.blob_refs)
    return {r[0] for r in rows}, linked or referenced


def count_changes(db: Path, space: bytes) -> int:
    with read_only(db) as conn:
        return int(conn.execute("SELECT count(*) FROM changes WHERE space = ? AND status = 1", (space,)).fetchone()[0])


def count_linked(db: Path, space: bytes) -> int:
    with read_only(db) as conn:
        return int(conn.execute("SELECT count(*) FROM space_blobs WHERE space = ?", (space,)).fetchone()[0])


def established_to(port: int) -> int:
    """TCP connections from this machine to 127.0.0.1:``port`` that are established now (/proc/net/tcp)."""
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


def test_two_providers_one_killed_mid_upload_a_third_added_a_day_later(
        procs: tuple[list[SyncNode], Mount, Mount]) -> None:
    (node_a, node_b, node_c), writer, fresh = procs
    addr_a, addr_b = node_a.start(), node_b.start()
    phrase = init_device(writer, "writer")
    space_id = writer.cli("space", "create", writer.space).stdout.decode().strip()
    space = ids.from_text(ids.PREFIX_SPACE, space_id)
    for addr in (addr_a, addr_b):
        writer.cli("space", "add-peer", writer.space, addr)
    writer.mount(*SYNC_OPTS)
    written: dict[str, bytes] = {}

    def put(name: str, data: bytes) -> None:
        write(writer.path(name), data)
        written[name] = data

    for i in range(2):
        put(f"early-{i}.txt", f"early file {i}\n".encode() * (i + 1))
    eventually(lambda: all(level(p) for p in providers_status(writer).values()), "both providers level")

    # B is killed (SIGKILL: no clean shutdown) while the writer uploads a large file to it.
    b_had = count_changes(node_b.data / "node.db", space)
    linked = count_linked(node_b.data / "node.db", space)
    # The mount uploads a file's blobs while it is being written (they are queued as they are made): write in a
    # thread, and kill B as soon as it stored one of them, which is long before the change can follow them.
    writing = threading.Thread(target=put, args=("big.bin", os.urandom(BIG)))
    writing.start()
    try:
        deadline = time.monotonic() + 30
        while count_linked(node_b.data / "node.db", space) == linked:
            assert time.monotonic() < deadline, "B stored none of big.bin's blobs"
            time.sleep(0.005)
        assert node_b.proc is not None
        node_b.proc.send_signal(signal.SIGKILL)
        node_b.proc.wait(10)
    finally:
        writing.join(60)
    node_b.kill()  # closes its pipe
    assert count_changes(node_b.data / "node.db", space) == b_had, "B was not killed in the middle of the upload"
    put("while-b-down.txt", b"written while B was down\n")
    b_lacks = count_changes(writer.home / "store.db", space) - b_had
    assert b_lacks >= 2

    # status shows, per provider, what it is behind: A nothing, B two changes and the big file's blobs.
    status = eventually(lambda: status_when(writer, lambda s: level(s[addr_a])), "A level")
    b = status[addr_b]
    assert b["changes_behind"] == b_lacks and b["bytes_behind"] > BIG and b["blobs_behind"] >= 1, b
    text = writer.cli("status", writer.space).stdout.decode()
    assert f"{addr_b}: not connected" in text and f"behind: {b_lacks} change(s)" in text, text

    # A day later: B collects the blobs of the interrupted upload (no change references them), then comes back.
    env = dict(node_b.env, **{CLOCK_ENV: DAY_LATER})
    gc = subprocess.run([*CLI, "node", "gc", "--data", str(node_b.data)], env=env, capture_output=True, timeout=60,
                        cwd=REPO, check=True)
    found = re.match(rb"unlinked (\d+) blob\(s\) .*; deleted (\d+) file\(s\)", gc.stdout)
    assert found and int(found[1]) + int(found[2]) >= 1, gc.stdout
    for node in (node_b, node_c):
        node.env[CLOCK_ENV] = DAY_LATER
        node.expect_log("test clock")
    node_b.start()
    addr_c = node_c.start()
    writer.cli("space", "add-peer", writer.space, addr_c)  # to the running mount: no remount
    eventually(lambda: status_when(writer, lambda s: s.keys() == {addr_a, addr_b, addr_c}
                                   and all(level(p) for p in s.values())), "all three providers level")

    # Every provider holds every accepted change and every blob those changes list.
    want_changes, want_blobs = space_holdings(writer.home / "store.db", space)
    assert len(want_changes) >= 4 and len(want_blobs) >= 4
    for node in (node_a, node_b, node_c):
        changes, blobs = space_holdings(node.data / "node.db", space)
        assert changes == want_changes, node.root.name
        assert want_blobs <= blobs, f"{node.root.name} lacks {len(want_blobs - blobs)} blob(s)"
        assert all((node.data / "blobs" / b.hex()[:2] / b.hex()[2:]).is_file() for b in want_blobs)

    # A fresh device of the account, restoring through the third provider alone, gets every file.
    init_device(fresh, "fresh", phrase)
    fresh.cli("space", "add-peer", space_id, addr_c)
    fresh.cli("sync", space_id, "--name", fresh.space)
    for name, data in written.items():
        assert fresh.cli("cat", fresh.space, "/" + name).stdout == data, name

    # remove-peer reaches the running mount at once: it disconnects from A and does not dial it again.
    port_a = int(addr_a.rsplit(":", 1)[1])
    eventually(lambda: established_to(port_a) == 1, "the mount connected to A")
    writer.cli("space", "remove-peer", writer.space, addr_a)
    eventually(lambda: established_to(port_a) == 0, "the mount disconnected from A", timeout=3)
    time.sleep(2.0)  # a mount still dialling A reconnects within 0.5-1.5 s
    assert established_to(port_a) == 0
    assert set(providers_status(writer)) == {addr_b, addr_c}
