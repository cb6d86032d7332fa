"""Level 2: POSIX behaviour through a real mount, driven with plain os calls (one shared mount per module, one
fresh directory per test). Non-root checks run in a forked child that drops to another uid and works through a
directory fd (the pytest temp dirs above the mountpoint are not searchable by other users)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Mount

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
HUGE = 999_999_999_999_999


class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(old: Path, new: Path, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def utimensat(path: Path | str, atime: tuple[int, int], mtime: tuple[int, int], dir_fd: int = AT_FDCWD) -> None:
    times = (Timespec * 2)(Timespec(*atime), Timespec(*mtime))
    if libc.utimensat(dir_fd, os.fsencode(path), times, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def run_as(uid: int, gid: int, fn: Callable[..., Any], *args: Any, groups: tuple[int, ...] = (),
           **kwargs: Any) -> int:
    """Run fn(*args, **kwargs) in a child with these credentials; returns 0 or the errno of the OSError it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 255
        try:
            os.close(r)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                fn(*args, **kwargs)
                code = 0
            except OSError as e:
                code = e.errno or 254
        finally:
            os.write(w, code.to_bytes(2, "little"))
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    assert len(data) == 2, "child crashed"
    return int.from_bytes(data, "little")


def dir_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


# ---------------------------------------------------------------------------------------------- files and dirs
def test_files_and_directories(workdir: Path) -> None:
    f = workdir / "f.txt"
    f.write_bytes(b"hello world")
    assert f.read_bytes() == b"hello world"
    with open(f, "r+b") as fh:
        fh.seek(6)
        fh.write(b"WORLD!!")
    assert f.read_bytes() == b"hello WORLD!!"
    f.write_bytes(b"short")  # O_TRUNC
    assert f.read_bytes() == b"short"
    st = f.stat()
    assert stat.S_ISREG(st.st_mode) and st.st_size == 5 and st.st_nlink == 1
    (workdir / "d1").mkdir()
    (workdir / "d2").mkdir()
    (workdir / "d1" / "inner").mkdir()
    assert sorted(os.listdir(workdir)) == ["d1", "d2", "f.txt"]
    assert os.stat(workdir).st_nlink == 4  # 2 + two subdirectories
    assert os.stat(workdir / "d1").st_nlink == 3
    with pytest.raises(OSError) as e:
        os.rmdir(workdir / "d1")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        os.mkdir(workdir / "d2")
    with pytest.raises(NotADirectoryError):
        os.listdir(f)
    with pytest.raises(IsADirectoryError):
        os.unlink(workdir / "d2")
    os.rmdir(workdir / "d1" / "inner")
    os.rmdir(workdir / "d1")
    assert os.stat(workdir).st_nlink == 3
    with pytest.raises(FileNotFoundError):
        os.stat(workdir / "d1")
    many = workdir / "many"
    many.mkdir()
    names = {f"file-{i:04d}" for i in range(150)}  # several readdir buffers (~25 entries each)
    for n in names:
        (many / n).write_bytes(n.encode())
    assert set(os.listdir(many)) == names
    assert all((many / n).read_bytes() == n.encode() for n in list(names)[:50])


def test_symlinks(workdir: Path) -> None:
    (workdir / "target").write_bytes(b"T")
    os.symlink("target", workdir / "rel")
    os.symlink(str(workdir / "target"), workdir / "abs")
    os.symlink("nowhere/at/all", workdir / "dangling")
    assert os.readlink(workdir / "rel") == "target"
    assert os.readlink(workdir / "dangling") == "nowhere/at/all"
    assert (workdir / "rel").read_bytes() == b"T" and (workdir / "abs").read_bytes() == b"T"
    st = os.lstat(workdir / "rel")
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target")
    assert not (workdir / "dangling").exists() and (workdir / "dangling").is_symlink()
    long_target = "x/" * 1000
    os.symlink(long_target, workdir / "long")
    assert os.readlink(workdir / "long") == long_target


