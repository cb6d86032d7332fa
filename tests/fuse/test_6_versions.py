"""Level 6: versions of mounted files from the command line — `history PATH` and `revert PATH --at WHEN` on paths
inside a mount, and the same through `.anysync/history` folders."""

from __future__ import annotations

import os
import stat
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


def _first_change(m: Mount, path: os.PathLike[str] | str, what: str) -> str:
    out = m.cli("history", str(path)).stdout.decode().splitlines()
    return next(line for line in out if what in line).split()[1]


def test_revert_never_follows_a_symlink_out_of_the_mount(mounted: Mount) -> None:
    """Issue 10 item 4: a member turns a path into a symlink to a private file of the victim (here made locally;
    a synced Create shows the same link); the victim's revert must neither overwrite nor chmod that file."""
    private = mounted.root / "private.txt"
    private.write_bytes(b"the victim's own secret\n")
    os.chmod(private, 0o600)
    f = mounted.path("notes.txt")
    write(f, b"attacker's content\n")
    os.chmod(f, 0o644)
    notes_v1 = _first_change(mounted, f, "write 19 bytes")
    f.unlink()
    os.symlink(private, f)

    p = mounted.cli("revert", str(f), "--at", notes_v1, check=False)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "symbolic link" in err, err
    assert private.read_bytes() == b"the victim's own secret\n"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert os.readlink(f) == str(private)  # the in-space link is left as it is

    # the same with a folder on the way turned into a link to a private folder of the victim
    d = mounted.path("docs")
    d.mkdir()
    write(d / "a.txt", b"attacker's content\n")
    first = _first_change(mounted, d / "a.txt", "write 19 bytes")
    outside = mounted.root / "outside"
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"private\n")
    os.chmod(outside / "a.txt", 0o600)
    (d / "a.txt").unlink()
    d.rmdir()
    os.symlink(outside, d)
    p = mounted.cli("revert", str(d / "a.txt"), "--at", first, check=False)
    err = p.stderr.decode()
    assert p.returncode == 2 and "symbolic link" in err and len(err.strip().splitlines()) == 1, err
    assert (outside / "a.txt").read_bytes() == b"private\n"
    assert stat.S_IMODE((outside / "a.txt").stat().st_mode) == 0o600

    # once the link is removed, revert restores the file inside the space, with its old mode
    f.unlink()
    mounted.cli("revert", str(f), "--at", notes_v1)
    assert not f.is_symlink() and f.read_bytes() == b"attacker's content\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644


def test_pin_and_evict_never_follow_a_symlink(mounted: Mount) -> None:
    """Like revert, the offline commands set attributes by path: a link in the space must not lead them out."""
    private = mounted.root / "private.txt"
    private.write_bytes(b"mine\n")
    link = mounted.path("link")
    os.symlink(private, link)
    for command in ("pin", "unpin", "evict"):
        p = mounted.cli(command, str(link), check=False)
        assert p.returncode == 2 and b"symbolic link" in p.stderr, p.stderr
    assert os.listxattr(private) == []
