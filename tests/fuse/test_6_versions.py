"""Level 6: versions of mounted files from the command line — `history PATH` and `revert PATH --at WHEN` on paths
inside a mount, and the same through `.anysync/history` folders."""

from __future__ import annotations

import os
import time

from .conftest import Mount


def write(path: os.PathLike[str] | str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def test_history_and_revert_of_a_mounted_path(mounted: Mount) -> None:
    f = mounted.path("notes.txt")
    write(f, b"version one\n")
    time.sleep(0.01)
    write(f, b"version two, longer\n")
    out = mounted.cli("history", str(f)).stdout.decode().splitlines()
    assert len(out) >= 2, out
    assert "create notes.txt" in out[0]
    first = next(line for line in out if "write 12 bytes" in line).split()[1]  # the first content
    assert first.startswith("ch-")

    p = mounted.cli("revert", str(f), "--at", first)
    assert b"restored 12 bytes" in p.stdout
    assert f.read_bytes() == b"version one\n"  # the running mount shows it at once
    after = mounted.cli("history", str(f)).stdout.decode().splitlines()
    assert len(after) > len(out) and "write 12 bytes" in after[-1]  # a new change, not a rewrite of history

    # the same through the space's name, and by time
    by_space = mounted.cli("history", mounted.space, "/notes.txt").stdout.decode().splitlines()
    assert by_space == mounted.cli("history", str(f)).stdout.decode().splitlines()
    p = mounted.cli("revert", str(f), "--at", "1999-01-01T00:00:00", check=False)
    assert p.returncode == 6 and b"no change at or before" in p.stderr
    p = mounted.cli("history", str(mounted.root / "elsewhere"), check=False)
    assert p.returncode == 6 and b"not inside a space mounted" in p.stderr


def test_revert_without_a_mount(fuse_space: Mount) -> None:
    fuse_space.cli("put", fuse_space.space, "/a.txt", input=b"old")
    fuse_space.cli("put", fuse_space.space, "/a.txt", input=b"new")
    first = fuse_space.cli("history", fuse_space.space, "/a.txt").stdout.decode().split()[1]
    fuse_space.cli("revert", fuse_space.space, "/a.txt", "--at", first)
    assert fuse_space.cli("cat", fuse_space.space, "/a.txt").stdout == b"old"
    fuse_space.cli("fsck")