def test_hard_links_and_counts(workdir: Path) -> None:
    a = workdir / "a"
    a.write_bytes(b"one")
    os.link(a, workdir / "b")
    (workdir / "sub").mkdir()
    os.link(a, workdir / "sub" / "c")
    assert os.stat(a).st_nlink == 3
    assert os.stat(a).st_ino == os.stat(workdir / "sub" / "c").st_ino
    with open(workdir / "b", "ab") as fh:
        fh.write(b"+two")
    assert a.read_bytes() == b"one+two" and (workdir / "sub" / "c").read_bytes() == b"one+two"
    os.unlink(a)
    assert os.stat(workdir / "b").st_nlink == 2
    os.rename(workdir / "b", workdir / "b2")
    assert os.stat(workdir / "b2").st_nlink == 2
    with pytest.raises(PermissionError):
        os.link(workdir / "sub", workdir / "dirlink")  # no hard links to directories (EPERM)


def test_fifos_sockets_and_device_nodes(workdir: Path) -> None:
    """Special files are stored with their type and device number; the kernel makes a FIFO a working pipe and
    binds a socket on it; the mount is nodev, so a device node exists but does not open."""
    import socket

    fifo = workdir / "fifo"
    os.mkfifo(fifo, 0o640)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_IMODE(os.lstat(fifo).st_mode) == 0o640
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with open(fifo, "wb") as writer:
            writer.write(b"through the pipe")
        assert os.read(reader, 100) == b"through the pipe"
    finally:
        os.close(reader)
    with pytest.raises(OSError) as info:
        os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # no reader
    assert info.value.errno == errno.ENXIO
    os.mknod(workdir / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(workdir / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 300))
    st = os.lstat(workdir / "chr")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    st = os.lstat(workdir / "blk")
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 300)
    with pytest.raises(PermissionError):
        os.open(workdir / "chr", os.O_RDONLY)  # nodev mount: EACCES
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(workdir / "sock"))
    assert stat.S_ISSOCK(os.lstat(workdir / "sock").st_mode)
    os.rename(workdir / "chr", fifo)  # replaces the FIFO (links and renames: see the unit tests)
    assert stat.S_ISCHR(os.lstat(fifo).st_mode)
    for name in ("fifo", "blk", "sock"):
        os.unlink(workdir / name)
    assert os.listdir(workdir) == []


# ---------------------------------------------------------------------------------------------- rename
def test_rename_replace_and_over_open_file(workdir: Path) -> None:
    old, new = workdir / "old", workdir / "new"
    old.write_bytes(b"new content")
    new.write_bytes(b"old content")
    with open(new, "rb") as reader:  # an open handle keeps the replaced file's content
        os.rename(old, new)
        assert new.read_bytes() == b"new content"
        assert not old.exists()
        assert reader.read() == b"old content"
    (workdir / "d").mkdir()
    (workdir / "d" / "x").write_bytes(b"x")
    os.rename(workdir / "d", workdir / "e")
    assert (workdir / "e" / "x").read_bytes() == b"x"
    (workdir / "empty").mkdir()
    os.rename(workdir / "e", workdir / "empty")  # a directory may replace an empty one
    assert (workdir / "empty" / "x").exists()
    (workdir / "full").mkdir()
    (workdir / "full" / "y").write_bytes(b"y")
    with pytest.raises(OSError) as e:
        os.rename(workdir / "empty", workdir / "full")
    assert e.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    with pytest.raises(OSError) as e:
        os.rename(workdir / "empty", workdir / "empty" / "below")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(IsADirectoryError):
        os.rename(new, workdir / "full")
    with pytest.raises(NotADirectoryError):
        os.rename(workdir / "full", new)


