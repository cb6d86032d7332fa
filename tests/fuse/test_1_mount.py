"""Level 1: the mount itself. Mount/unmount/remount keep the tree; unmount paths commit staged writes; bad input
gives one-line errors; one mount per space and home; the mount(8) helper; read-only mounts."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CLI

from .conftest import FUSERMOUNT, REPO, TEST_MOUNT_OPTS, Mount, is_mounted, mount_helper_inputs, pid_alive

HELPER = REPO / "scripts" / "mount.fuse.anysyncfs"
FM = FUSERMOUNT or "fusermount3"  # the fixtures skip when it is missing


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything stat and the xattrs show for every path under root (ctime included: it must survive too)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
                xattrs: dict[str, bytes] = {}
            else:
                body = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
                xattrs = {n: os.getxattr(p, n) for n in sorted(os.listxattr(p)) if not n.startswith("user.anysync.")}
            out[rel] = (st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns,
                        st.st_ctime_ns, body, xattrs)
    return out


def one_line_error(p: subprocess.CompletedProcess[bytes]) -> str:
    err = p.stderr.decode()
    assert p.returncode != 0, err
    assert err.count("\n") == 1 and err.startswith("anysyncfs: error: "), err
    assert "Traceback" not in err
    return err


def make_tree(root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "a.txt").write_bytes(b"alpha\n")
    (root / "dir" / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (root / "empty").write_bytes(b"")
    os.symlink("dir/a.txt", root / "link")
    os.link(root / "dir" / "a.txt", root / "hard")
    os.chmod(root / "dir" / "sub", 0o750)
    os.chmod(root / "empty", 0o600)
    os.utime(root / "dir" / "a.txt", ns=(1_234_567_890_123_456_789, 1_300_000_000_987_654_321))
    os.setxattr(root / "dir" / "sub" / "b.bin", "user.color", b"blue")
    os.setxattr(root / "dir", "user.note", b"\x00binary\xff")


def test_remount_keeps_tree_modes_times_xattrs(mounted: Mount) -> None:
    make_tree(mounted.mountpoint)
    # Group commit: a chmod, link or utimens still in the open batch shows its own time as ctime; its commit
    # carries the batch's last time (later, never earlier). fsync of a directory commits the batch.
    fd = os.open(mounted.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    before = snapshot(mounted.mountpoint)
    assert before["hard"][2] == 2  # two names
    mounted.remount()
    assert snapshot(mounted.mountpoint) == before
    mounted.remount()  # a second round trip changes nothing either
    assert snapshot(mounted.mountpoint) == before
    assert mounted.cli("cat", mounted.space, "/dir/a.txt").stdout == b"alpha\n"
    mounted.unmount()
    mounted.cli("fsck")


def test_background_mount_and_unmount_command(fuse_space: Mount) -> None:
    m = fuse_space
    p = m.mount_background()
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == b"" and p.stderr == b""
    assert os.path.ismount(m.mountpoint)  # ready when the command returns
    assert m.bg_pids and pid_alive(m.bg_pids[0])
    (m.mountpoint / "f").write_bytes(b"from the background mount")
    u = m.cli("unmount", str(m.mountpoint))
    assert u.stdout == b"" and u.stderr == b""
    assert not is_mounted(m.mountpoint)
    # unmount returns only once the mount process has committed and released the space
    assert m.cli("cat", m.space, "/f").stdout == b"from the background mount"
    deadline = time.monotonic() + 5
    while pid_alive(m.bg_pids[0]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(m.bg_pids[0])
    p = m.cli("unmount", str(m.mountpoint), check=False)
    assert "is not mounted" in one_line_error(p)


def test_lazy_unmount_commits_writes_of_a_file_still_open(mounted: Mount) -> None:
    fd = os.open(mounted.path("open.txt"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"written before the unmount, ")
        busy = subprocess.run([FM, "-u", str(mounted.mountpoint)], capture_output=True)
        assert busy.returncode != 0 and is_mounted(mounted.mountpoint)  # an open file keeps a plain unmount off
        p = mounted.cli("unmount", str(mounted.mountpoint), check=False)
        assert "busy" in one_line_error(p) and "--lazy" in p.stderr.decode()
        subprocess.run([FM, "-uz", str(mounted.mountpoint)], check=True)
        os.write(fd, b"and after it")  # the detached mount still serves the open file
    finally:
        os.close(fd)  # release: the last reference goes, the session ends, the process commits and exits
    assert mounted.wait_exit() == 0
    assert mounted.cli("cat", mounted.space, "/open.txt").stdout == b"written before the unmount, and after it"


def test_fusermount_u_after_close_keeps_everything(mounted: Mount) -> None:
    data = os.urandom(3 << 20)
    (mounted.mountpoint / "big").write_bytes(data)
    mounted.unmount()  # fusermount3 -u right after close
    assert mounted.cli("cat", mounted.space, "/big").stdout == data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_commits_staged_writes_and_unmounts(fuse_space: Mount, signum: int) -> None:
    m = fuse_space
    m.mount("-o", "commit_interval=3600")  # only the signal can commit what is staged
    fd = os.open(m.path("staged.txt"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"staged, never closed")
        m.signal(signum)
        assert m.wait_exit() == 0
        assert not is_mounted(m.mountpoint)
    finally:
        try:
            os.close(fd)
        except OSError as e:  # the mount is gone: closing its file may say so
            assert e.errno in (errno.ENOTCONN, errno.EIO, errno.ENODEV), e
    assert m.cli("cat", m.space, "/staged.txt").stdout == b"staged, never closed"
    m.cli("fsck")


def test_periodic_commit_of_a_long_writer_survives_kill_9(fuse_space: Mount) -> None:
    m = fuse_space
    m.mount("-o", "commit_interval=0.2")
    fd = os.open(m.path("long.log"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"first part\n")
        time.sleep(1.5)  # several commit intervals, no close, no fsync
        m.signal(signal.SIGKILL)
        m.wait_exit()
        p = m.cli("mount", m.space, str(m.mountpoint), check=False)
        assert "dead FUSE mount" in one_line_error(p)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the mount is dead
        m.stop()
    assert m.cli("cat", m.space, "/long.log").stdout == b"first part\n"
    m.cli("fsck")


def test_fsync_confirmed_bytes_survive_kill_9_and_remount(fuse_space: Mount) -> None:
    m = fuse_space
    m.mount("-o", "commit_interval=3600")
    data = os.urandom(1 << 20)
    fd = os.open(m.path("durable.bin"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.write(fd, b"not synced")
        m.signal(signal.SIGKILL)
        m.wait_exit()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
        m.stop()
    m.expect_log(r"WARNING .*staging files left by an earlier run")
    m.mount()
    got = (m.mountpoint / "durable.bin").read_bytes()
    assert got[: len(data)] == data
    m.unmount()
    m.cli("fsck")


def test_second_mount_of_the_same_space_fails_clearly(mounted: Mount, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for extra in ([], ["-f"]):
        p = mounted.cli("mount", mounted.space, str(other), *extra, check=False)
        assert "already mounted" in one_line_error(p)
        assert not is_mounted(other)
    (mounted.mountpoint / "still").write_bytes(b"works")
    assert (mounted.mountpoint / "still").read_bytes() == b"works"


def test_bad_input_one_line_errors(fuse_space: Mount, tmp_path: Path) -> None:
    m = fuse_space
    ok_dir = tmp_path / "ok"
    ok_dir.mkdir()
    (tmp_path / "file").write_bytes(b"x")
    cases = [
        (["mount", "no-such-space", str(ok_dir)], "unknown space"),
        (["mount", m.space, str(tmp_path / "missing")], "does not exist"),
        (["mount", m.space, str(tmp_path / "file")], "not a directory"),
        (["mount", m.space, str(ok_dir), "-o", "bogus"], "unknown mount option"),
    ]
    for i, (args, expect) in enumerate(cases):
        for extra in ([], ["-f"]) if i == 0 else ([],):  # the others are checked before any fork
            p = m.cli(*args, *extra, check=False, timeout=30)
            assert expect in one_line_error(p), (args, extra)
    bad = dict(m.env, ANYSYNCFS_PASSPHRASE="wrong")
    p = subprocess.run([*CLI, "mount", m.space, str(ok_dir)], env=bad, capture_output=True, timeout=30, cwd=REPO)
    assert "wrong passphrase" in one_line_error(p)
    assert p.returncode == 4
    assert not is_mounted(ok_dir)
    # a busy mountpoint: something already mounted there
    m.mount()
    p = m.cli("mount", m.space, str(m.mountpoint), check=False)
    assert "busy" in one_line_error(p) or "already mounted" in p.stderr.decode()
    # a non-empty mountpoint is fine, like any FUSE file system
    (ok_dir / "leftover").write_bytes(b"x")
    m.cli("space", "create", "second")
    p = m.cli("mount", "second", str(ok_dir), *TEST_MOUNT_OPTS, check=False)
    try:
        assert p.returncode == 0, p.stderr.decode()
        assert os.listdir(ok_dir) == []
    finally:
        subprocess.run([FM, "-u", str(ok_dir)], capture_output=True)
        if is_mounted(ok_dir):
            subprocess.run([FM, "-uz", str(ok_dir)], capture_output=True)


def test_read_only_mount(mounted: Mount) -> None:
    (mounted.mountpoint / "f").write_bytes(b"content")
    os.setxattr(mounted.path("f"), "user.k", b"v")
    mounted.remount("--read-only")
    assert (mounted.mountpoint / "f").read_bytes() == b"content"
    assert os.getxattr(mounted.path("f"), "user.k") == b"v"
    for action in (lambda: (mounted.mountpoint / "g").write_bytes(b"x"),
                   lambda: open(mounted.path("f"), "r+b"),
                   lambda: os.mkdir(mounted.path("d")),
                   lambda: os.unlink(mounted.path("f")),
                   lambda: os.chmod(mounted.path("f"), 0o600),
                   lambda: os.setxattr(mounted.path("f"), "user.k", b"w")):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno == errno.EROFS
    st = os.statvfs(mounted.mountpoint)
    assert st.f_flag & os.ST_RDONLY
    mounted.remount("-o", "rw")
    (mounted.mountpoint / "g").write_bytes(b"x")


def test_mount_helper_for_mount_t_and_fstab(fuse_space: Mount, tmp_path: Path) -> None:
    """What ``mount -t fuse.anysyncfs SPACE DIR -o home=...`` runs once the helper is /sbin/mount.fuse.anysyncfs."""
    m = fuse_space
    wrapper, passfile, env = mount_helper_inputs(m, tmp_path)
    args = [str(HELPER), m.space, str(m.mountpoint), "-o",
            f"rw,noauto,_netdev,x-systemd.automount,home={m.home},passphrase_file={passfile},"
            f"anysyncfs={wrapper},nodev,cache_size=1G"]
    p = subprocess.run(args, env=env, capture_output=True, timeout=60)
    for lock in (m.home / "locks").glob("*.lock"):
        if lock.read_text().strip():
            m.bg_pids.append(int(json.loads(lock.read_text())["pid"]))
    assert p.returncode == 0, p.stderr.decode()
    assert os.path.ismount(m.mountpoint)
    (m.mountpoint / "via-helper").write_bytes(b"ok")
    m.cli("unmount", str(m.mountpoint))
    assert m.cli("cat", m.space, "/via-helper").stdout == b"ok"
    # the fake-mount flag of mount(8) (-f) does nothing; a missing command is a clear error
    assert subprocess.run([*args, "-f"], env=env, capture_output=True).returncode == 0
    assert not is_mounted(m.mountpoint)
    p = subprocess.run([str(HELPER), m.space, str(m.mountpoint), "-o", f"home={m.home},anysyncfs=/nonexistent"],
                       env=env, capture_output=True)
    assert p.returncode != 0


def test_store_and_staging_are_private_while_mounted(fuse_space: Mount) -> None:
    """Issue 10 item 8b: store.db, its -wal and -shm, the staging folders and files: owner only (the mount runs
    under the usual umask 022, which gave 0644 and 0755 before)."""
    old = os.umask(0o022)
    try:
        fuse_space.mount()
    finally:
        os.umask(old)
    home = fuse_space.home
    with open(fuse_space.path("open.bin"), "wb", buffering=0) as f:
        # 8 KiB writes are staged; appends of 32 KiB and more would skip the staging files (fs/stream.py), whose
        # modes this test is about.
        for piece in (b"x", b"y"):
            for _ in range(12):
                f.write(piece * 8000)
        staged = [p for p in (home / "staging").rglob("*") if p.is_file()]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in
                 [home, home / "staging", *(home / "staging").iterdir(), *staged,
                  *(home / n for n in ("store.db", "store.db-wal", "store.db-shm"))]}
    assert staged, "no staging file while a file is being written"
    assert all(m == (0o600 if "store.db" in n or n.endswith(".stage") else 0o700) for n, m in modes.items()), modes


def test_staging_rewrites_never_reuse_keystream(mounted: Mount) -> None:
    """Issue 10 item 6 through a real mount: write a region, snapshot the staging files (as a backup or a btrfs
    snapshot would), rewrite the region, snapshot again. With keystream fixed by offset (before) the two snapshots
    XOR to the XOR of the plaintexts; now every rewrite of a block is sealed under a fresh nonce."""
    staging = mounted.home / "staging"

    def snapshot() -> bytes:
        files = sorted(p for p in staging.rglob("*.stage") if p.is_file())
        assert len(files) == 1, files
        return files[0].read_bytes()

    first, second = os.urandom(200_000), os.urandom(200_000)
    fd = os.open(mounted.path("rewritten.bin"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, first, 5000)
        snap1 = snapshot()
        os.pwrite(fd, second, 5000)
        snap2 = snapshot()
    finally:
        os.close(fd)  # commits
    want = bytes(a ^ b for a, b in zip(first[:4096], second[:4096]))[1000:1032]
    both = bytes(a ^ b for a, b in zip(snap1, snap2))
    assert len(snap1) >= len(first) and want not in both
    assert first[1000:1032] not in snap1 and second[1000:1032] not in snap2
    assert mounted.path("rewritten.bin").read_bytes() == bytes(5000) + second
