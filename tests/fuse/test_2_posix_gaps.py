"""Level 2, continued: the POSIX gaps a second conformance run found (issue 18 item 6), each through the real mount.

Virtual attributes not listed, '.' and '..' in readdir, execute-only files, buffered reads after asynchronous
O_DIRECT writes, remount and options through mount(8), the mount source, reopening by file handle, and many
small O_APPEND writes.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from .conftest import REPO, Mount, mount_helper_inputs

libc = ctypes.CDLL(None, use_errno=True)
NOBODY = 65534


# ---------------------------------------------------------------------------------------------- xattrs
def test_virtual_xattrs_are_readable_but_not_listed_nor_copied(workdir: Path, tmp_path: Path) -> None:
    f = workdir / "f"
    f.write_bytes(b"x" * 1000)
    os.setxattr(f, "user.mine", b"1")
    assert os.listxattr(f) == ["user.mine"]
    assert os.getxattr(f, "user.anysync.state") == b"local"  # still there by name
    assert os.getxattr(f, "user.anysync.version").startswith(b"ch-")
    copies = tmp_path / "copies"
    copies.mkdir()
    subprocess.run(["cp", "-a", str(f), str(copies / "cp")], check=True)
    if shutil.which("rsync"):
        subprocess.run(["rsync", "-aX", str(f), str(copies / "rsync")], check=True)
    for copy in copies.iterdir():
        assert os.listxattr(copy) == ["user.mine"], copy.name


def test_list_virtual_xattrs_option_lists_them(fuse_space: Mount) -> None:
    fuse_space.mount("-o", "list_virtual_xattrs")
    f = fuse_space.path("f")
    f.write_bytes(b"x")
    assert {"user.anysync.state", "user.anysync.version", "user.anysync.author"} <= set(os.listxattr(f))


# ---------------------------------------------------------------------------------------------- readdir
def test_readdir_gives_dot_entries_with_their_inodes(workdir: Path) -> None:
    sub = workdir / "sub"
    sub.mkdir()
    (sub / "f").write_bytes(b"x")
    out = subprocess.run(["ls", "-f", "-i", "-1", str(sub)], check=True, capture_output=True, text=True).stdout
    inodes = {name: int(ino) for ino, name in (line.split(maxsplit=1) for line in out.splitlines())}
    assert set(inodes) == {".", "..", "f"}
    assert inodes["."] == os.stat(sub).st_ino
    assert inodes[".."] == os.stat(workdir).st_ino
    assert inodes["f"] == os.stat(sub / "f").st_ino
    assert sorted(os.listdir(sub)) == ["f"]  # (Python hides the dot entries; the kernel sends them)


def test_rename_whiteout_is_refused(workdir: Path) -> None:
    """RENAME_NOREPLACE and RENAME_EXCHANGE: tests/fuse/test_2_posix.py; the third flag is not supported."""
    (workdir / "a").write_bytes(b"a")
    RENAME_WHITEOUT = 4
    if libc.renameat2(-100, bytes(workdir / "a"), -100, bytes(workdir / "b"), RENAME_WHITEOUT) == 0:
        pytest.fail("RENAME_WHITEOUT succeeded")
    assert ctypes.get_errno() == errno.EINVAL
    assert (workdir / "a").read_bytes() == b"a" and not (workdir / "b").exists()


# ---------------------------------------------------------------------------------------------- exec
def test_execute_only_file_runs_for_a_non_root_user(workdir: Path) -> None:
    """The mount uses default_permissions (the kernel checks exec permission); the open execve makes must not be
    refused for lacking read permission. Run from the directory, so the pytest folders above (0700) don't count."""
    os.chmod(workdir, 0o755)
    prog = workdir / "true"
    shutil.copyfile("/bin/true", prog)
    os.chmod(prog, 0o111)
    run = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "./true"],
                         cwd=workdir, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # reading it is still refused to that user
    read = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", "./true"],
                          cwd=workdir, capture_output=True, text=True)
    assert read.returncode != 0 and "Permission denied" in read.stderr


# ---------------------------------------------------------------------------------------------- O_DIRECT
class Iocb(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32), ("rw_flags", ctypes.c_int32),
                ("opcode", ctypes.c_uint16), ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64), ("offset", ctypes.c_int64),
                ("reserved2", ctypes.c_uint64), ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]


class IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


SYS_IO_SETUP, SYS_IO_DESTROY, SYS_IO_GETEVENTS, SYS_IO_SUBMIT = 206, 207, 208, 209  # x86_64
IOCB_CMD_PWRITE = 1


def aio_pwrite_all(fd: int, buf: mmap.mmap, offsets: list[int]) -> None:
    """Linux native AIO (io_submit), as fio and databases use it: every write in flight at once, then reaped."""
    n = len(offsets)
    ctx = ctypes.c_ulong(0)
    assert libc.syscall(SYS_IO_SETUP, n, ctypes.byref(ctx)) == 0, os.strerror(ctypes.get_errno())
    try:
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        cbs = [Iocb(opcode=IOCB_CMD_PWRITE, fildes=fd, buf=addr, nbytes=len(buf), offset=off) for off in offsets]
        ptrs = (ctypes.POINTER(Iocb) * n)(*[ctypes.pointer(cb) for cb in cbs])
        assert libc.syscall(SYS_IO_SUBMIT, ctx, n, ptrs) == n, os.strerror(ctypes.get_errno())
        events = (IoEvent * n)()
        done = 0
        while done < n:
            got = libc.syscall(SYS_IO_GETEVENTS, ctx, 1, n - done, events, None)
            assert got > 0, os.strerror(ctypes.get_errno())
            assert all(events[i].res == len(buf) for i in range(got)), [events[i].res for i in range(got)]
            done += got
    finally:
        libc.syscall(SYS_IO_DESTROY, ctx)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="AIO syscall numbers of x86_64")
def test_buffered_reads_after_async_o_direct_writes_see_the_new_bytes(workdir: Path) -> None:
    piece, count = 64 * 1024, 32
    f = workdir / "direct"
    f.write_bytes(b"A" * piece * count)
    reader = os.open(f, os.O_RDONLY)
    writer = os.open(f, os.O_RDWR | os.O_DIRECT)
    stop = threading.Event()

    def read_meanwhile() -> None:  # buffered reads racing the writes in flight (page by page, no read-ahead)
        os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_RANDOM)
        while not stop.is_set():
            for off in range(0, piece * count, 4096):
                os.pread(reader, 4096, off)

    try:
        assert os.pread(reader, piece * count, 0) == b"A" * piece * count  # cached
        for round_, letter in enumerate(b"BCD"):
            buf = mmap.mmap(-1, piece)  # page-aligned, as O_DIRECT needs
            buf.write(bytes([letter]) * piece)
            racer = threading.Thread(target=read_meanwhile)
            racer.start()
            try:
                aio_pwrite_all(writer, buf, [i * piece for i in range(count)])
            finally:
                stop.set()
                racer.join()
                stop.clear()
            got = os.pread(reader, piece * count, 0)
            assert got == bytes([letter]) * piece * count, f"round {round_}: {len(got) - got.count(letter)} stale"
    finally:
        os.close(writer)
        os.close(reader)


