"""Level 4: group commit — many operations, one signed change; a crash leaves a prefix; readers see pending work.

* Read-your-writes: with a batch held open (a long ``batch_interval``), a second process sees every pending
  operation at once (stat, readdir, read, readlink), while the store (read by the CLI) has none of them yet; an
  fsync of the directory then commits them all as ONE change.
* kill -9 during an untar and an fsync'd append loop running together, ``RUNS`` times with seeded random kill
  times and batch intervals. After each kill: remount, ``anysyncfs fsck`` passes, every fsync-confirmed byte of
  the log is there (and the log is an exact prefix of its record stream), and the extracted tree is a PREFIX of
  the tarball: for some k, exactly the first k members exist (in the tarball's order, which is tar's extraction
  order), each file complete — its exact bytes and mode — and nothing else. No torn file, no name without its
  content. (The mount runs with ``commit_interval=3600``: the periodic commit of long writers, which commits a
  file that stays open with what it has so far, never fires during a run. ``test_4_crash`` covers that path.)

Set ``ANYSYNCFS_GROUP_COMMIT_RUNS`` for a longer soak (e.g. 200) from a script; the default keeps CI short.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from .conftest import Mount

RUNS = int(os.environ.get("ANYSYNCFS_GROUP_COMMIT_RUNS", "20"))
FILES = 60
WRITER_EXIT_TIMEOUT = 10.0

# An fsync'd append loop: argv = file. Prints "len N" after every fsync that returned.
WRITER = r'''
import os, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
print("ready", flush=True)
total = i = 0
while True:
    rec = b"%08d:" % i + bytes((i + k) % 251 for k in range(40 + (i * 7919) % 300)) + b"\n"
    total += os.write(fd, rec)
    os.fsync(fd)
    print("len", total, flush=True)
    i += 1
'''


def record_stream(n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += b"%08d:" % i + bytes((i + k) % 251 for k in range(40 + (i * 7919) % 300)) + b"\n"
        i += 1
    return bytes(out)


Member = tuple[str, bool, bytes, int]  # (path, is a directory, content, mode)


def source_tree() -> list[Member]:
    """The tarball's members in order: directories before what they hold, files of 0 B to 24 KiB (inline content
    and blobs), a few modes."""
    rnd = random.Random(7)
    members: list[Member] = [("t", True, b"", 0o755)]
    for d in range(4):
        members.append((f"t/d{d}", True, b"", 0o755))
        if d % 2:
            members.append((f"t/d{d}/sub", True, b"", 0o750))
    dirs = [m[0] for m in members[1:]]
    for i in range(FILES):
        size = rnd.choice([0, 10, 300, 4000, 5000, 9000, 24_000])
        body = bytes(rnd.getrandbits(8) for _ in range(size))
        members.append((f"{dirs[i % len(dirs)]}/f{i:03d}", False, body, rnd.choice([0o644, 0o600, 0o755])))
    return members


def make_tarball(path: Path, members: list[Member]) -> None:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, is_dir, body, mode in members:
            if is_dir:
                tar.addfile(_dir_info(name, mode))
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(body), mode, 1_700_000_000
                tar.addfile(info, io.BytesIO(body))


def _dir_info(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1_700_000_000
    return info


def present(root: Path) -> dict[str, Path]:
    """Every path under ``root``, and root itself, by its path relative to root's parent."""
    out = {root.name: root}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(root.parent))] = p
    return out


def check_prefix(root: Path, members: list[Member]) -> int:
    """The number k of members present: exactly members[:k] exist, each file complete (bytes and mode)."""
    found = present(root) if root.exists() else {}
    k = 0
    while k < len(members) and members[k][0] in found:
        k += 1
    extra = sorted(set(found) - {m[0] for m in members[:k]})
    assert not extra, f"present beyond the prefix of {k} members: {extra[:5]} (a name out of order)"
    for name, is_dir, body, mode in members[:k]:
        p = found[name]
        st = p.lstat()
        if is_dir:
            assert p.is_dir(), name
            continue
        data = p.read_bytes()
        assert data == body, f"{name}: {len(data)} bytes, want {len(body)} (a torn or empty file)"
        assert st.st_mode & 0o7777 == mode, f"{name}: mode {oct(st.st_mode)}, want {oct(mode)}"
    return k


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Member]]:
    members = source_tree()
    path = tmp_path_factory.mktemp("gc") / "tree.tar"
    make_tarball(path, members)
    return path, members


def wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert proc.poll() is None, f"writer exited: {path.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s"
        time.sleep(0.01)