def test_rename_noreplace_and_exchange(workdir: Path) -> None:
    a, b = workdir / "a", workdir / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        renameat2(a, b, RENAME_NOREPLACE)
    renameat2(a, workdir / "c", RENAME_NOREPLACE)
    assert (workdir / "c").read_bytes() == b"A" and not a.exists()
    (workdir / "dir").mkdir()
    renameat2(workdir / "c", workdir / "dir", RENAME_EXCHANGE)  # a file and a directory swap places
    assert (workdir / "dir").read_bytes() == b"A" and (workdir / "c").is_dir()
    renameat2(b, workdir / "dir", RENAME_EXCHANGE)
    assert b.read_bytes() == b"A" and (workdir / "dir").read_bytes() == b"B"
    with pytest.raises(FileNotFoundError):
        renameat2(workdir / "missing", b, RENAME_EXCHANGE)


def test_unlink_while_open(workdir: Path) -> None:
    p = workdir / "tmp"
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"before ")
        os.unlink(p)
        assert not p.exists() and "tmp" not in os.listdir(workdir)
        os.write(fd, b"after")
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 100) == b"before after"
        assert os.fstat(fd).st_nlink == 0
        os.fsync(fd)
    finally:
        os.close(fd)
    p.write_bytes(b"a new file under the old name")
    assert p.read_bytes() == b"a new file under the old name"


# ---------------------------------------------------------------------------------------------- attributes
def test_chmod_chown_and_nanosecond_times(workdir: Path) -> None:
    f = workdir / "f"
    f.write_bytes(b"x")
    for mode in (0o600, 0o4755, 0o2711, 0o1777, 0o000, 0o644):
        os.chmod(f, mode)
        assert stat.S_IMODE(os.stat(f).st_mode) == mode
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(f, -1, 42)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 42)
    ctime_before = os.stat(f).st_ctime_ns
    os.utime(f, ns=(1_000_000_001_123_456_789, 2_000_000_002_987_654_321))
    st = os.stat(f)
    assert st.st_atime_ns == 1_000_000_001_123_456_789 and st.st_mtime_ns == 2_000_000_002_987_654_321
    assert st.st_ctime_ns >= ctime_before
    utimensat(f, (0, UTIME_OMIT), (5, 6))  # atime untouched
    st = os.stat(f)
    assert st.st_atime_ns == 1_000_000_001_123_456_789 and st.st_mtime_ns == 5_000_000_006
    t0 = time.time_ns()
    utimensat(f, (0, UTIME_NOW), (0, UTIME_OMIT))
    st = os.stat(f)
    assert abs(st.st_atime_ns - t0) < 5_000_000_000 and st.st_mtime_ns == 5_000_000_006
    os.utime(f)  # both now
    assert abs(os.stat(f).st_mtime_ns - time.time_ns()) < 5_000_000_000
    d = workdir / "d"
    d.mkdir(mode=0o700)
    os.utime(d, ns=(7, 8))
    assert (os.stat(d).st_atime_ns, os.stat(d).st_mtime_ns) == (7, 8)
    m0 = os.stat(workdir).st_mtime_ns
    time.sleep(0.01)
    (workdir / "new").write_bytes(b"")
    assert os.stat(workdir).st_mtime_ns > m0  # creating an entry changes the directory's mtime


def test_write_updates_mtime_and_size(workdir: Path) -> None:
    f = workdir / "f"
    f.write_bytes(b"1")
    os.utime(f, ns=(1, 1))
    with open(f, "ab") as fh:
        fh.write(b"2")
    st = os.stat(f)
    assert st.st_size == 2 and st.st_mtime_ns > 1


# ---------------------------------------------------------------------------------------------- sizes
def test_truncate_and_ftruncate(workdir: Path) -> None:
    f = workdir / "f"
    f.write_bytes(b"0123456789")
    os.truncate(f, 4)
    assert f.read_bytes() == b"0123"
    os.truncate(f, 8)
    assert f.read_bytes() == b"0123\0\0\0\0"
    with open(f, "r+b") as fh:
        os.ftruncate(fh.fileno(), 2)
        assert os.fstat(fh.fileno()).st_size == 2
        fh.seek(5)
        fh.write(b"Z")
    assert f.read_bytes() == b"01\0\0\0Z"
    os.truncate(f, 0)
    assert f.read_bytes() == b"" and os.stat(f).st_size == 0


