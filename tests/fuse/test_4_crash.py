"""Level 4: kill -9 of the mount process while a writer fsyncs in a loop; every fsync-confirmed byte survives.

A writer process appends records to a file in the mount and fsyncs (or fdatasyncs) after each one, printing the
confirmed length after every successful fsync; every few records it also creates a small side file, fsyncs it and
the directory, and reports that too. The test kills the MOUNT process with SIGKILL at a random moment, cleans up
the dead mount (``fusermount3 -uz``), remounts, and checks that

* the file holds at least every confirmed byte, and everything it holds is an exact prefix of the record stream
  (no zeros, no torn or reordered records: a commit captures whole writes);
* every confirmed side file exists with its content;
* ``anysyncfs fsck`` passes.

The kill time, the fsync flavour and the commit interval vary with the (seeded, reproducible) parameter.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Mount

RUNS = 12
WRITER_EXIT_TIMEOUT = 10.0

# The writer: argv = file, side-file directory, "fsync" | "fdatasync". Record i is deterministic (see record()).
WRITER = r'''
import os, sys
path, side_dir, how = sys.argv[1], sys.argv[2], sys.argv[3]
sync = os.fdatasync if how == "fdatasync" else os.fsync

def record(i):
    size = 100_000 if i % 25 == 24 else 40 + (i * 7919) % 400
    head = b"%08d:" % i
    return head + bytes((i + k) % 251 for k in range(size - len(head) - 1)) + b"\n"

fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
print("ready", flush=True)
total = 0
i = 0
while True:
    rec = record(i)
    n = os.write(fd, rec)
    assert n == len(rec), n
    sync(fd)
    total += n
    print("len", total, flush=True)
    if i % 10 == 5:
        side = os.path.join(side_dir, "side%05d" % i)
        sfd = os.open(side, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        os.write(sfd, b"side file %d\n" % i)
        os.fsync(sfd)
        os.close(sfd)
        dfd = os.open(side_dir, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        print("side", i, flush=True)
    i += 1
'''


def record(i: int) -> bytes:
    """The writer's record i (the same function as in WRITER)."""
    size = 100_000 if i % 25 == 24 else 40 + (i * 7919) % 400
    head = b"%08d:" % i
    return head + bytes((i + k) % 251 for k in range(size - len(head) - 1)) + b"\n"


def stream(length: int) -> bytes:
    """The first ``length`` bytes (at least) of the record stream, whole records."""
    out = bytearray()
    i = 0
    while len(out) < length:
        out += record(i)
        i += 1
    return bytes(out)


def wait_for_line(path: Path, word: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(line.split()[:1] == [word] for line in path.read_text().splitlines()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"writer exited {proc.returncode} before {word!r}: {path.read_text()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError(f"writer printed no {word!r} within {timeout} s")


def confirmed(path: Path) -> tuple[int, list[int]]:
    """(last confirmed length, confirmed side files) from the writer's output (a torn last line is ignored)."""
    length, sides = 0, []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "len" and parts[1].isdigit():
            length = int(parts[1])
        elif len(parts) == 2 and parts[0] == "side" and parts[1].isdigit():
            sides.append(int(parts[1]))
    return length, sides


@pytest.mark.parametrize("seed", range(RUNS))
def test_kill_9_keeps_every_fsync_confirmed_byte(fuse_space: Mount, tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    m = fuse_space
    # Odd seeds: short periodic commits too, so the kill also lands in the middle of a background commit.
    m.mount(*(("-o", "commit_interval=0.1") if seed % 2 else ()))
    target = m.path("journal.log")
    side_dir = m.path("sides")
    side_dir.mkdir()
    out_path = tmp_path / "writer.out"
    how = "fdatasync" if seed % 3 == 2 else "fsync"
    delay = rnd.uniform(0.3, 2.0)
    with open(out_path, "wb") as out:
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(side_dir), how],
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.DEVNULL)
    try:
        wait_for_line(out_path, "ready", writer)
        time.sleep(delay)
        assert writer.poll() is None, f"writer died before the kill: {out_path.read_text()[-2000:]}"
        m.signal(signal.SIGKILL)
        m.wait_exit()
        # With its server gone, the writer's next call fails (ENOTCONN) and it exits on its own.
        try:
            writer.wait(WRITER_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError("the writer hangs on the dead mount") from None
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
        m.stop()  # fusermount3 -u, then -uz: the dead mount is gone
    length, sides = confirmed(out_path)
    assert length > 0, f"nothing was confirmed within {delay:.2f} s"

    m.expect_log(r"WARNING .*staging files left by an earlier run")
    m.mount()
    data = target.read_bytes()
    assert len(data) >= length, f"{length - len(data)} fsync-confirmed bytes lost (kill after {delay:.2f} s)"
    want = stream(len(data))
    if data != want[: len(data)]:
        bad = next(i for i, (a, b) in enumerate(zip(data, want)) if a != b)
        raise AssertionError(f"content differs from the record stream at byte {bad} of {len(data)} "
                             f"(confirmed {length})")
    for i in sides:
        assert (side_dir / f"side{i:05d}").read_bytes() == b"side file %d\n" % i, f"side file {i}"
    m.unmount()
    m.cli("fsck")
