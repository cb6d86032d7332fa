"""Extended attributes (user.* stored and synced; read-only user.anysync.* sync state) and the hidden
``.anysync`` folder (history as folders, the conflicts list)."""

from __future__ import annotations

import errno
import os
import stat
import time

import pytest

from anysyncfs.core import ids
from anysyncfs.fs import virtual
from anysyncfs.fs.vfs import ANYSYNC_INO, CONFLICTS_INO, ROOT_INODE, XATTR_CREATE, XATTR_REPLACE, SetAttrRequest
from tests.unit.test_vfs_support import (  # noqa: F401  (env is a fixture)
    ROOT,
    Env,
    env,
    errno_of,
    listing,
    path_inode,
    read_all,
    write_file,
)


# ---------------------------------------------------------------------------------------------------- xattrs
def test_user_xattrs_roundtrip(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"x")
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    vfs.setxattr(f.inode, b"user.colour", b"blue", 0, ROOT)
    vfs.setxattr(f.inode, b"user.empty", b"", 0, ROOT)
    vfs.setxattr(d.inode, b"user.tag", b"\x00\xff" * 100, 0, ROOT)
    assert vfs.getxattr(f.inode, b"user.colour", ROOT) == b"blue"
    assert vfs.getxattr(f.inode, b"user.empty", ROOT) == b""
    assert vfs.getxattr(d.inode, b"user.tag", ROOT) == b"\x00\xff" * 100
    names = vfs.listxattr(f.inode, ROOT)
    assert names == [b"user.colour", b"user.empty"]  # the virtual user.anysync.* are readable, not listed
    vfs.list_virtual_xattrs = True  # -o list_virtual_xattrs
    names = vfs.listxattr(f.inode, ROOT)
    assert names[:2] == [b"user.colour", b"user.empty"]
    assert set(names[2:]) == {b"user.anysync.state", b"user.anysync.version", b"user.anysync.author"}
    vfs.list_virtual_xattrs = False
    vfs.setxattr(f.inode, b"user.colour", b"red", XATTR_REPLACE, ROOT)
    assert vfs.getxattr(f.inode, b"user.colour", ROOT) == b"red"
    assert errno_of(vfs.setxattr, f.inode, b"user.colour", b"x", XATTR_CREATE, ROOT) == errno.EEXIST
    assert errno_of(vfs.setxattr, f.inode, b"user.new", b"x", XATTR_REPLACE, ROOT) == errno.ENODATA
    vfs.removexattr(f.inode, b"user.colour", ROOT)
    assert errno_of(vfs.getxattr, f.inode, b"user.colour", ROOT) == errno.ENODATA
    assert errno_of(vfs.removexattr, f.inode, b"user.colour", ROOT) == errno.ENODATA
    assert b"user.colour" not in vfs.listxattr(f.inode, ROOT)


def test_xattr_limits_and_namespaces(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"x")
    s = vfs.symlink(ROOT_INODE, b"s", b"f", ROOT)
    assert errno_of(vfs.setxattr, f.inode, b"user." + b"n" * 251, b"v", 0, ROOT) == errno.ERANGE
    vfs.setxattr(f.inode, b"user." + b"n" * 250, b"v", 0, ROOT)  # 255 bytes is the limit
    assert errno_of(vfs.setxattr, f.inode, b"user.big", bytes(65537), 0, ROOT) == errno.E2BIG
    vfs.setxattr(f.inode, b"user.big", bytes(65536), 0, ROOT)
    assert errno_of(vfs.setxattr, f.inode, b"trusted.x", b"v", 0, ROOT) == errno.ENOTSUP
    assert errno_of(vfs.setxattr, f.inode, b"security.selinux", b"v", 0, ROOT) == errno.ENOTSUP
    assert errno_of(vfs.getxattr, f.inode, b"security.capability", ROOT) == errno.ENODATA  # never ENOTSUP
    assert errno_of(vfs.removexattr, f.inode, b"system.posix_acl_access", ROOT) == errno.ENOTSUP
    assert errno_of(vfs.setxattr, s.inode, b"user.x", b"v", 0, ROOT) == errno.EPERM  # not on symlinks
    assert errno_of(vfs.setxattr, f.inode, b"user.", b"v", 0, ROOT) == errno.EINVAL