def test_sparse_truncate_to_999_999_999_999_999(shared_mount: Mount, workdir: Path) -> None:
    f = workdir / "huge"
    f.write_bytes(b"head")
    before = _disk_usage(shared_mount.home)
    os.truncate(f, HUGE)
    st = os.stat(f)
    assert st.st_size == HUGE
    assert st.st_blocks * 512 < 1 << 20  # holes are not stored
    with open(f, "rb") as fh:
        assert fh.read(4) == b"head"
        fh.seek(HUGE - 10)
        assert fh.read(100) == b"\0" * 10
        fh.seek(123_456_789_012)
        assert fh.read(4096) == b"\0" * 4096
    with open(f, "r+b") as fh:
        fh.seek(HUGE - 3)
        fh.write(b"END")
    with open(f, "rb") as fh:
        fh.seek(HUGE - 5)
        assert fh.read() == b"\0\0END"
    assert _disk_usage(shared_mount.home) - before < 32 << 20
    os.unlink(f)


def test_file_over_4_gib(workdir: Path) -> None:
    f = workdir / "big"
    off = 5 << 30
    payload = os.urandom(1 << 20)
    with open(f, "wb") as fh:
        fh.write(b"start")
        fh.seek(off)
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())
    assert os.stat(f).st_size == off + len(payload)
    with open(f, "rb") as fh:
        assert fh.read(5) == b"start"
        fh.seek(off - 4)
        assert fh.read(4 + len(payload)) == b"\0" * 4 + payload
        fh.seek((1 << 32) - 2)  # across the 4 GiB boundary
        assert fh.read(4) == b"\0" * 4
    os.unlink(f)


def test_posix_fallocate_fallback(workdir: Path) -> None:
    f = workdir / "f"
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"abc")
        os.posix_fallocate(fd, 0, 1 << 20)  # no fallocate handler: glibc falls back to writing
        assert os.fstat(fd).st_size == 1 << 20
    finally:
        os.close(fd)
    data = f.read_bytes()
    assert data[:3] == b"abc" and data[3:] == b"\0" * ((1 << 20) - 3)


# ---------------------------------------------------------------------------------------------- open flags
def test_o_append(workdir: Path) -> None:
    f = workdir / "log"
    f.write_bytes(b"start\n")
    a = os.open(f, os.O_WRONLY | os.O_APPEND)
    b = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(a, b"a1\n")
        os.write(b, b"b1\n")
        os.lseek(a, 0, os.SEEK_SET)  # O_APPEND ignores the position
        os.write(a, b"a2\n")
    finally:
        os.close(a)
        os.close(b)
    assert f.read_bytes() == b"start\na1\nb1\na2\n"


