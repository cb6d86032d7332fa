"""Issue 16 item 7: a file manager's view of the mount, through GLib's ``gio`` tools (package libglib2.0-bin):
copy, move, list, the ``user.anysync.*`` attributes in ``gio info``, and the freedesktop.org trash — ``gio trash``
puts a file into ``.Trash-UID`` at the top of the mount (files/ + info/*.trashinfo), and emptying it takes the
files out of the space.

``GIO_USE_VFS=local``: no GVfs daemon (``trash://``, ``gio trash --empty`` and ``gio list trash://`` need one;
without it ``gio trash --empty`` silently does nothing), so the trash is emptied here as the trash specification
defines it: by deleting the entries of files/ and info/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import Mount, eventually

GIO = shutil.which("gio")
pytestmark = pytest.mark.skipif(GIO is None, reason="gio is not installed (Debian package libglib2.0-bin)")
ATTRS = ("state", "pinned", "local_bytes", "unsynced_bytes")


def gio(*args: str) -> str:
    env = dict(os.environ, GIO_USE_VFS="local")
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    p = subprocess.run([GIO or "gio", *args], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"gio {' '.join(args)} exited {p.returncode}: {p.stderr}"
    return p.stdout


def anysync_attrs(path: Path) -> dict[str, str]:
    """``gio info`` asked for each attribute by name (some are not listed by listxattr, so ``xattr::*`` would not
    show them); gio drops the ``user.`` namespace from the names it prints."""
    out = gio("info", "-a", ",".join(f"xattr::anysync.{a}" for a in ATTRS), str(path))
    found = {}
    for line in out.splitlines():
        key, _, value = line.strip().partition(": ")
        if key.startswith("xattr::anysync."):
            found[key.removeprefix("xattr::anysync.")] = value
    return found


def tree_bytes(top: Path) -> int:
    return sum(p.stat().st_size for p in top.rglob("*") if p.is_file() and not p.is_symlink())


def test_gio_copy_move_list_info_and_trash(mounted: Mount, tmp_path: Path) -> None:
    mnt = mounted.mountpoint
    src = tmp_path / "photo.bin"
    data = os.urandom(1 << 20)
    src.write_bytes(data)

    gio("mkdir", str(mnt / "docs"))
    gio("copy", str(src), str(mnt / "docs" / "a.bin"))
    assert (mnt / "docs" / "a.bin").read_bytes() == data
    gio("move", str(mnt / "docs" / "a.bin"), str(mnt / "b.bin"))
    assert not (mnt / "docs" / "a.bin").exists() and (mnt / "b.bin").read_bytes() == data
    (mnt / "docs" / "note.txt").write_bytes(b"in a folder")

    listing = gio("list", "-a", "standard::size", str(mnt)).splitlines()
    assert any(line.startswith("b.bin\t") and f"\t{len(data)}\t" in line + "\t" for line in listing), listing
    assert {line.split("\t")[0] for line in listing} == {"b.bin", "docs"}  # the hidden .anysync folder is not listed
    assert gio("list", str(mnt / "docs")).split() == ["note.txt"]

    attrs = eventually(lambda: (a := anysync_attrs(mnt / "b.bin")).get("local_bytes", "0") != "0" and a,
                       "b.bin's content counted in user.anysync.local_bytes")
    assert attrs["state"] == "local" and attrs["pinned"] == "0" and int(attrs["local_bytes"]) >= len(data)
    assert int(attrs["unsynced_bytes"]) == int(attrs["local_bytes"])  # no provider here: nothing confirmed

    before = tree_bytes(mnt)
    gio("trash", str(mnt / "b.bin"), str(mnt / "docs"))
    trash = mnt / f".Trash-{os.getuid()}"
    assert not (mnt / "b.bin").exists() and not (mnt / "docs").exists()
    assert (trash / "files" / "b.bin").read_bytes() == data
    assert (trash / "files" / "docs" / "note.txt").read_bytes() == b"in a folder"
    info = (trash / "info" / "b.bin.trashinfo").read_text()
    assert info.startswith("[Trash Info]\nPath=b.bin\nDeletionDate=20"), info  # a top-dir trash: relative path
    assert tree_bytes(mnt) > before  # in the trash, the files still take their room (plus the .trashinfo files)
    assert sorted(gio("list", str(trash / "files")).split()) == ["b.bin", "docs"]

    for entry in [*(trash / "files").iterdir(), *(trash / "info").iterdir()]:  # empty the trash
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    assert gio("list", str(trash / "files")).split() == []
    assert tree_bytes(mnt) <= before - len(data)
    mounted.unmount()
    names = mounted.cli("ls", mounted.space, f"/.Trash-{os.getuid()}/files").stdout.split()
    assert names == []  # committed: the space no longer holds the trashed files
    assert b"b.bin" not in mounted.cli("ls", mounted.space, "/").stdout
