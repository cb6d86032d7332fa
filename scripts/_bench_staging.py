#!/usr/bin/env python3
"""Staging write speed through the Vfs, in process (no FUSE): a sequential write of SIZE MiB in pieces the kernel
sends (1 MiB: libfuse's max_write; 4 KiB: an application writing page by page), timed (1) for the writes alone —
what the staging overlay costs — and (2) including the commit on release (chunking, sealing, store).

    PYTHONPATH=. .venv/bin/python scripts/_bench_staging.py [SIZE_MIB] [SMALL_MIB]

Prints one line per run; best of 3. Keep the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from anysyncfs.fs.vfs import ROOT_INODE, Ctx, Vfs
from anysyncfs.replica.home import Home
from anysyncfs.replica.replica import create_space

ROOT = Ctx(uid=0, gid=0)


def run(size: int, piece: int, commit: bool) -> float:
    data = os.urandom(size)
    view = memoryview(data)
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp) / "home", scrypt_log2_n=4)
        unlocked = home.create_identity(
            "abandon " * 23 + "art", "bench", b"bench")  # a valid BIP-39 test phrase
        replica = create_space(unlocked, "s")
        vfs = Vfs(replica, staging_dir=Path(tmp) / "staging")
        fh, attr = vfs.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, ROOT)[:2]
        started = time.perf_counter()
        for offset in range(0, size, piece):
            vfs.write(fh, offset, view[offset : offset + piece])
        if commit:
            vfs.release(fh)
        elapsed = time.perf_counter() - started
        if not commit:
            vfs.release(fh)
        vfs.close()
        home.close()
        return elapsed


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    small_mib = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    for label, size, piece, commit in (
        (f"{size_mib} MiB in 1 MiB writes, staging only", size_mib << 20, 1 << 20, False),
        (f"{size_mib} MiB in 1 MiB writes + commit on release", size_mib << 20, 1 << 20, True),
        (f"{small_mib} MiB in 4 KiB writes, staging only", small_mib << 20, 4096, False),
    ):
        best = min(run(size, piece, commit) for _ in range(3))
        print(f"{label}: {best:.2f} s = {size / best / 1e6:.0f} MB/s")


if __name__ == "__main__":
    main()