def test_o_excl_and_o_creat(workdir: Path) -> None:
    f = workdir / "f"
    fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640 & ~_umask()
    with pytest.raises(FileExistsError):
        os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.symlink("f", workdir / "ln")
    with pytest.raises(FileExistsError):
        os.open(workdir / "ln", os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # even through a symlink
    fd = os.open(f, os.O_CREAT | os.O_WRONLY)  # without O_EXCL: opens the existing file
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        os.open(workdir / "nope", os.O_RDONLY)


# ---------------------------------------------------------------------------------------------- xattrs, statfs
def test_xattrs(workdir: Path) -> None:
    f = workdir / "f"
    f.write_bytes(b"x")
    os.setxattr(f, "user.a", b"1")
    os.setxattr(f, "user.b", b"\x00\xff" * 1000)
    assert os.getxattr(f, "user.a") == b"1"
    assert os.getxattr(f, "user.b") == b"\x00\xff" * 1000
    assert {"user.a", "user.b"} <= set(os.listxattr(f))
    with pytest.raises(FileExistsError):
        os.setxattr(f, "user.a", b"2", os.XATTR_CREATE)
    with pytest.raises(OSError) as e:
        os.setxattr(f, "user.zz", b"2", os.XATTR_REPLACE)
    assert e.value.errno == errno.ENODATA
    os.setxattr(f, "user.a", b"2", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.a") == b"2"
    os.removexattr(f, "user.a")
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.a")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.removexattr(f, "user.a")
    assert e.value.errno == errno.ENODATA
    os.setxattr(f, "user.empty", b"")
    assert os.getxattr(f, "user.empty") == b""
    (workdir / "d").mkdir()
    os.setxattr(workdir / "d", "user.dir", b"yes")
    assert os.getxattr(workdir / "d", "user.dir") == b"yes"


def test_sync_state_xattrs(workdir: Path) -> None:
    f = workdir / "f"
    f.write_bytes(b"x" * 10_000)
    assert not any(n.startswith("user.anysync.") for n in os.listxattr(f))  # readable by name, not listed
    assert os.getxattr(f, "user.anysync.state") == b"local"
    assert os.getxattr(f, "user.anysync.version").startswith(b"ch-")
    assert os.getxattr(f, "user.anysync.author").startswith(b"ac-")
    with pytest.raises(OSError) as e:
        os.setxattr(f, "user.anysync.state", b"pinned")
    assert e.value.errno in (errno.EPERM, errno.EACCES)


def test_statfs_and_name_length(workdir: Path) -> None:
    st = os.statvfs(workdir)
    assert st.f_namemax == 255
    assert st.f_bsize > 0 and st.f_blocks >= st.f_bfree >= st.f_bavail >= 0
    ok = "n" * 255
    (workdir / ok).write_bytes(b"x")
    assert (workdir / ok).read_bytes() == b"x"
    for action in (lambda: (workdir / ("n" * 256)).write_bytes(b"x"),
                   lambda: os.mkdir(workdir / ("d" * 256)),
                   lambda: os.symlink("t", workdir / ("s" * 256)),
                   lambda: os.rename(workdir / ok, workdir / ("r" * 256))):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno == errno.ENAMETOOLONG
    umlaut = "ä" * 127  # 254 bytes in UTF-8: the limit is in bytes
    (workdir / umlaut).write_bytes(b"u")
    with pytest.raises(OSError) as e:
        (workdir / ("ä" * 128)).write_bytes(b"u")
    assert e.value.errno == errno.ENAMETOOLONG


# ---------------------------------------------------------------------------------------------- mmap, fsync
def test_mmap_shared_write_then_fresh_read(workdir: Path) -> None:
    f = workdir / "m"
    f.write_bytes(b"." * 20_000)
    with open(f, "r+b") as fh:
        mm = mmap.mmap(fh.fileno(), 0)
        mm[0:5] = b"HELLO"
        mm[15_000:15_005] = b"WORLD"
        mm.flush()
        mm.close()
    data = f.read_bytes()  # a fresh open
    assert data[:5] == b"HELLO" and data[15_000:15_005] == b"WORLD" and len(data) == 20_000
    with open(f, "rb") as fh:
        ro = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
        assert ro[15_000:15_005] == b"WORLD"
        ro.close()


def test_fsync_and_fdatasync(workdir: Path) -> None:
    f = workdir / "f"
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for i in range(5):
            os.write(fd, f"line {i}\n".encode())
            os.fsync(fd)
        os.write(fd, b"tail\n")
        os.fdatasync(fd)
    finally:
        os.close(fd)
    assert f.read_bytes() == b"".join(f"line {i}\n".encode() for i in range(5)) + b"tail\n"
    dfd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------------------------------- versions
def test_hidden_versions_folder(shared_mount: Mount, workdir: Path) -> None:
    f = workdir / "doc.txt"
    # History shows committed changes, and group commit makes one change of everything done within a batch
    # interval: fsync ends a batch, so each version below is its own change.
    for version in (b"version one", b"version two"):
        with open(f, "wb") as out:
            out.write(version)
            out.flush()
            os.fsync(out.fileno())
    root = shared_mount.mountpoint
    assert ".anysync" not in os.listdir(root)  # not listed, so cp -a / rsync -a / tar of the root skip it
    assert (root / ".anysync").is_dir()
    rel = f.relative_to(root)
    history = root / ".anysync" / "history"
    folders = [history / day / change for day in sorted(os.listdir(history))
               for change in sorted(os.listdir(history / day))]
    seen = set()
    for folder in folders[-8:]:  # this test's changes are the newest ones (each folder is a whole past tree)
        if (folder / rel).exists():
            seen.add((folder / rel).read_bytes())
    assert {b"version one", b"version two"} <= seen
    with pytest.raises(OSError) as e:
        (folders[-1] / "new-file").write_bytes(b"x")
    assert e.value.errno in (errno.EROFS, errno.EACCES)
    assert (root / ".anysync" / "conflicts").read_bytes() == b""


# ---------------------------------------------------------------------------------------------- permissions
def test_permissions_for_other_users(workdir: Path) -> None:
    os.chmod(workdir, 0o755)
    (workdir / "secret").write_bytes(b"s")
    os.chmod(workdir / "secret", 0o600)
    (workdir / "public").write_bytes(b"p")
    os.chmod(workdir / "public", 0o644)
    (workdir / "group").write_bytes(b"g")
    os.chown(workdir / "group", 0, 2000)
    os.chmod(workdir / "group", 0o060)
    sticky = workdir / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    fd = dir_fd(workdir)
    sfd = dir_fd(sticky)
    try:
        def read(name: str) -> None:
            os.close(os.open(name, os.O_RDONLY, dir_fd=fd))

        def create(dfd: int, name: str) -> None:
            os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dfd))

        assert run_as(1000, 1000, read, "secret") == errno.EACCES
        assert run_as(1000, 1000, read, "public") == 0
        assert run_as(1000, 1000, read, "group") == errno.EACCES
        assert run_as(1000, 1000, read, "group", groups=(2000,)) == 0  # a supplementary group counts
        assert run_as(1000, 1000, create, fd, "nope") == errno.EACCES
        assert run_as(1000, 1000, os.chmod, "public", 0o666, dir_fd=fd) == errno.EPERM
        assert run_as(1000, 1000, create, sfd, "mine") == 0
        assert os.stat(sticky / "mine").st_uid == 1000
        assert run_as(1001, 1001, os.unlink, "mine", dir_fd=sfd) == errno.EPERM  # sticky: not the owner
        assert run_as(1000, 1000, os.unlink, "mine", dir_fd=sfd) == 0
        os.chmod(workdir / "public", 0o666)
        # a writer that does not own the file may set "now", but not explicit times
        assert run_as(1000, 1000, utimensat, "public", (0, UTIME_NOW), (0, UTIME_NOW), fd) == 0
        assert run_as(1000, 1000, utimensat, "public", (1, 0), (1, 0), fd) == errno.EPERM
    finally:
        os.close(fd)
        os.close(sfd)


