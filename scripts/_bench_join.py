"""Benchmark: from ``anysyncfs join TICKET`` to the whole tree listed on the new device (issue 5; aim <= 10 s on
loopback for 10,000 files, content fetched lazily).

Setup (not timed as part of the figure): a provider node in a subprocess; an owner identity that creates a space of
--files files (8 KiB each, so every file has a blob; --per-dir files per directory) through the Python API in this
process, one change per file as a mount commits them, and syncs it to the node; then ``anysyncfs space invite``.
Timed: ``anysyncfs join TICKET`` on a fresh identity (metadata only), then one process that lists the whole tree
(``anysyncfs ls -l`` of the root, and a walk of every directory through the same code ``ls`` uses, in one process:
running ``ls`` once per directory would mostly time Python start-up). Prints the figures; everything lives in one
fresh directory that is deleted at the end.

    .venv/bin/python scripts/_bench_join.py [--files 10000] [--per-dir 100] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PASSPHRASE = "benchmark passphrase"
ANYSYNCFS = [sys.executable, "-m", "anysyncfs"]
FILE_SIZE = 8192  # above the inline limit (4 KiB): each file is one blob, left on the node until read

WALK = r"""
import sys, time
from anysyncfs.core import ops
from anysyncfs.replica.files import list_dir
from anysyncfs.replica.home import Home
from anysyncfs.replica.replica import open_replica
t0 = time.perf_counter()
unlocked = Home(sys.argv[1]).unlock(sys.argv[2].encode())
replica = open_replica(unlocked, "bench")
files = dirs = 0
todo = ["/"]
while todo:
    path = todo.pop()
    for item in list_dir(replica.tree, path):
        if item.kind == ops.KIND_DIR:
            dirs += 1
            todo.append(path.rstrip("/") + "/" + item.name)
        else:
            files += 1
print(files, dirs, f"{time.perf_counter() - t0:.3f}")
"""


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANYSYNCFS_PASSPHRASE"] = PASSPHRASE
    env["ANYSYNCFS_HOME"] = str(home)
    env.pop("ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N", None)  # real keyring cost: part of what a user waits for
    return env


def run(home: Path, *args: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([*ANYSYNCFS, *args], env=env_for(home), capture_output=True, text=True, timeout=600,
                       check=False)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"anysyncfs {' '.join(args[:2])} failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout, took


def build_space(owner_home: Path, address: str, count: int, per_dir: int) -> tuple[float, float]:
    import trio

    from anysyncfs.core import keys
    from anysyncfs.core.address import parse_address
    from anysyncfs.net.endpoint import Endpoint
    from anysyncfs.net.runner import Runner
    from anysyncfs.net.sync import SpaceSync
    from anysyncfs.replica.files import put_file
    from anysyncfs.replica.home import Home
    from anysyncfs.replica.replica import create_space

    home = Home(owner_home)
    unlocked = home.create_identity(keys.generate_phrase(), "owner", PASSPHRASE.encode())
    replica = create_space(unlocked, "bench")
    t0 = time.perf_counter()
    for i in range(count):
        put_file(replica, f"/d{i // per_dir:04d}/f{i:06d}.bin", os.urandom(FILE_SIZE))
    replica.sync()
    made = time.perf_counter() - t0
    addr = parse_address(address)
    replica.store.add_peer(replica.space_id, str(addr), addr.device)
    t0 = time.perf_counter()
    report = trio.run(SpaceSync(replica, Endpoint(unlocked.identity), Runner()).sync_once)
    uploaded = time.perf_counter() - t0
    if report.errors or report.reached != 1:
        raise SystemExit(f"upload to the node failed: {report.errors}")
    home.close()
    return made, uploaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--per-dir", type=int, default=100)
    ap.add_argument("--dir", type=Path, default=None, help="parent of the scratch directory (default: $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="anysyncfs-bench-join-", dir=args.dir))
    node = subprocess.Popen([*ANYSYNCFS, "node", "serve", "--listen", "127.0.0.1:0", "--data", str(base / "node")],
                            env=env_for(base / "unused"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert node.stdout is not None
        address = node.stdout.readline().strip()
        if not address.startswith("anysync://"):
            raise SystemExit(f"the node printed no address: {address!r}")
        made, uploaded = build_space(base / "owner", address, args.files, args.per_dir)
        _out, invited = run(base / "owner", "space", "invite", "bench", "--role", "writer")
        ticket = _out.strip()
        run(base / "joiner", "init", "--device-name", "joiner")

        t_start = time.perf_counter()
        joined_out, t_join = run(base / "joiner", "join", ticket, "--name", "bench")
        root_out, t_ls_root = run(base / "joiner", "ls", "-l", "bench", "/")
        walk_out, t_walk = _walk(base / "joiner")
        total = time.perf_counter() - t_start

        files, dirs, walk_inner = walk_out.split()
        if int(files) != args.files:
            raise SystemExit(f"the new device lists {files} files, expected {args.files}")
        print(f"space: {args.files} files of {FILE_SIZE} B in {dirs} directories "
              f"(created in {made:.1f} s, uploaded to the node in {uploaded:.1f} s; invite took {invited:.2f} s)")
        print(f"join output: {joined_out.strip()}")
        print(f"root listing: {len(root_out.splitlines())} entries")
        print("| step | seconds |")
        print("| --- | --- |")
        print(f"| anysyncfs join TICKET (metadata only) | {t_join:.2f} |")
        print(f"| anysyncfs ls -l bench / | {t_ls_root:.2f} |")
        print(f"| list every directory of the tree, one process | {t_walk:.2f} (of which walking {walk_inner} s) |")
        print(f"| **join -> whole tree listed** (aim <= 10 s) | **{total:.2f}** |")
    finally:
        node.terminate()
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _walk(home: Path) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", WALK, str(home), PASSPHRASE], env=env_for(home), capture_output=True,
                       text=True, timeout=600, check=False, cwd=ROOT)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"walking the tree failed: {p.stderr.strip()}")
    return p.stdout, took


if __name__ == "__main__":
    main()
