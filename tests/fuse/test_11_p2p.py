"""Two mounts of one space syncing directly, device to device, with no provider at all (issue 13): B knows only
A's device address (``space add-peer`` with the address ``status --json`` shows under ``listen``), fetches the
space from A, and both then see each other's files — A dials B back through the address record B offered it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import Mount, _check_fuse, assert_clean_log, eventually, init_device
from .conftest import write_synced as write

OPTS = ("-o", "sync_interval=2,fetch_timeout=20,listen=127.0.0.1:0,discovery=off")


def listen_addresses(m: Mount) -> list[str]:
    [space] = json.loads(m.cli("status", m.space, "--json").stdout)
    return list(space["listen"])


def test_two_mounts_sync_directly_without_a_provider(tmp_path: Path) -> None:
    _check_fuse()
    a, b = Mount(tmp_path / "a"), Mount(tmp_path / "b")
    try:
        phrase = init_device(a, "device-a")
        space_id = a.cli("space", "create", a.space).stdout.decode().strip()
        a.mount(*OPTS)
        [address] = eventually(lambda: listen_addresses(a), "A shows its listening address")
        assert address.startswith("anysync://dv-") and "@127.0.0.1:" in address

        init_device(b, "device-b", phrase)
        b.cli("space", "add-peer", space_id, address)
        out = b.cli("sync", space_id, "--name", b.space).stdout.decode()  # the space itself comes from device A
        assert "1/1 peers reached" in out, out
        b.mount(*OPTS)

        big = os.urandom(3 << 20)
        write(a.path("from-a.bin"), big)
        eventually(lambda: a.path("from-a.bin").exists() and b.path("from-a.bin").read_bytes() == big,
                   "A's file read on B (its blobs fetched from device A)", 30)
        other = os.urandom(1 << 20)
        write(b.path("from-b.bin"), other)
        eventually(lambda: a.path("from-b.bin").read_bytes() == other, "B's file read on A", 30)

        def connected_by() -> list[str] | None:  # the mount rewrites its status file every second
            [status] = json.loads(b.cli("status", b.space, "--json").stdout)
            return [p["found_by"] for p in status["peers"] if p["connected"]] or None

        assert eventually(connected_by, "B's status shows its session with A") == ["manual"]
    finally:
        for m in (a, b):
            m.stop()
    for m in (a, b):
        assert_clean_log(m)