def test_setuid_cleared_when_a_non_owner_writes(workdir: Path) -> None:
    f = workdir / "suid"
    f.write_bytes(b"#!/bin/sh\n")
    os.chmod(f, 0o6777)
    wfd = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        assert run_as(1000, 1000, os.write, wfd, b"echo hi\n") == 0
    finally:
        os.close(wfd)
    mode = stat.S_IMODE(os.stat(f).st_mode)
    assert not mode & stat.S_ISUID and not mode & stat.S_ISGID, oct(mode)
    assert f.read_bytes() == b"#!/bin/sh\necho hi\n"
    os.chmod(f, 0o4755)
    os.chown(f, 1000, 1000)  # chown clears setuid too
    assert not stat.S_IMODE(os.stat(f).st_mode) & stat.S_ISUID


# ---------------------------------------------------------------------------------------------- corruption
def test_corrupt_blob_gives_eio_and_the_mount_stays_up(mounted: Mount) -> None:
    blobs = mounted.home / "blobs"
    before = {p for p in blobs.rglob("*") if p.is_file()}
    data = os.urandom(200_000)  # far above any inline threshold
    (mounted.mountpoint / "victim").write_bytes(data)
    (mounted.mountpoint / "bystander").write_bytes(b"fine")
    mounted.remount()  # nothing of the file left in the kernel's or the Vfs's caches
    # (Blob files of a small file's batch are written when the batch commits: the unmount did that.)
    new = [p for p in blobs.rglob("*") if p.is_file() and p not in before]
    assert new, "the file's content should be stored as blobs"
    for p in new:
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0x01
        p.chmod(0o600)
        p.write_bytes(bytes(raw))
    mounted.expect_log(r"(?i)corrupt|integrity|verif|mismatch|authentic|EIO")
    with pytest.raises(OSError) as e:
        (mounted.mountpoint / "victim").read_bytes()
    assert e.value.errno == errno.EIO
    assert (mounted.mountpoint / "bystander").read_bytes() == b"fine"
    (mounted.mountpoint / "after").write_bytes(b"still writable")
    assert (mounted.mountpoint / "after").read_bytes() == b"still writable"
    assert mounted.proc is not None and mounted.proc.poll() is None


