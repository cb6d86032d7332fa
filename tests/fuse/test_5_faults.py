"""Level 5: fault injection through the mount (issue 18 item 3) — a full disk at random points, EIO from a blob file.

**ENOSPC at random points.** The home sits on a 24 MiB tmpfs (``test_5_diskfull``'s fixture), or on a 32 MiB ext4
on a loop device (delayed allocation and a journal), that a ballast file fills to a random level, so the disk runs
out at a random point of a seeded random workload: new files of 0 B to 1 MiB (inline, one chunk, many chunks)
written and fsync'd, fsync'd appends to three logs, unlinks with an fsync of the directory, and transactions of a
SQLite database (WAL, synchronous=FULL) inside the mount. Whatever was confirmed (fsync, close, COMMIT returned) is
the model; an operation the full disk refused leaves its file uncertain (its old or its new state, or anything
between for data written in pieces) and is not touched again. ``test_5_diskfull`` covers the three places a writer
meets a full disk one by one; this mixes them. Checks:

* every refusal reaches the program as ENOSPC (SQLite: "database or disk is full" or its I/O error for a
  refused fsync), never as EIO or another errno;
* after the first refusals the mount still serves every confirmed file;
* once the ballast is deleted, the mount works again: a new file and a new SQLite transaction are confirmed;
* unmount, ``anysyncfs fsck``, remount: every confirmed file, log byte and transaction is there, each uncertain
  file is in one of its allowed states, and the database passes ``integrity_check``.

**EIO from a blob file.** The disk under one blob file fails: the blob is copied into a small ext4 image on a loop
device, which is bind-mounted over the blob file, and the loop device is then cut short before the file's first
data block, so every read of its data is refused by the block layer ("access beyond end of device": EIO, a real
I/O error from the kernel, not a damaged file). Reads of that file through the mount fail with EIO and one log
line, other files keep working and the mount takes new writes; with the disk "repaired" (the bind mount, the
ext4 and the loop device gone) the file reads intact again and fsck passes: nothing was lost. Needs root, losetup,
mkfs.ext4 and debugfs; the loop device, both mounts and the image go away in every case.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Mount
from .crash_soak import check_db, sqlite_body
from .test_5_diskfull import small_disk_space  # noqa: F401 # pyflakes: ignore - a fixture used below

# ---------------------------------------------------------------------------------------------- ENOSPC
SEEDS = range(int(os.environ.get("ANYSYNCFS_ENOSPC_SEEDS", "4")))  # more for a longer run, from a script
EXT4_SEEDS = range(100, 100 + int(os.environ.get("ANYSYNCFS_ENOSPC_EXT4_SEEDS", "2")))
PIECE = 128 << 10  # one write call: at most one FUSE write request
MAX_STEPS = 400
REFUSALS = 4  # operations refused before the disk is freed
SQLITE_FULL = ("database or disk is full", "disk I/O error")


class Full(Exception):
    """An operation of the workload was refused with ENOSPC."""


def _enospc(e: OSError, what: str) -> Full:
    assert e.errno == errno.ENOSPC, f"{what}: got {errno.errorcode.get(e.errno or 0)} ({e}), not ENOSPC"
    return Full(what)


class Workload:
    """A seeded random workload on the mount and the model of what it confirmed."""

    def __init__(self, m: Mount, rnd: random.Random) -> None:
        self.m = m
        self.rnd = rnd
        self.files: dict[str, bytes] = {}  # confirmed: name -> content
        self.uncertain: dict[str, tuple[str, bytes, bytes]] = {}  # name -> (kind, old, new)
        self.logs = ["log0", "log1", "log2"]
        self.db_confirmed = -1
        self.db_retired = False
        self.db: sqlite3.Connection | None = None
        self.refused: dict[str, int] = {}
        self.count = 0

    def open_db(self) -> sqlite3.Connection:
        c = sqlite3.connect(str(self.m.path("db.sqlite")), isolation_level=None, timeout=30)
        try:
            assert c.execute("PRAGMA journal_mode=wal").fetchone()[0] == "wal"
            c.execute("PRAGMA synchronous=FULL")
        except BaseException:
            c.close()
            raise
        return c

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def step(self) -> None:
        kinds = ["new", "append", "unlink", "sqlite"]
        kind = self.rnd.choices(kinds, weights=[4, 4, 1, 3])[0]
        try:
            getattr(self, "op_" + kind)()
        except Full:
            self.refused[kind] = self.refused.get(kind, 0) + 1

    def op_new(self) -> None:
        name = f"f{self.count:04d}"
        self.count += 1
        data = self.rnd.randbytes(self.rnd.choice([0, 100, 5000, 70_000, 300_000, 1 << 20]))
        try:
            fd = os.open(self.m.path(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as e:
            self.uncertain[name] = ("new", b"", b"")
            raise _enospc(e, "create") from None
        failed: str | None = None
        try:
            for at in range(0, len(data), PIECE):
                os.write(fd, data[at:at + PIECE])
            os.fsync(fd)
        except OSError as e:
            failed = "write or fsync"
            _enospc(e, failed)
        finally:
            try:
                os.close(fd)
            except OSError as e:
                failed = failed or "close"
                _enospc(e, "close")
        if failed:
            self.uncertain[name] = ("new", b"", data)
            raise Full(failed)
        self.files[name] = data

    def op_append(self) -> None:
        live = [n for n in self.logs if n not in self.uncertain]
        if not live:
            return self.op_new()
        name = self.rnd.choice(live)
        old = self.files.get(name, b"")
        rec = self.rnd.randbytes(self.rnd.choice([10, 200, 4000, 50_000]))
        fd = os.open(self.m.path(name), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        try:
            os.write(fd, rec)
            os.fsync(fd)
        except OSError as e:
            self.uncertain[name] = ("append", old, old + rec)
            raise _enospc(e, "append") from None
        finally:
            try:
                os.close(fd)
            except OSError as e:
                self.uncertain[name] = ("append", old, old + rec)
                raise _enospc(e, "close") from None
        self.files[name] = old + rec

    def op_unlink(self) -> None:
        done = [n for n in self.files if n.startswith("f")]
        if not done:
            return
        name = self.rnd.choice(done)
        data = self.files.pop(name)
        try:
            os.unlink(self.m.path(name))
            fd = os.open(self.m.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.uncertain[name] = ("unlink", data, b"")
            raise _enospc(e, "unlink") from None

    def op_sqlite(self) -> None:
        if self.db_retired:
            return
        try:
            if self.db is None:
                self.db = self.open_db()
                self.db.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
                row = self.db.execute("SELECT n FROM meta WHERE k = 0").fetchone()
                # A transaction whose COMMIT the full disk refused may have been committed all the same.
                self.db_confirmed = max(self.db_confirmed, row[0] if row else -1)
            i = self.db_confirmed + 1
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO rows VALUES (?, ?)", (i, sqlite_body(i)))
            self.db.execute("DELETE FROM rows WHERE id = ?", (i - 20,))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (0, ?)", (i,))
            self.db.execute("COMMIT")
            self.db_confirmed = i
        except sqlite3.OperationalError as e:
            assert any(s in str(e) for s in SQLITE_FULL), f"sqlite: {e}"
            self.db_retired = True
            self.close()
            raise Full("sqlite") from None

    def check_confirmed(self) -> None:
        """Every confirmed file reads back exactly, through the mount."""
        for name, data in self.files.items():
            if name not in self.uncertain:
                assert self.m.path(name).read_bytes() == data, f"{name}: confirmed content changed"

    def check_uncertain(self) -> None:
        for name, (kind, old, new) in self.uncertain.items():
            p = self.m.path(name)
            got = p.read_bytes() if p.exists() else None
            if kind == "new":  # absent, or any prefix of what was written (written in pieces)
                assert got is None or new.startswith(got), f"{name}: {len(got or b'')} B not a prefix of its data"
            elif kind == "append":
                assert got is not None and got.startswith(old) and new.startswith(got), \
                    f"{name}: {len(got or b'')} B, confirmed {len(old)}, attempted {len(new)}"
            else:  # unlink
                assert got is None or got == old, f"{name}: changed while being unlinked"


def _fill(path: Path, leave: int) -> None:
    """A ballast file that leaves about ``leave`` bytes free on the file system of ``path``."""
    st = os.statvfs(path.parent)
    size = max(0, st.f_bavail * st.f_frsize - leave)
    with open(path, "wb") as f:
        while size > 0:
            n = f.write(bytes(min(size, 1 << 20)))
            size -= n


def _unmount(m: Mount) -> None:
    """Unmount, first checking that this process holds nothing open in the mount (a connection that failed while
    opening is closed by the garbage collector)."""
    gc.collect()
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(m.mountpoint)):
            held.append(target)
    with open("/proc/self/maps") as maps:
        held += [line.split()[-1] for line in maps if str(m.mountpoint) in line]
    assert not held, f"still open in the mount: {held}"
    m.unmount()


@pytest.mark.parametrize("seed", SEEDS)
def test_enospc_at_random_points_loses_nothing_confirmed(small_disk_space: Mount, seed: int) -> None:  # noqa: F811
    run_enospc(small_disk_space, seed)


@pytest.fixture
def small_ext4_space(tmp_path: Path, template_home: Path) -> Iterator[Mount]:
    """A Mount whose home is a 32 MiB ext4 file system on a loop device (delayed allocation, a journal: a full
    disk shows up at other calls than on tmpfs); the file system and the loop device go away in teardown."""
    _need("losetup", "mkfs.ext4")
    m = Mount(tmp_path)
    m.home.mkdir()
    image = tmp_path / "home.img"
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", str(image), "32M")
    loop = _run("losetup", "-f", "--show", str(image)).strip()
    mounted = False
    try:
        _run("mount", loop, str(m.home))
        mounted = True
        os.chmod(m.home, 0o700)
        shutil.rmtree(m.home / "lost+found")
        shutil.copytree(template_home, m.home, dirs_exist_ok=True)
        yield m
    finally:
        m.stop()
        if mounted and subprocess.run(["umount", str(m.home)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(m.home)], capture_output=True, timeout=30)
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=30)
    problems = m.log_problems()
    assert not problems, "unexpected warnings/errors in the mount log:\n" + "\n".join(problems)


@pytest.mark.parametrize("seed", EXT4_SEEDS)
def test_enospc_at_random_points_on_ext4_loses_nothing_confirmed(small_ext4_space: Mount, seed: int) -> None:
    run_enospc(small_ext4_space, seed)


def run_enospc(m: Mount, seed: int) -> None:
    rnd = random.Random(seed)
    m.expect_log(r"disk full|No space left|ENOSPC|database or disk is full")
    m.mount()
    w = Workload(m, rnd)
    ballast = m.home / "ballast"
    try:
        _fill(ballast, rnd.randrange(256 << 10, 6 << 20))
        steps = 0
        while sum(w.refused.values()) < REFUSALS and steps < MAX_STEPS:
            w.step()
            steps += 1
        assert w.refused, f"{steps} operations and no ENOSPC"
        assert os.path.ismount(m.mountpoint), "the mount went away on a full disk"
        w.check_confirmed()

        ballast.unlink()  # space again: the mount works as before
        after = rnd.randbytes(400_000)
        with open(m.path("after.bin"), "wb") as f:
            f.write(after)
            f.flush()
            os.fsync(f.fileno())
        w.files["after.bin"] = after
        w.db_retired = False
        w.op_sqlite()  # a new transaction (on a new connection if the old one was refused)
    finally:
        w.close()
    print(f"seed {seed}: {steps} operations, refused {w.refused}, {len(w.files)} files confirmed, "
          f"{len(w.uncertain)} uncertain, {w.db_confirmed + 1} transactions")
    _unmount(m)
    m.cli("fsck")
    m.mount()
    w.check_confirmed()
    w.check_uncertain()
    check_db(m.path("db.sqlite"), w.db_confirmed)
    _unmount(m)
    m.cli("fsck")


# ---------------------------------------------------------------------------------------------- EIO
def _need(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _run(*args: str) -> str:
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"{' '.join(args)}: {p.returncode} {p.stderr.strip()}"
    return p.stdout


class FailingDisk:
    """A file on a disk whose data blocks fail to read: a copy of ``src`` in an ext4 image on a loop device, the
    device then cut short before the file's first data block; bind-mounted over ``src``. Undone by close()."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loop: str | None = None
        self.mounted: list[Path] = []

    def install(self, src: Path) -> None:
        tree = self.root / "tree"
        tree.mkdir()
        shutil.copyfile(src, tree / "blob")
        image = self.root / "disk.img"
        _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-b", "4096", "-d", str(tree), str(image), "4M")
        found = re.search(r"(\d+)", _run("debugfs", "-R", "bmap /blob 0", str(image)).strip().splitlines()[-1])
        assert found, "debugfs gave no block"
        first_block = int(found[1])
        self.loop = _run("losetup", "-f", "--show", str(image)).strip()
        where = self.root / "disk"
        where.mkdir()
        _run("mount", "-o", "ro", self.loop, str(where))
        self.mounted.append(where)
        _run("mount", "--bind", str(where / "blob"), str(src))
        self.mounted.append(src)
        os.truncate(image, first_block * 4096)
        _run("losetup", "-c", self.loop)  # the device shrinks under the mounted ext4

    def close(self) -> None:
        for where in reversed(self.mounted):
            if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)
        self.mounted.clear()
        if self.loop is not None:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, timeout=30)
            self.loop = None