def confirmed_length(out: Path) -> int:
    length = 0
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "len" and parts[1].isdigit():
            length = int(parts[1])
    return length


@pytest.mark.parametrize("seed", range(RUNS))
def test_kill_9_during_untar_and_fsync_loop_leaves_a_prefix(
    fuse_space: Mount, tmp_path: Path, tarball: tuple[Path, list[Member]], seed: int
) -> None:
    rnd = random.Random(seed)
    tar_path, members = tarball
    m = fuse_space
    interval_ms = (20, 50, 200)[seed % 3]
    m.mount("-o", f"batch_interval={interval_ms},commit_interval=3600")
    out_path = tmp_path / "writer.out"
    log = m.path("append.log")
    delay = rnd.uniform(0.05, 1.2)
    with open(out_path, "wb") as out:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log)], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.DEVNULL)
    untar: subprocess.Popen[bytes] | None = None
    try:
        wait_for(out_path, "ready", writer)
        untar = subprocess.Popen(["tar", "-xf", str(tar_path), "-C", str(m.mountpoint)], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        m.signal(signal.SIGKILL)
        m.wait_exit()
        for proc in (writer, untar):  # with the server gone, their next call fails and they exit
            try:
                proc.wait(WRITER_EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError("a writer hangs on the dead mount") from None
    finally:
        for proc in (writer, untar):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        m.stop()
    length = confirmed_length(out_path)
    m.expect_log(r"WARNING .*staging files left by an earlier run")

    m.mount()
    data = log.read_bytes() if log.exists() else b""
    assert len(data) >= length, f"{length - len(data)} fsync-confirmed bytes lost (kill after {delay:.2f} s)"
    assert data == record_stream(len(data))[: len(data)], "the log is not a prefix of its record stream"
    k = check_prefix(m.path("t"), members)
    print(f"seed {seed}: kill after {delay:.2f} s, {k} of {len(members)} members, {len(data)} log bytes "
          f"({length} confirmed)")
    m.unmount()
    m.cli("fsck")


# A reader in another process: prints what it sees as JSON.
READER = r'''
import json, os, sys
root = sys.argv[1]
st = os.stat(os.path.join(root, "d/renamed.txt"))
print(json.dumps({
    "listing": sorted(os.listdir(os.path.join(root, "d"))),
    "root": sorted(n for n in os.listdir(root) if n != ".anysync"),
    "size": st.st_size, "mode": st.st_mode & 0o7777, "mtime": st.st_mtime_ns,
    "body": open(os.path.join(root, "d/renamed.txt"), "rb").read().decode(),
    "big": len(open(os.path.join(root, "d/big.bin"), "rb").read()),
    "link": os.readlink(os.path.join(root, "d/link")),
    "gone": os.path.exists(os.path.join(root, "d/doomed.txt")),
}))
'''


def test_a_second_process_reads_pending_writes(fuse_space: Mount) -> None:
    m = fuse_space
    m.mount("-o", "batch_interval=3600000,commit_interval=3600,offline")  # nothing commits until we fsync
    d = m.path("d")
    d.mkdir()
    (d / "a.txt").write_bytes(b"pending bytes\n")
    os.chmod(d / "a.txt", 0o640)
    os.utime(d / "a.txt", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    os.rename(d / "a.txt", d / "renamed.txt")
    (d / "big.bin").write_bytes(os.urandom(300_000))
    (d / "doomed.txt").write_bytes(b"soon gone")
    os.unlink(d / "doomed.txt")
    os.symlink("renamed.txt", d / "link")

    seen = json.loads(subprocess.run([sys.executable, "-c", READER, str(m.mountpoint)], check=True,
                                     capture_output=True, timeout=60).stdout)
    assert seen == {"listing": ["big.bin", "link", "renamed.txt"], "root": ["d"], "size": 14, "mode": 0o640,
                    "mtime": 1_600_000_000_000_000_000, "body": "pending bytes\n", "big": 300_000,
                    "link": "renamed.txt", "gone": False}
    # None of it is in the store yet: the batch is open (the CLI reads the store, not the mount).
    assert m.cli("ls", m.space, "/").stdout.decode().split() == []

    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # commits the batch
    finally:
        os.close(fd)
    assert m.cli("ls", m.space, "/d").stdout.decode().split() == ["big.bin", "link", "renamed.txt"]
    assert m.cli("cat", m.space, "/d/renamed.txt").stdout == b"pending bytes\n"
    history = m.cli("history", m.space, "/d/renamed.txt").stdout.decode().splitlines()
    assert len(history) == 1, f"create, write, chmod, utimens and rename are ONE change: {history}"
    m.unmount()
    m.cli("fsck")
