"""VFS by direct calls: files, directories, symlinks, hard links, rename, unlink/rename while open, flags, names."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from anysyncfs.core import ops
from anysyncfs.fs.vfs import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INODE,
    Ctx,
    SetAttrRequest,
    Vfs,
)
from tests.unit.test_vfs_support import (  # noqa: F401  (env is a fixture)
    ROOT,
    Env,
    env,
    errno_of,
    listing,
    make_env,
    path_inode,
    read_all,
    write_file,
)


def test_create_write_read_and_one_change_per_flush(env: Env) -> None:
    vfs = env.vfs
    before = env.changes()
    fh, attr = vfs.create(ROOT_INODE, b"a.bin", 0o640, os.O_RDWR | os.O_CREAT, ROOT)
    assert env.changes() == before + 1  # the create
    assert stat.S_ISREG(attr.mode) and stat.S_IMODE(attr.mode) == 0o640 and attr.nlink == 1
    data = os.urandom(3 << 20)
    for off in range(0, len(data), 128 << 10):
        vfs.write(fh, off, data[off : off + (128 << 10)])
    assert vfs.getattr(attr.inode).size == len(data)  # staged size is visible at once
    assert env.changes() == before + 1  # nothing committed while writing
    assert vfs.read(fh, 1000, 5000) == data[1000:6000]  # reads see staged bytes
    vfs.flush(fh)
    assert env.changes() == before + 2  # ONE change for all those writes
    assert isinstance(env.last_ops()[0], ops.Write) and len(env.last_ops()) == 1
    vfs.flush(fh)
    assert env.changes() == before + 2  # nothing staged: nothing to commit
    vfs.release(fh)
    assert read_all(vfs, attr.inode) == data
    assert not list(env.staging.iterdir())  # staging files go once committed


def test_small_file_and_empty_file(env: Env) -> None:
    a = write_file(env.vfs, ROOT_INODE, b"small", b"hello")
    b = write_file(env.vfs, ROOT_INODE, b"empty", b"")
    assert read_all(env.vfs, a.inode) == b"hello" and a.size == 5
    assert b.size == 0 and read_all(env.vfs, b.inode) == b""
    fh = env.vfs.open(a.inode, os.O_RDONLY, ROOT)
    assert env.vfs.read(fh, 3, 100) == b"lo"
    assert env.vfs.read(fh, 5, 100) == b""
    assert env.vfs.read(fh, 500, 100) == b""
    env.vfs.release(fh)


def test_directories_and_link_counts(env: Env) -> None:
    vfs = env.vfs
    assert vfs.getattr(ROOT_INODE).nlink == 2
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    assert stat.S_ISDIR(d.mode) and d.nlink == 2
    assert vfs.getattr(ROOT_INODE).nlink == 3
    vfs.mkdir(d.inode, b"sub1", 0o755, ROOT)
    vfs.mkdir(d.inode, b"sub2", 0o755, ROOT)
    write_file(vfs, d.inode, b"file", b"x")
    assert vfs.getattr(d.inode).nlink == 4  # 2 + two subdirectories; files do not count
    assert listing(vfs, d.inode) == [b"file", b"sub1", b"sub2"]
    assert errno_of(vfs.mkdir, d.inode, b"sub1", 0o755, ROOT) == errno.EEXIST
    assert errno_of(vfs.rmdir, ROOT_INODE, b"d", ROOT) == errno.ENOTEMPTY
    assert errno_of(vfs.rmdir, d.inode, b"file", ROOT) == errno.ENOTDIR
    assert errno_of(vfs.unlink, d.inode, b"sub1", ROOT) == errno.EISDIR
    assert errno_of(vfs.rmdir, d.inode, b"nothing", ROOT) == errno.ENOENT
    vfs.rmdir(d.inode, b"sub1", ROOT)
    assert vfs.getattr(d.inode).nlink == 3
    assert errno_of(vfs.lookup, d.inode, b"sub1", ROOT) == errno.ENOENT
    f = vfs.lookup(d.inode, b"file", ROOT)
    assert errno_of(vfs.lookup, f.inode, b"x", ROOT) == errno.ENOTDIR
    assert errno_of(vfs.mkdir, f.inode, b"x", 0o755, ROOT) == errno.ENOTDIR
    assert vfs.lookup(d.inode, b".", ROOT).inode == d.inode
    assert vfs.lookup(d.inode, b"..", ROOT).inode == ROOT_INODE


def test_umask_and_mkdir_mode(env: Env) -> None:
    d = env.vfs.mkdir(ROOT_INODE, b"d", 0o777, Ctx(0, 0, umask=0o027))
    assert stat.S_IMODE(d.mode) == 0o750
    fh, f = env.vfs.create(ROOT_INODE, b"f", 0o666, os.O_WRONLY | os.O_CREAT, Ctx(0, 0, umask=0o022))
    env.vfs.release(fh)
    assert stat.S_IMODE(f.mode) == 0o644


def test_symlinks(env: Env) -> None:
    vfs = env.vfs
    s = vfs.symlink(ROOT_INODE, b"link", b"some/where/else", ROOT)
    assert stat.S_ISLNK(s.mode) and s.size == len(b"some/where/else")
    assert vfs.readlink(s.inode, ROOT) == b"some/where/else"
    f = write_file(vfs, ROOT_INODE, b"f", b"data")
    assert errno_of(vfs.readlink, f.inode, ROOT) == errno.EINVAL
    assert errno_of(vfs.symlink, ROOT_INODE, b"long", b"x" * 4096, ROOT) == errno.ENAMETOOLONG
    assert errno_of(vfs.symlink, ROOT_INODE, b"empty", b"", ROOT) == errno.ENOENT
    assert errno_of(vfs.symlink, ROOT_INODE, b"link", b"t", ROOT) == errno.EEXIST
    assert errno_of(vfs.open, s.inode, os.O_RDONLY, ROOT) == errno.ELOOP
    vfs.unlink(ROOT_INODE, b"link", ROOT)
    assert errno_of(vfs.lookup, ROOT_INODE, b"link", ROOT) == errno.ENOENT


def test_hard_links(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    f = write_file(vfs, ROOT_INODE, b"f", b"shared bytes")
    g = vfs.link(f.inode, d.inode, b"g", ROOT)
    assert g.inode == f.inode and g.nlink == 2
    assert vfs.lookup(ROOT_INODE, b"f", ROOT).nlink == 2
    assert read_all(vfs, vfs.lookup(d.inode, b"g", ROOT).inode) == b"shared bytes"
    assert errno_of(vfs.link, d.inode, ROOT_INODE, b"dirlink", ROOT) == errno.EPERM
    assert errno_of(vfs.link, f.inode, d.inode, b"g", ROOT) == errno.EEXIST
    # A write through one name shows under the other.
    fh = vfs.open(g.inode, os.O_WRONLY, ROOT)
    vfs.write(fh, 0, b"SHARED")
    vfs.release(fh)
    assert read_all(vfs, path_inode(vfs, b"f")) == b"SHARED bytes"
    vfs.unlink(ROOT_INODE, b"f", ROOT)
    assert vfs.getattr(g.inode).nlink == 1
    assert read_all(vfs, g.inode) == b"SHARED bytes"
    # Renaming one hard link over another name of the same file does nothing (POSIX).
    vfs.link(g.inode, ROOT_INODE, b"h", ROOT)
    vfs.rename(ROOT_INODE, b"h", d.inode, b"g", 0, ROOT)
    assert sorted(listing(vfs, ROOT_INODE)) == [b"d", b"h"] and listing(vfs, d.inode) == [b"g"]


def test_rename_within_and_across_directories(env: Env) -> None:
    vfs = env.vfs
    a = vfs.mkdir(ROOT_INODE, b"a", 0o755, ROOT)
    b = vfs.mkdir(ROOT_INODE, b"b", 0o755, ROOT)
    f = write_file(vfs, a.inode, b"f", b"content")
    vfs.rename(a.inode, b"f", a.inode, b"g", 0, ROOT)
    assert listing(vfs, a.inode) == [b"g"]
    vfs.rename(a.inode, b"g", b.inode, b"h", 0, ROOT)
    assert listing(vfs, a.inode) == [] and listing(vfs, b.inode) == [b"h"]
    assert vfs.lookup(b.inode, b"h", ROOT).inode == f.inode  # a rename keeps the inode
    vfs.rename(ROOT_INODE, b"a", b.inode, b"a2", 0, ROOT)
    assert vfs.getattr(ROOT_INODE).nlink == 3 and vfs.getattr(b.inode).nlink == 3
    assert errno_of(vfs.rename, ROOT_INODE, b"nothing", ROOT_INODE, b"x", 0, ROOT) == errno.ENOENT
    assert errno_of(vfs.rename, ROOT_INODE, b"b", b.inode, b"inside", 0, ROOT) == errno.EINVAL
    a2 = vfs.lookup(b.inode, b"a2", ROOT)
    assert errno_of(vfs.rename, ROOT_INODE, b"b", a2.inode, b"deeper", 0, ROOT) == errno.EINVAL
    vfs.rename(b.inode, b"h", b.inode, b"h", 0, ROOT)  # same name: nothing happens


def test_rename_replaces_target_in_one_change(env: Env) -> None:
    vfs = env.vfs
    write_file(vfs, ROOT_INODE, b"old", b"old content")
    new = write_file(vfs, ROOT_INODE, b"tmp", b"new content")
    before = env.changes()
    vfs.rename(ROOT_INODE, b"tmp", ROOT_INODE, b"old", 0, ROOT)
    assert env.changes() == before + 1
    kinds = [type(op) for op in env.last_ops()]
    assert kinds == [ops.Unlink, ops.Rename]
    assert listing(vfs, ROOT_INODE) == [b"old"]
    got = vfs.lookup(ROOT_INODE, b"old", ROOT)
    assert got.inode == new.inode and read_all(vfs, got.inode) == b"new content"


def test_rename_type_rules_and_noreplace(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    full = vfs.mkdir(ROOT_INODE, b"full", 0o755, ROOT)
    write_file(vfs, full.inode, b"x", b"x")
    vfs.mkdir(ROOT_INODE, b"empty", 0o755, ROOT)
    write_file(vfs, ROOT_INODE, b"f", b"f")
    write_file(vfs, ROOT_INODE, b"g", b"g")
    assert errno_of(vfs.rename, ROOT_INODE, b"f", ROOT_INODE, b"d", 0, ROOT) == errno.EISDIR
    assert errno_of(vfs.rename, ROOT_INODE, b"d", ROOT_INODE, b"f", 0, ROOT) == errno.ENOTDIR
    assert errno_of(vfs.rename, ROOT_INODE, b"d", ROOT_INODE, b"full", 0, ROOT) == errno.ENOTEMPTY
    assert errno_of(vfs.rename, ROOT_INODE, b"f", ROOT_INODE, b"g", RENAME_NOREPLACE, ROOT) == errno.EEXIST
    assert errno_of(vfs.rename, ROOT_INODE, b"f", ROOT_INODE, b"g", 7, ROOT) == errno.EINVAL
    vfs.rename(ROOT_INODE, b"d", ROOT_INODE, b"empty", 0, ROOT)  # a directory over an empty directory
    assert vfs.lookup(ROOT_INODE, b"empty", ROOT).inode == d.inode
    vfs.rename(ROOT_INODE, b"f", ROOT_INODE, b"fresh", RENAME_NOREPLACE, ROOT)
    assert sorted(listing(vfs, ROOT_INODE)) == [b"empty", b"fresh", b"full", b"g"]


def test_rename_exchange(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    f = write_file(vfs, ROOT_INODE, b"f", b"file f")
    g = write_file(vfs, d.inode, b"g", b"file g")
    before = env.changes()
    vfs.rename(ROOT_INODE, b"f", d.inode, b"g", RENAME_EXCHANGE, ROOT)
    assert env.changes() == before + 1
    assert vfs.lookup(ROOT_INODE, b"f", ROOT).inode == g.inode
    assert vfs.lookup(d.inode, b"g", ROOT).inode == f.inode
    assert read_all(vfs, vfs.lookup(ROOT_INODE, b"f", ROOT).inode) == b"file g"
    # A directory and a file swap too; a directory cannot be exchanged with something inside it.
    vfs.rename(ROOT_INODE, b"d", ROOT_INODE, b"f", RENAME_EXCHANGE, ROOT)
    assert stat.S_ISDIR(vfs.lookup(ROOT_INODE, b"f", ROOT).mode)
    assert errno_of(vfs.rename, ROOT_INODE, b"f", ROOT_INODE, b"missing", RENAME_EXCHANGE, ROOT) == errno.ENOENT
    assert errno_of(vfs.rename, ROOT_INODE, b"f", d.inode, b"g", RENAME_EXCHANGE, ROOT) == errno.EINVAL


def test_unlink_while_open(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"committed")
    fh = vfs.open(f.inode, os.O_RDWR, ROOT)
    vfs.write(fh, 9, b" and staged")
    vfs.unlink(ROOT_INODE, b"f", ROOT)
    assert errno_of(vfs.lookup, ROOT_INODE, b"f", ROOT) == errno.ENOENT
    assert vfs.getattr(f.inode).nlink == 0  # fstat of an unlinked open file
    assert vfs.read(fh, 0, 100) == b"committed and staged"
    vfs.write(fh, 0, b"C")
    before = env.changes()
    vfs.flush(fh)
    assert env.changes() == before  # a nameless file is never committed
    assert vfs.read(fh, 0, 100) == b"Committed and staged"
    vfs.release(fh)
    assert not list(env.staging.iterdir())  # its staged writes went with the last handle
    assert listing(vfs, ROOT_INODE) == []


def test_rename_over_open_file(env: Env) -> None:
    vfs = env.vfs
    old = write_file(vfs, ROOT_INODE, b"target", b"old version")
    write_file(vfs, ROOT_INODE, b"tmp", b"new version")
    reader = vfs.open(old.inode, os.O_RDONLY, ROOT)
    writer = vfs.open(old.inode, os.O_WRONLY, ROOT)
    vfs.rename(ROOT_INODE, b"tmp", ROOT_INODE, b"target", 0, ROOT)
    assert vfs.read(reader, 0, 100) == b"old version"  # the open handle keeps the replaced file
    vfs.write(writer, 0, b"OLD")
    assert vfs.read(reader, 0, 100) == b"OLD version"
    vfs.release(writer)
    vfs.release(reader)
    assert read_all(vfs, path_inode(vfs, b"target")) == b"new version"


def test_open_flags_excl_trunc_append(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"0123456789")
    assert errno_of(vfs.create, ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ROOT) == errno.EEXIST
    fh, attr = vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR | os.O_CREAT, ROOT)  # opens the existing file
    assert attr.inode == f.inode and vfs.read(fh, 0, 100) == b"0123456789"
    vfs.release(fh)
    a1 = vfs.open(f.inode, os.O_WRONLY | os.O_APPEND, ROOT)
    a2 = vfs.open(f.inode, os.O_WRONLY | os.O_APPEND, ROOT)
    vfs.write(a1, 0, b"AB")  # the offset is ignored with O_APPEND
    vfs.write(a2, 3, b"CD")
    vfs.write(a1, 0, b"EF")
    vfs.release(a1)
    vfs.release(a2)
    assert read_all(vfs, f.inode) == b"0123456789ABCDEF"
    fh = vfs.open(f.inode, os.O_WRONLY | os.O_TRUNC, ROOT)
    assert vfs.getattr(f.inode).size == 0
    vfs.write(fh, 0, b"new")
    vfs.release(fh)
    assert read_all(vfs, f.inode) == b"new"
    ro = vfs.open(f.inode, os.O_RDONLY, ROOT)
    assert errno_of(vfs.write, ro, 0, b"x") == errno.EBADF
    vfs.release(ro)
    wo = vfs.open(f.inode, os.O_WRONLY, ROOT)
    assert errno_of(vfs.read, wo, 0, 1) == errno.EBADF
    vfs.release(wo)
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    assert errno_of(vfs.open, d.inode, os.O_WRONLY, ROOT) == errno.EISDIR
    assert errno_of(vfs.create, ROOT_INODE, b"d", 0o644, os.O_WRONLY | os.O_CREAT, ROOT) == errno.EISDIR


def test_mknod_special_files(env: Env) -> None:
    """FIFOs, sockets and device nodes exist as nodes of their own kind (type, mode, owner, device number),
    survive a reopen, and can be linked, renamed and unlinked like any non-directory."""
    vfs = env.vfs
    a = vfs.mknod(ROOT_INODE, b"regular", stat.S_IFREG | 0o600, 0, ROOT)
    assert stat.S_ISREG(a.mode) and stat.S_IMODE(a.mode) == 0o600
    plain = vfs.mknod(ROOT_INODE, b"plain", 0o640, 0, ROOT)  # no type bits: a regular file, as mknod(2) says
    assert stat.S_ISREG(plain.mode)
    dev = os.makedev(259, 70000)  # a minor number above 255 exercises the full encoding
    made = {
        b"fifo": vfs.mknod(ROOT_INODE, b"fifo", stat.S_IFIFO | 0o640, 0, ROOT),
        b"sock": vfs.mknod(ROOT_INODE, b"sock", stat.S_IFSOCK | 0o755, 0, ROOT),
        b"chr": vfs.mknod(ROOT_INODE, b"chr", stat.S_IFCHR | 0o600, dev, ROOT),
        b"blk": vfs.mknod(ROOT_INODE, b"blk", stat.S_IFBLK | 0o644, os.makedev(1, 2), ROOT),
    }
    expected = {
        b"fifo": (stat.S_IFIFO | 0o640, 0),
        b"sock": (stat.S_IFSOCK | 0o755, 0),
        b"chr": (stat.S_IFCHR | 0o600, dev),
        b"blk": (stat.S_IFBLK | 0o644, os.makedev(1, 2)),
    }
    for name, attr in made.items():
        assert (attr.mode, attr.rdev, attr.size, attr.nlink) == (*expected[name], 0, 1), name
    env.reopen()
    vfs = env.vfs
    for name, (mode, rdev) in expected.items():
        attr = vfs.lookup(ROOT_INODE, name, ROOT)
        assert (attr.mode, attr.rdev, attr.size) == (mode, rdev, 0), name
    fifo = vfs.lookup(ROOT_INODE, b"fifo", ROOT)
    assert vfs.link(fifo.inode, ROOT_INODE, b"fifo2", ROOT).nlink == 2
    vfs.rename(ROOT_INODE, b"chr", ROOT_INODE, b"fifo", 0, ROOT)  # replaces one special file by another
    assert vfs.lookup(ROOT_INODE, b"fifo", ROOT).rdev == dev
    assert vfs.getattr(fifo.inode).nlink == 1
    vfs.setattr(fifo.inode, SetAttrRequest(mode=0o604, uid=5, gid=6), None, ROOT)
    assert vfs.getattr(fifo.inode).mode == stat.S_IFIFO | 0o604 and vfs.getattr(fifo.inode).uid == 5
    for name in (b"fifo", b"fifo2", b"sock", b"blk"):
        vfs.unlink(ROOT_INODE, name, ROOT)
    assert sorted(listing(vfs, ROOT_INODE)) == [b"plain", b"regular"]


def test_mknod_refusals(env: Env) -> None:
    vfs = env.vfs
    alice = Ctx(uid=1000, gid=1000)
    vfs.setattr(ROOT_INODE, SetAttrRequest(mode=0o777), None, ROOT)
    # Creating a device needs CAP_MKNOD; FIFOs and sockets do not.
    assert errno_of(vfs.mknod, ROOT_INODE, b"dev", stat.S_IFCHR | 0o600, 0x0101, alice) == errno.EPERM
    assert errno_of(vfs.mknod, ROOT_INODE, b"dev", stat.S_IFBLK | 0o600, 0x0101, alice) == errno.EPERM
    assert stat.S_ISFIFO(vfs.mknod(ROOT_INODE, b"f", stat.S_IFIFO | 0o600, 0, alice).mode)
    assert errno_of(vfs.mknod, ROOT_INODE, b"d", stat.S_IFDIR | 0o700, 0, ROOT) == errno.EPERM
    assert errno_of(vfs.mknod, ROOT_INODE, b"l", stat.S_IFLNK | 0o700, 0, ROOT) == errno.EPERM
    assert errno_of(vfs.mknod, ROOT_INODE, b"f", stat.S_IFSOCK | 0o600, 0, ROOT) == errno.EEXIST


def test_device_create_with_malformed_number_is_ignored(env: Env) -> None:
    """A change whose device node carries a device number of the wrong length is skipped by every replica."""
    from anysyncfs.core.ids import ROOT_NODE

    node = os.urandom(16)
    env.replica.commit([ops.Create(node, os.urandom(16), ROOT_NODE, b"bad", ops.KIND_CHAR, 0o600, 0, 0, 1, b"x")])
    assert node not in env.replica.tree.nodes
    assert errno_of(env.vfs.lookup, ROOT_INODE, b"bad", ROOT) == errno.ENOENT


def test_name_limits(env: Env) -> None:
    vfs = env.vfs
    longest = b"n" * 255
    too_long = b"n" * 256
    write_file(vfs, ROOT_INODE, longest, b"ok")
    assert vfs.lookup(ROOT_INODE, longest, ROOT).size == 2
    assert errno_of(vfs.lookup, ROOT_INODE, too_long, ROOT) == errno.ENAMETOOLONG
    assert errno_of(vfs.create, ROOT_INODE, too_long, 0o644, os.O_WRONLY | os.O_CREAT, ROOT) == errno.ENAMETOOLONG
    assert errno_of(vfs.mkdir, ROOT_INODE, too_long, 0o755, ROOT) == errno.ENAMETOOLONG
    assert errno_of(vfs.rename, ROOT_INODE, longest, ROOT_INODE, too_long, 0, ROOT) == errno.ENAMETOOLONG
    assert errno_of(vfs.symlink, ROOT_INODE, too_long, b"t", ROOT) == errno.ENAMETOOLONG
    assert errno_of(vfs.mkdir, ROOT_INODE, b"a/b", 0o755, ROOT) == errno.EINVAL
    assert vfs.statfs(ROOT).name_max == 255


def test_readdir_paging_and_hidden_folder(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"many", 0o755, ROOT)
    names = [b"f%04d" % i for i in range(1500)]
    for n in names:
        vfs.mknod(d.inode, n, stat.S_IFREG | 0o644, 0, ROOT)
    fh = vfs.opendir(d.inode, ROOT)
    first = vfs.readdir(fh, 0)
    assert 0 < len(first) < 1500  # answered in batches
    rest = vfs.readdir(fh, first[-1][2])
    assert [n for n, _, _ in first + rest] == [b".", b"..", *names]
    assert [a.inode for _, a, _ in first[:2]] == [d.inode, ROOT_INODE]  # '.' is the directory, '..' its parent
    assert vfs.readdir(fh, first[-1][2] + len(rest)) == []
    vfs.releasedir(fh)
    assert b".anysync" not in listing(vfs, ROOT_INODE)
    hidden = vfs.lookup(ROOT_INODE, b".anysync", ROOT)
    assert stat.S_ISDIR(hidden.mode)
    assert errno_of(vfs.mkdir, ROOT_INODE, b".anysync", 0o755, ROOT) == errno.EEXIST


def test_times_update(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    f = write_file(vfs, d.inode, b"f", b"x")
    d_after = vfs.getattr(d.inode)
    assert d_after.mtime_ns >= d.mtime_ns and d_after.ctime_ns >= d.ctime_ns
    stamp = 1_234_567_890_123_456_789
    a = vfs.setattr(f.inode, SetAttrRequest(atime_ns=stamp, mtime_ns=stamp + 1), None, ROOT)
    assert (a.atime_ns, a.mtime_ns) == (stamp, stamp + 1)  # nanoseconds kept exactly
    assert a.ctime_ns > stamp + 1
    before = vfs.getattr(f.inode)
    b = vfs.setattr(f.inode, SetAttrRequest(mtime_now=True), None, ROOT)
    assert b.mtime_ns > before.mtime_ns and b.atime_ns == stamp  # UTIME_OMIT for atime
    c = vfs.setattr(f.inode, SetAttrRequest(mode=0o600), None, ROOT)
    assert c.ctime_ns >= b.ctime_ns and c.mtime_ns == b.mtime_ns
    # A time set while writes are staged survives their commit (touch -d on an open file).
    fh = vfs.open(f.inode, os.O_WRONLY, ROOT)
    vfs.write(fh, 0, b"more")
    vfs.setattr(f.inode, SetAttrRequest(mtime_ns=stamp), fh, ROOT)
    vfs.release(fh)
    final = vfs.getattr(f.inode)
    assert final.mtime_ns == stamp and final.ctime_ns > stamp and final.size == 4


def test_read_only_vfs(make_home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    e = make_env(make_home, tmp_path)
    f = write_file(e.vfs, ROOT_INODE, b"f", b"data")
    e.vfs.close()
    ro = Vfs(e.replica, staging_dir=e.staging, read_only=True)
    try:
        assert read_all(ro, ro.lookup(ROOT_INODE, b"f", ROOT).inode) == b"data"
        checks = [
            (ro.mkdir, ROOT_INODE, b"d", 0o755, ROOT),
            (ro.create, ROOT_INODE, b"g", 0o644, os.O_WRONLY | os.O_CREAT, ROOT),
            (ro.open, f.inode, os.O_WRONLY, ROOT),
            (ro.open, f.inode, os.O_RDONLY | os.O_TRUNC, ROOT),
            (ro.unlink, ROOT_INODE, b"f", ROOT),
            (ro.rename, ROOT_INODE, b"f", ROOT_INODE, b"g", 0, ROOT),
            (ro.setattr, f.inode, SetAttrRequest(mode=0o600), None, ROOT),
            (ro.setxattr, f.inode, b"user.x", b"1", 0, ROOT),
            (ro.symlink, ROOT_INODE, b"s", b"t", ROOT),
            (ro.link, f.inode, ROOT_INODE, b"l", ROOT),
            (ro.access, f.inode, os.W_OK, ROOT),
        ]
        for fn, *args in checks:
            assert errno_of(fn, *args) == errno.EROFS, fn.__name__
    finally:
        ro.close()


@pytest.mark.parametrize("bad", [b"", b".", b".."])
def test_invalid_new_names(env: Env, bad: bytes) -> None:
    assert errno_of(env.vfs.mkdir, ROOT_INODE, bad, 0o755, ROOT) in (errno.EINVAL, errno.EEXIST)