# ---------------------------------------------------------------------------------------------- mount(8)
def test_mount8_keeps_options_and_remounts_ro_and_rw(fuse_space: Mount, tmp_path: Path) -> None:
    """``mount -t fuse.anysyncfs`` with the helper as /sbin/mount.fuse.anysyncfs (in a private mount namespace):
    mount(8) leaves out the options that are its defaults (suid, dev), so the helper must add them back unless
    nosuid/nodev were asked for; ``mount -o remount,ro`` and ``remount,rw`` change the running mount."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private mount namespace)")
    m = fuse_space
    wrapper, passfile, env = mount_helper_inputs(m, tmp_path)
    p = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, str(REPO / "tests" / "fuse" / "_mount8.py"),
         m.space, str(m.mountpoint), str(m.home), str(passfile), str(wrapper),
         f"anysyncfs={wrapper},suid,nodev,listen=off,discovery=off"],
        env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["mount"][0] == 0, r
    assert r["source"] == m.space  # the space's name, not "anysyncfs"
    assert "nodev" in r["after_mount"] and "nosuid" not in r["after_mount"], r["after_mount"]  # suid kept
    assert r["remount_ro"][0] == 0, r["remount_ro"]
    assert "ro" in r["after_ro"] and "nodev" in r["after_ro"] and "nosuid" not in r["after_ro"], r["after_ro"]
    assert r["write_ro"] == os.strerror(errno.EROFS)  # from the kernel
    assert r["remount_rw"][0] == 0, r["remount_rw"]
    assert "rw" in r["after_rw"] and "nodev" in r["after_rw"], r["after_rw"]
    assert r["write_rw"] == "ok"
    assert m.cli("cat", m.space, "/written-rw").stdout == b"x"


def test_remount_from_the_cli_and_a_read_only_mount_stays_read_only(fuse_space: Mount) -> None:
    m = fuse_space
    m.mount()
    mnt = str(m.mountpoint)
    m.cli("mount", m.space, mnt, "-o", "remount,ro")
    flags = os.statvfs(mnt).f_flag
    assert flags & os.ST_RDONLY and flags & os.ST_NOSUID and flags & os.ST_NODEV  # nosuid,nodev kept
    with pytest.raises(OSError) as e:
        m.path("f").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    m.cli("mount", m.space, mnt, "-o", "remount,rw")
    m.path("f").write_bytes(b"x")
    with open(m.path("f"), "wb") as held:  # open for writing: the kernel refuses to go read-only
        p = m.cli("mount", m.space, mnt, "-o", "remount,ro", check=False)
        held.write(b"y")
    assert p.returncode != 0 and b"open for writing" in p.stderr
    m.remount("-o", "ro")
    p = m.cli("mount", m.space, mnt, "-o", "remount,rw", check=False)
    assert p.returncode != 0 and b"mounted with -o ro" in p.stderr
    assert os.statvfs(mnt).f_flag & os.ST_RDONLY


def test_mount_source_is_the_space_name(shared_mount: Mount) -> None:
    out = subprocess.run(["findmnt", "-n", "-o", "TARGET", "-S", shared_mount.space], capture_output=True,
                         text=True, check=True).stdout.split()
    assert str(shared_mount.mountpoint) in out


# ---------------------------------------------------------------------------------------------- file handles
class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


def name_to_handle(path: Path) -> FileHandle:
    fh = FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(-100, os.fsencode(path), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fh


def open_by_handle(mountpoint: Path, fh: FileHandle, flags: int) -> int:
    mfd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), flags)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return int(fd)
    finally:
        os.close(mfd)


def drop_dentries_and_inodes() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def test_reopen_by_file_handle_after_the_kernel_forgot_and_after_a_remount(fuse_space: Mount) -> None:
    if os.geteuid() != 0:
        pytest.skip("open_by_handle_at needs CAP_DAC_READ_SEARCH")
    m = fuse_space
    m.mount()
    (m.path("d")).mkdir()
    m.path("d", "f").write_bytes(b"by handle")
    handles = {"f": name_to_handle(m.path("d", "f")), "d": name_to_handle(m.path("d"))}
    for when in ("cached", "forgotten", "remounted"):
        if when == "forgotten":
            drop_dentries_and_inodes()  # the kernel must ask the mount (lookup of "." in the inode)
        elif when == "remounted":
            m.remount()  # a new process, which has not handed those inodes out yet
        fd = open_by_handle(m.mountpoint, handles["f"], os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"by handle", when
        finally:
            os.close(fd)
        fd = open_by_handle(m.mountpoint, handles["d"], os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert os.listdir(fd) == ["f"], when
        finally:
            os.close(fd)
    m.path("d", "f").unlink()
    drop_dentries_and_inodes()
    with pytest.raises(OSError) as e:
        os.close(open_by_handle(m.mountpoint, handles["f"], os.O_RDONLY))
    assert e.value.errno in (errno.ESTALE, errno.ENOENT)  # that file is gone


# ---------------------------------------------------------------------------------------------- small appends
def test_many_small_appends_are_all_there(workdir: Path) -> None:
    """20,000 four-byte O_APPEND writes (most stay in memory in the staging's tail block), read back while the
    file is still open (from that block) and after close (committed)."""
    f = workdir / "log"
    fd = os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        for i in range(20_000):
            os.write(fd, i.to_bytes(4, "little"))
            if i in (1000, 1023, 1024, 5000):
                with open(f, "rb") as r:
                    assert r.read() == b"".join(j.to_bytes(4, "little") for j in range(i + 1))
    finally:
        os.close(fd)
    data = f.read_bytes()
    assert data == b"".join(j.to_bytes(4, "little") for j in range(20_000))
