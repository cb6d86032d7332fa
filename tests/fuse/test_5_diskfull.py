"""Level 5: a full disk under the home. ENOSPC (never EIO) reaches the writer; nothing committed is damaged.

The home (keyring, store, staging files and blobs) lives on a small tmpfs, so the disk fills after a few MiB.
Each test commits some files first, then writes until the writer is refused, and checks that

* the refusal reaches the writer as ENOSPC (on write, fsync or close: whichever call hit the full disk);
* the files committed before read back intact (sha256), through the mount and with ``anysyncfs cat``;
* the mount is still up, serves reads and, once space is freed, accepts writes again;
* after unmount + remount everything committed is still there and ``anysyncfs fsck`` passes.

Mounting a tmpfs needs root (CAP_SYS_ADMIN); without it the tests skip with the reason.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Mount

TMPFS_SIZE = "24m"
PIECE = 1 << 20
MAX_WRITE = 64 << 20  # far more than the tmpfs holds: the loop must end with ENOSPC long before


def try_mount_tmpfs(where: Path) -> str | None:
    """Mount a tmpfs at ``where``; the reason when that is not permitted here."""
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(where)],
                       capture_output=True, timeout=30)
    if p.returncode != 0:
        return f"cannot mount a tmpfs here: {p.stderr.decode(errors='replace').strip() or p.returncode}"
    return None


@pytest.fixture
def small_disk_space(tmp_path: Path, template_home: Path) -> Iterator[Mount]:
    """A Mount whose home sits on a 24 MiB tmpfs (not mounted yet); the tmpfs goes away in teardown."""
    m = Mount(tmp_path)  # the mountpoint and the mount log stay on the real disk
    m.home.mkdir()
    reason = try_mount_tmpfs(m.home)
    if reason:
        pytest.skip(reason)
    try:
        shutil.copytree(template_home, m.home, dirs_exist_ok=True)
        yield m
    finally:
        m.stop()
        if subprocess.run(["umount", str(m.home)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(m.home)], capture_output=True, timeout=30)
    problems = m.log_problems()
    assert not problems, "unexpected warnings/errors in the mount log:\n" + "\n".join(problems)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit_files(m: Mount) -> dict[str, str]:
    """A few files of different kinds (inline, chunked, nested), committed and fsynced; name -> sha256."""
    files = {
        "small.txt": b"a small committed file\n",
        "docs/notes.md": b"# notes\n" * 500,
        "data/random.bin": os.urandom(3 << 20),
        "data/zeros-and-text.bin": bytes(1 << 20) + b"tail\n",
    }
    for name, data in files.items():
        p = m.path(name)
        p.parent.mkdir(exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return {name: sha(data) for name, data in files.items()}


def check_files(m: Mount, want: dict[str, str]) -> None:
    for name, digest in want.items():
        assert sha(m.path(name).read_bytes()) == digest, f"{name} changed"


def fill_until_enospc(path: Path) -> str:
    """Write incompressible data until a call fails with ENOSPC; which call it was ("write" or "close": the
    commit at close may be the first thing the full disk refuses). Any other errno fails the test."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    written = 0
    failed: str | None = None
    try:
        while written < MAX_WRITE:
            try:
                written += os.write(fd, os.urandom(PIECE))
            except OSError as e:
                assert e.errno == errno.ENOSPC, f"write got {errno.errorcode.get(e.errno or 0)}, not ENOSPC"
                failed = "write"
                break
    finally:
        try:
            os.close(fd)
        except OSError as e:  # after a refused write the same staged data is refused again at close
            assert e.errno == errno.ENOSPC, f"close got {errno.errorcode.get(e.errno or 0)}, not ENOSPC"
            failed = failed or "close"
    assert failed is not None, f"{MAX_WRITE} bytes written to a {TMPFS_SIZE} disk without ENOSPC"
    return failed


def still_serving(m: Mount, want: dict[str, str]) -> None:
    """After the refusal: the mount is up, lists and reads, and what was committed before is intact."""
    assert os.path.ismount(m.mountpoint), "the mount went away"
    assert sorted(os.listdir(m.path("data"))) == ["random.bin", "zeros-and-text.bin"]
    check_files(m, want)


def unmount_and_verify(m: Mount, want: dict[str, str]) -> None:
    """Unmount; the store holds every committed file (``anysyncfs cat``), fsck passes, a remount shows them."""
    m.unmount()
    for name, digest in want.items():
        assert sha(m.cli("cat", m.space, "/" + name).stdout) == digest, f"{name} changed in the store"
    m.cli("fsck")
    m.mount()
    check_files(m, want)
    m.unmount()
    m.cli("fsck")


def test_enospc_while_writing_reaches_the_writer(small_disk_space: Mount) -> None:
    m = small_disk_space
    m.mount()
    want = commit_files(m)
    fill_until_enospc(m.path("big.bin"))
    still_serving(m, want)
    # The refused file was never confirmed to its writer (its close failed too): what it staged cannot be
    # committed on a full disk and is dropped at unmount, with an error in the log.
    m.expect_log(r"could not commit staged writes: commit: disk full")
    m.expect_log(r"ERROR .*closing with uncommitted writes lost: commit: disk full")
    unmount_and_verify(m, want)


def test_enospc_on_fsync_reaches_the_writer(small_disk_space: Mount) -> None:
    """The staged data fits on the disk, its blobs do not: the commit inside fsync is what gets refused. Written
    in 16 KiB writes, under the size that seals a sequential writer's chunks as it writes (fs/stream.py: such a
    writer meets ENOSPC at its writes, as in the test above), so the bytes go to the staging files."""
    m = small_disk_space
    m.mount()
    want = commit_files(m)
    st = os.statvfs(m.home)
    free = st.f_bavail * st.f_frsize
    size = int(free * 0.65) // PIECE * PIECE  # staging: 65% of the free space; staging + blobs: 130%
    fd = os.open(m.path("big.bin"), os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        small = 16 << 10
        for _ in range(size // small):
            os.write(fd, os.urandom(small))
        with pytest.raises(OSError) as refused:
            os.fsync(fd)
        assert refused.value.errno == errno.ENOSPC, f"fsync got {errno.errorcode.get(refused.value.errno or 0)}"
    finally:
        try:
            os.close(fd)  # fails again with ENOSPC: the same commit is tried at close
        except OSError as e:
            assert e.errno == errno.ENOSPC, f"close got {errno.errorcode.get(e.errno or 0)}, not ENOSPC"
    still_serving(m, want)
    m.expect_log(r"could not commit staged writes: commit: disk full")
    m.expect_log(r"ERROR .*closing with uncommitted writes lost: commit: disk full")
    unmount_and_verify(m, want)


def test_deleting_the_file_that_filled_the_disk_frees_it(small_disk_space: Mount) -> None:
    """As on a local disk: ``rm`` of the file that filled the disk works, and the space is usable again."""
    m = small_disk_space
    m.mount()
    want = commit_files(m)
    big = m.path("big.bin")
    fill_until_enospc(big)
    m.expect_log(r"could not commit staged writes: commit: disk full")  # a periodic commit may try before rm
    big.unlink()
    assert not big.exists()
    m.path("after.txt").write_bytes(b"written after the disk was full\n")
    want["after.txt"] = sha(b"written after the disk was full\n")
    still_serving(m, want)
    unmount_and_verify(m, want)
    m.mount()
    assert not big.exists()