def test_sync_state_xattrs(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"report.txt", os.urandom(20_000))
    assert vfs.getxattr(f.inode, b"user.anysync.state", ROOT) == b"local"
    node = env.replica.tree.nodes[env.replica.tree.lookup(bytes(16), b"report.txt").node]  # type: ignore[union-attr]
    assert vfs.getxattr(f.inode, b"user.anysync.version", ROOT) == ids.change_text(node.version).encode()
    assert vfs.getxattr(f.inode, b"user.anysync.author", ROOT) == ids.account_text(
        env.unlocked.identity.account_id
    ).encode()
    d = vfs.mkdir(ROOT_INODE, b"dir", 0o755, ROOT)
    assert vfs.getxattr(d.inode, b"user.anysync.state", ROOT) == b"local"
    copy = write_file(vfs, ROOT_INODE, b"report.sync-conflict-20260101-120000-abcdefgh.txt", b"other version")
    assert vfs.getxattr(copy.inode, b"user.anysync.state", ROOT) == b"conflict"
    for name in (b"user.anysync.state", b"user.anysync.version", b"user.anysync.author", b"user.anysync.other"):
        assert errno_of(vfs.setxattr, f.inode, name, b"x", 0, ROOT) == errno.EPERM
        assert errno_of(vfs.removexattr, f.inode, name, ROOT) == errno.EPERM
    # Blobs gone from this device (evicted, or not fetched yet): remote-only.
    for blob_id in list(env.replica.blobs.iter_ids()):
        env.replica.blobs.delete(blob_id)
    assert vfs.getxattr(f.inode, b"user.anysync.state", ROOT) == b"remote-only"


def test_xattrs_in_one_change_each_and_ctime(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"x")
    before = env.changes()
    t0 = vfs.getattr(f.inode).ctime_ns
    time.sleep(0.002)
    vfs.setxattr(f.inode, b"user.a", b"1", 0, ROOT)
    assert env.changes() == before + 1
    assert vfs.getattr(f.inode).ctime_ns > t0


# ---------------------------------------------------------------------------------------------------- .anysync
def test_history_folders_show_earlier_versions(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"docs", 0o755, ROOT)
    f = write_file(vfs, d.inode, b"note.txt", b"first version")
    fh = vfs.open(f.inode, os.O_WRONLY | os.O_TRUNC, ROOT)
    vfs.write(fh, 0, b"second, longer version")
    vfs.release(fh)
    vfs.unlink(d.inode, b"note.txt", ROOT)
    assert listing(vfs, d.inode) == []

    hidden = vfs.lookup(ROOT_INODE, b".anysync", ROOT)
    assert hidden.inode == ANYSYNC_INO and stat.S_IMODE(hidden.mode) == 0o555
    assert listing(vfs, ANYSYNC_INO) == [b"conflicts", b"history"]
    history = vfs.lookup(ANYSYNC_INO, b"history", ROOT)
    days = listing(vfs, history.inode)
    assert days == [time.strftime("%Y-%m-%d", time.gmtime()).encode()] or len(days) >= 1
    seen: list[bytes] = []
    for day in days:
        day_inode = vfs.lookup(history.inode, day, ROOT).inode
        for change_dir in listing(vfs, day_inode):
            hhmmss, _, label = change_dir.partition(b"-")
            assert len(hhmmss) == len(b"HHMMSS.ffffffZ") and hhmmss.endswith(b"Z") and len(label) == 12
            root = vfs.lookup(day_inode, change_dir, ROOT).inode
            try:
                inner = vfs.lookup(root, b"docs", ROOT).inode
                note = vfs.lookup(inner, b"note.txt", ROOT)
            except Exception:  # noqa: BLE001 - versions before the file existed or after it went
                continue
            seen.append(read_all(vfs, note.inode))
    # The changes: create (empty), write v1, truncate+write v2; then the unlink (no file).
    assert seen[-2:] == [b"first version", b"second, longer version"]
    assert b"" in seen