def _read_at(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_a_flipped_byte_fails_only_its_segment_and_fsck_reports_the_blob(mounted: Mount) -> None:
    """Reads of a local blob authenticate each 64 KiB segment they touch instead of hashing the whole blob: a
    flipped byte in segment 2 gives EIO for reads touching it and the right bytes elsewhere; fsck (which hashes
    every blob) still reports the file; a truncated blob file gives EIO, never wrong bytes."""
    seg = 64 * 1024
    blobs = mounted.home / "blobs"
    before = {p for p in blobs.rglob("*") if p.is_file()}
    data = os.urandom(300_000)  # random: stored uncompressed, one chunk, 5 segments
    (mounted.mountpoint / "victim").write_bytes(data)
    mounted.remount()
    new = [p for p in blobs.rglob("*") if p.is_file() and p not in before]
    (chunk_blob,) = [p for p in new if p.stat().st_size > len(data)]  # the chunk (any other blob is small)
    raw = bytearray(chunk_blob.read_bytes())
    raw[23 + 2 * (seg + 16) + 500] ^= 0x01  # header 23 bytes, then segments of 64 KiB + a 16-byte tag
    chunk_blob.chmod(0o600)
    chunk_blob.write_bytes(bytes(raw))
    victim = mounted.mountpoint / "victim"
    mounted.expect_log(r"(?i)corrupt|integrity|verif|mismatch|authentic|EIO")
    with pytest.raises(OSError) as e:
        _read_at(victim, 2 * seg + 4096, 4096)
    assert e.value.errno == errno.EIO
    assert _read_at(victim, 0, 4096) == data[:4096]
    assert _read_at(victim, 4 * seg, 4096) == data[4 * seg : 4 * seg + 4096]
    with pytest.raises(OSError) as e:
        victim.read_bytes()
    assert e.value.errno == errno.EIO
    mounted.unmount()
    report = mounted.cli("fsck", check=False)
    assert report.returncode != 0
    assert b"blob" in report.stdout + report.stderr
    # cut short: EIO for every read, even of the segments that are still whole
    chunk_blob.write_bytes(bytes(raw[: len(raw) - 100]))
    mounted.mount(*mounted.mount_args)
    with pytest.raises(OSError) as e:
        _read_at(victim, 0, 4096)
    assert e.value.errno == errno.EIO


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may widen a mount's read-ahead")
def test_the_first_read_widens_the_mounts_read_ahead(mounted: Mount) -> None:
    """pyfuse3 cannot set max_readahead, so the mount writes its bdi's read_ahead_kb (1 MiB) on the first read."""
    data = os.urandom(300_000)
    (mounted.mountpoint / "f").write_bytes(data)
    mounted.remount()  # a fresh mount: its page cache is empty, so the read below reaches it
    dev = os.stat(mounted.mountpoint).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert knob.read_text().strip() == "128"  # the kernel's default, until the mount has served a read
    assert (mounted.mountpoint / "f").read_bytes() == data
    assert knob.read_text().strip() == "1024"


def _disk_usage(root: Path) -> int:
    total = 0
    for p in root.rglob("*"):
        try:
            total += p.lstat().st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
