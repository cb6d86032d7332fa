"""VFS permissions as a local disk enforces them: mode bits for owner/group/other, root, sticky directories,
chmod/chown/utimens rules, setuid/setgid clearing, setgid directories."""

from __future__ import annotations

import errno
import os
import stat

from anysyncfs.fs.vfs import ROOT_INODE, Ctx, SetAttrRequest
from tests.unit.test_vfs_support import (  # noqa: F401  (env is a fixture)
    ALICE,
    BOB,
    ROOT,
    Env,
    env,
    errno_of,
    listing,
    read_all,
    write_file,
)

ALICE_IN_BOBS_GROUP = Ctx(uid=1000, gid=2000)


def shared_dir(env: Env, mode: int = 0o777) -> int:
    d = env.vfs.mkdir(ROOT_INODE, b"shared", 0o777, Ctx(0, 0, umask=0))
    env.vfs.setattr(d.inode, SetAttrRequest(mode=mode), None, ROOT)
    return d.inode


def test_owner_group_other_bits(env: Env) -> None:
    vfs = env.vfs
    d = shared_dir(env)
    f = write_file(vfs, d, b"f", b"secret", ctx=BOB, mode=0o640)
    assert f.uid == BOB.uid and f.gid == BOB.gid
    assert read_all(vfs, f.inode, BOB) == b"secret"
    assert errno_of(vfs.open, f.inode, os.O_RDONLY, ALICE) == errno.EACCES  # other: no bits
    assert read_all(vfs, f.inode, ALICE_IN_BOBS_GROUP) == b"secret"  # group: read
    assert errno_of(vfs.open, f.inode, os.O_WRONLY, ALICE_IN_BOBS_GROUP) == errno.EACCES
    assert errno_of(vfs.open, f.inode, os.O_RDONLY | os.O_TRUNC, ALICE_IN_BOBS_GROUP) == errno.EACCES
    vfs.setattr(f.inode, SetAttrRequest(mode=0o604), None, BOB)
    assert read_all(vfs, f.inode, ALICE) == b"secret"
    # The owner class applies to the owner even when "other" would allow more.
    vfs.setattr(f.inode, SetAttrRequest(mode=0o044), None, BOB)
    assert errno_of(vfs.open, f.inode, os.O_RDONLY, BOB) == errno.EACCES


def test_root_bypasses_all_but_exec(env: Env) -> None:
    vfs = env.vfs
    assert errno_of(write_file, vfs, ROOT_INODE, b"f", b"data", ALICE) == errno.EACCES  # root's 0o755 folder
    f = write_file(vfs, shared_dir(env), b"f", b"data", ctx=ALICE, mode=0o000)
    assert read_all(vfs, f.inode, ROOT) == b"data"
    fh = vfs.open(f.inode, os.O_WRONLY, ROOT)
    vfs.release(fh)
    assert errno_of(vfs.access, f.inode, os.X_OK, ROOT) == errno.EACCES  # no x bit at all
    vfs.setattr(f.inode, SetAttrRequest(mode=0o001), None, ALICE)
    vfs.access(f.inode, os.X_OK, ROOT)
    vfs.access(f.inode, os.R_OK | os.W_OK, ROOT)
    assert errno_of(vfs.access, f.inode, os.R_OK, ALICE) == errno.EACCES
    vfs.access(f.inode, os.F_OK, BOB)