def test_history_is_read_only(env: Env) -> None:
    vfs = env.vfs
    write_file(vfs, ROOT_INODE, b"f", b"data")
    history = vfs.lookup(ANYSYNC_INO, b"history", ROOT).inode
    day = vfs.lookup(history, listing(vfs, history)[0], ROOT).inode
    root = vfs.lookup(day, listing(vfs, day)[-1], ROOT).inode
    f = vfs.lookup(root, b"f", ROOT)
    assert read_all(vfs, f.inode) == b"data"
    assert vfs.getxattr(f.inode, b"user.anysync.state", ROOT) == b"local"
    assert errno_of(vfs.open, f.inode, os.O_WRONLY, ROOT) == errno.EROFS
    assert errno_of(vfs.create, root, b"new", 0o644, os.O_WRONLY | os.O_CREAT, ROOT) == errno.EROFS
    assert errno_of(vfs.mkdir, day, b"x", 0o755, ROOT) == errno.EROFS
    assert errno_of(vfs.unlink, root, b"f", ROOT) == errno.EROFS
    assert errno_of(vfs.setattr, f.inode, SetAttrRequest(mode=0o600), None, ROOT) == errno.EROFS
    assert errno_of(vfs.setxattr, f.inode, b"user.x", b"1", 0, ROOT) == errno.EROFS
    assert errno_of(vfs.rename, root, b"f", ROOT_INODE, b"g", 0, ROOT) == errno.EROFS
    assert errno_of(vfs.link, f.inode, ROOT_INODE, b"g", ROOT) == errno.EXDEV
    assert errno_of(vfs.open, CONFLICTS_INO, os.O_WRONLY, ROOT) == errno.EROFS
    assert errno_of(vfs.rmdir, ROOT_INODE, b".anysync", ROOT) == errno.EBUSY
    assert vfs.lookup(root, b"..", ROOT).inode == day


def test_conflicts_file_lists_conflict_copies(env: Env) -> None:
    vfs = env.vfs
    assert read_all(vfs, CONFLICTS_INO) == b""
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    write_file(vfs, d.inode, b"plan.sync-conflict-20260102-030405-abcdefgh.md", b"x")
    write_file(vfs, ROOT_INODE, b"plain.txt", b"y")
    attr = vfs.getattr(CONFLICTS_INO)
    text = b"d/plan.sync-conflict-20260102-030405-abcdefgh.md\n"
    assert attr.size == len(text) and stat.S_ISREG(attr.mode)
    assert read_all(vfs, path_inode(vfs, b".anysync/conflicts")) == text


def test_busy_days_are_grouped_into_hours_and_minutes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(virtual, "BUCKET_MAX", 3)
    vfs = env.vfs
    for i in range(8):
        vfs.mkdir(ROOT_INODE, b"d%d" % i, 0o755, ROOT)
    history = vfs.lookup(ANYSYNC_INO, b"history", ROOT).inode
    day_name = listing(vfs, history)[-1]
    day = vfs.lookup(history, day_name, ROOT).inode
    hours = listing(vfs, day)
    assert hours and all(len(h) == 2 and h.isdigit() for h in hours)

    found: list[bytes] = []

    def walk(inode: int) -> None:
        for name in listing(vfs, inode):
            child = vfs.lookup(inode, name, ROOT)
            if len(name) in (2, 4):
                assert vfs.lookup(child.inode, b"..", ROOT).inode == inode
                walk(child.inode)
            else:
                found.append(name)
                assert vfs.lookup(child.inode, b"..", ROOT).inode == inode  # '..' is the folder listing it
                assert vfs.lookup(day, name, ROOT).inode == child.inode  # and it opens from its day folder too

    walk(day)
    assert len(found) == env.changes() and found == sorted(found)