@pytest.fixture
def failing_disk(tmp_path: Path) -> Iterator[FailingDisk]:
    _need("losetup", "mkfs.ext4", "debugfs")
    disk = FailingDisk(tmp_path / "faulty")
    disk.root.mkdir()
    try:
        yield disk
    finally:
        disk.close()


def blob_files(m: Mount) -> set[Path]:
    return {p for p in (m.home / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".ob")}


def test_eio_from_the_disk_under_a_blob_file(mounted: Mount, failing_disk: FailingDisk) -> None:
    m = mounted
    before = blob_files(m)
    victim = os.urandom(200_000)  # under the chunker's 256 KiB minimum: one chunk, one blob file
    with open(m.path("victim.bin"), "wb") as f:
        f.write(victim)
        f.flush()
        os.fsync(f.fileno())
    (blob,) = [p for p in blob_files(m) - before if p.stat().st_size > len(victim)]
    bystander = os.urandom(200_000)
    m.path("bystander.bin").write_bytes(bystander)
    m.unmount()  # nothing cached anywhere, no blob file kept open
    failing_disk.install(blob)
    with pytest.raises(OSError) as direct:
        blob.read_bytes()
    assert direct.value.errno == errno.EIO, f"the disk under the blob did not fail: {direct.value}"

    m.expect_log(r"\(EIO\)|Input/output error")
    m.mount()
    with pytest.raises(OSError) as e:
        m.path("victim.bin").read_bytes()
    assert e.value.errno == errno.EIO
    assert m.path("bystander.bin").read_bytes() == bystander
    m.path("after.txt").write_bytes(b"written while a blob file fails\n")
    assert m.path("after.txt").read_bytes() == b"written while a blob file fails\n"
    assert sorted(os.listdir(m.mountpoint)) == ["after.txt", "bystander.bin", "victim.bin"]
    m.unmount()
    lines = [line for line in m.log_text().splitlines() if re.search(r"WARNING|ERROR", line)]
    assert len(lines) == 1, "one log line for the failed read:\n" + "\n".join(lines)
    assert "I/O error while reading blob" in lines[0] and "Input/output error" in lines[0], lines[0]

    failing_disk.close()  # the disk is "repaired": the blob file is the original again
    m.mount()
    assert m.path("victim.bin").read_bytes() == victim
    m.unmount()
    m.cli("fsck")