def test_directory_search_read_and_write_bits(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(shared_dir(env), b"d", 0o700, ALICE)
    write_file(vfs, d.inode, b"inside", b"x", ctx=ALICE)
    assert errno_of(vfs.lookup, d.inode, b"inside", BOB) == errno.EACCES
    assert errno_of(vfs.opendir, d.inode, BOB) == errno.EACCES
    assert errno_of(vfs.create, d.inode, b"new", 0o644, os.O_WRONLY | os.O_CREAT, BOB) == errno.EACCES
    vfs.setattr(d.inode, SetAttrRequest(mode=0o711), None, ALICE)  # search but not read
    assert vfs.lookup(d.inode, b"inside", BOB).size == 1
    assert errno_of(vfs.opendir, d.inode, BOB) == errno.EACCES
    vfs.setattr(d.inode, SetAttrRequest(mode=0o755), None, ALICE)
    assert listing(vfs, d.inode, BOB) == [b"inside"]
    assert errno_of(vfs.unlink, d.inode, b"inside", BOB) == errno.EACCES
    assert errno_of(vfs.mkdir, d.inode, b"sub", 0o755, BOB) == errno.EACCES
    assert errno_of(vfs.rename, d.inode, b"inside", d.inode, b"stolen", 0, BOB) == errno.EACCES


def test_creator_may_use_a_file_created_without_permissions(env: Env) -> None:
    d = shared_dir(env)
    fh, attr = env.vfs.create(d, b"ro", 0o444, os.O_WRONLY | os.O_CREAT, ALICE)
    env.vfs.write(fh, 0, b"written anyway")
    env.vfs.release(fh)
    assert stat.S_IMODE(attr.mode) == 0o444
    assert errno_of(env.vfs.open, attr.inode, os.O_WRONLY, ALICE) == errno.EACCES


def test_sticky_directory(env: Env) -> None:
    vfs = env.vfs
    d = shared_dir(env, 0o1777)
    write_file(vfs, d, b"alices", b"a", ctx=ALICE)
    write_file(vfs, d, b"bobs", b"b", ctx=BOB)
    assert errno_of(vfs.unlink, d, b"alices", BOB) == errno.EPERM
    assert errno_of(vfs.rename, d, b"alices", d, b"mine", 0, BOB) == errno.EPERM
    assert errno_of(vfs.rename, d, b"bobs", d, b"alices", 0, BOB) == errno.EPERM  # replacing counts too
    vfs.rename(d, b"bobs", d, b"bobs2", 0, BOB)  # own files are fine
    vfs.unlink(d, b"alices", ALICE)
    vfs.unlink(d, b"bobs2", ROOT)  # root always may
    # Without the sticky bit anyone with write permission on the directory may remove any entry.
    vfs.setattr(d, SetAttrRequest(mode=0o777), None, ROOT)
    write_file(vfs, d, b"alices", b"a", ctx=ALICE)
    vfs.unlink(d, b"alices", BOB)


def test_chmod_chown_rules(env: Env) -> None:
    vfs = env.vfs
    d = shared_dir(env)
    f = write_file(vfs, d, b"f", b"x", ctx=ALICE)
    assert errno_of(vfs.setattr, f.inode, SetAttrRequest(mode=0o777), None, BOB) == errno.EPERM
    assert errno_of(vfs.setattr, f.inode, SetAttrRequest(uid=BOB.uid), None, ALICE) == errno.EPERM
    assert errno_of(vfs.setattr, f.inode, SetAttrRequest(gid=3000), None, ALICE) == errno.EPERM  # not a member
    assert errno_of(vfs.setattr, f.inode, SetAttrRequest(gid=ALICE.gid), None, BOB) == errno.EPERM  # not owner
    a = vfs.setattr(f.inode, SetAttrRequest(uid=ALICE.uid, gid=ALICE.gid), None, ALICE)  # a no-op chown is fine
    assert (a.uid, a.gid) == (ALICE.uid, ALICE.gid)
    member = Ctx(uid=1000, gid=1000, pid=0)
    b = vfs.setattr(f.inode, SetAttrRequest(gid=1000), None, member)
    assert b.gid == 1000
    c = vfs.setattr(f.inode, SetAttrRequest(uid=5, gid=6), None, ROOT)
    assert (c.uid, c.gid) == (5, 6)
    m = vfs.setattr(f.inode, SetAttrRequest(mode=0o4751), None, ROOT)
    assert stat.S_IMODE(m.mode) == 0o4751 and stat.S_ISREG(m.mode)


def test_chmod_by_non_member_drops_setgid(env: Env) -> None:
    d = shared_dir(env)
    f = write_file(env.vfs, d, b"f", b"x", ctx=ALICE)
    env.vfs.setattr(f.inode, SetAttrRequest(gid=4242), None, ROOT)
    a = env.vfs.setattr(f.inode, SetAttrRequest(mode=0o2755), None, ALICE)
    assert stat.S_IMODE(a.mode) == 0o755


def test_utimens_rules(env: Env) -> None:
    vfs = env.vfs
    d = shared_dir(env)
    f = write_file(vfs, d, b"f", b"x", ctx=ALICE)
    vfs.setattr(f.inode, SetAttrRequest(mode=0o666), None, ALICE)
    assert errno_of(vfs.setattr, f.inode, SetAttrRequest(mtime_ns=5), None, BOB) == errno.EPERM
    t = vfs.setattr(f.inode, SetAttrRequest(atime_now=True, mtime_now=True), None, BOB)  # write permission: ok
    assert t.mtime_ns > 5
    vfs.setattr(f.inode, SetAttrRequest(mode=0o644), None, ALICE)
    assert errno_of(vfs.setattr, f.inode, SetAttrRequest(atime_now=True, mtime_now=True), None, BOB) == errno.EACCES
    own = vfs.setattr(f.inode, SetAttrRequest(atime_ns=7, mtime_ns=8), None, ALICE)
    assert (own.atime_ns, own.mtime_ns) == (7, 8)


def test_truncate_needs_write_permission(env: Env) -> None:
    d = shared_dir(env)
    f = write_file(env.vfs, d, b"f", b"content", ctx=ALICE, mode=0o644)
    assert errno_of(env.vfs.setattr, f.inode, SetAttrRequest(size=0), None, BOB) == errno.EACCES
    assert env.vfs.setattr(f.inode, SetAttrRequest(size=3), None, ALICE).size == 3
    d_attr = env.vfs.lookup(ROOT_INODE, b"shared", ROOT)
    assert errno_of(env.vfs.setattr, d_attr.inode, SetAttrRequest(size=0), None, ROOT) == errno.EISDIR


def test_setuid_cleared_by_unprivileged_write_truncate_and_chown(env: Env) -> None:
    vfs = env.vfs
    d = shared_dir(env)
    f = write_file(vfs, d, b"prog", b"#!/bin/sh\n", ctx=ALICE, mode=0o755)
    vfs.setattr(f.inode, SetAttrRequest(mode=0o6777), None, ROOT)
    fh = vfs.open(f.inode, os.O_WRONLY, BOB)  # other may write (0o777)
    vfs.write(fh, 0, b"#")
    vfs.release(fh)
    assert stat.S_IMODE(vfs.getattr(f.inode).mode) == 0o777  # both bits gone (group execute is set)
    # Root writing keeps them (CAP_FSETID).
    vfs.setattr(f.inode, SetAttrRequest(mode=0o6777), None, ROOT)
    fh = vfs.open(f.inode, os.O_WRONLY, ROOT)
    vfs.write(fh, 0, b"#")
    vfs.release(fh)
    assert stat.S_IMODE(vfs.getattr(f.inode).mode) == 0o6777
    # Truncation by a non-root user clears them; setgid without group execute (a locking mark) stays.
    vfs.setattr(f.inode, SetAttrRequest(mode=0o6747), None, ROOT)
    vfs.setattr(f.inode, SetAttrRequest(size=1), None, ALICE)
    assert stat.S_IMODE(vfs.getattr(f.inode).mode) == 0o2747
    # chown clears setuid, even by root.
    vfs.setattr(f.inode, SetAttrRequest(mode=0o4755), None, ROOT)
    vfs.setattr(f.inode, SetAttrRequest(uid=BOB.uid), None, ROOT)
    assert stat.S_IMODE(vfs.getattr(f.inode).mode) == 0o755


def test_setgid_directory_inheritance(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"proj", 0o777, Ctx(0, 0, umask=0))
    vfs.setattr(d.inode, SetAttrRequest(gid=777, mode=0o2777), None, ROOT)
    sub = vfs.mkdir(d.inode, b"sub", 0o755, ALICE)
    assert sub.gid == 777 and sub.mode & stat.S_ISGID
    f = write_file(vfs, d.inode, b"f", b"x", ctx=ALICE)
    assert f.gid == 777 and not f.mode & stat.S_ISGID


def test_moving_a_directory_needs_write_permission_on_it(env: Env) -> None:
    vfs = env.vfs
    top = shared_dir(env)
    other = vfs.mkdir(top, b"other", 0o777, Ctx(0, 0, umask=0))
    vfs.mkdir(top, b"alices", 0o755, ALICE)
    assert errno_of(vfs.rename, top, b"alices", other.inode, b"moved", 0, BOB) == errno.EACCES
    vfs.rename(top, b"alices", top, b"renamed", 0, BOB)  # same parent: '..' does not change
    vfs.rename(top, b"renamed", other.inode, b"moved", 0, ALICE)


def test_xattr_permissions(env: Env) -> None:
    vfs = env.vfs
    d = shared_dir(env)
    f = write_file(vfs, d, b"f", b"x", ctx=ALICE, mode=0o644)
    vfs.setxattr(f.inode, b"user.k", b"v", 0, ALICE)
    assert vfs.getxattr(f.inode, b"user.k", BOB) == b"v"
    assert errno_of(vfs.setxattr, f.inode, b"user.k", b"w", 0, BOB) == errno.EACCES
    assert errno_of(vfs.removexattr, f.inode, b"user.k", BOB) == errno.EACCES
    vfs.setattr(f.inode, SetAttrRequest(mode=0o600), None, ALICE)
    assert errno_of(vfs.getxattr, f.inode, b"user.k", BOB) == errno.EACCES
