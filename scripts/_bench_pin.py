"""Pin throughput: a folder held by a provider node on loopback, pinned on a device that has none of its content.

    .venv/bin/python scripts/_bench_pin.py [--size 1G] [--files 16] [--keep DIR]

Setup (not timed): a node (``anysyncfs node serve``) on 127.0.0.1; device A writes ``--files`` files of random
bytes, ``--size`` in all, into ``big/`` with ``anysyncfs put`` and uploads them with ``anysyncfs sync``; device B
(the same account, restored from the phrase) syncs the metadata only and mounts the space.
Timed: ``anysyncfs pin MNT/big`` on B — every blob fetched from the node, verified, stored, decrypted and read
through the mount — then the same again (nothing to fetch: the cost of checking a pinned folder).
Homes use the test-only scrypt cost. Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anysyncfs.fs.mount import parse_size  # noqa: E402

CLI = [sys.executable, "-m", "anysyncfs"]
PASSPHRASE = "bench passphrase"
PIECE = 64 << 20  # bytes handed to `anysyncfs put` per write of random data


def env_for(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANYSYNCFS_HOME=str(home), ANYSYNCFS_PASSPHRASE=PASSPHRASE, ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N="4")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cli(home: Path, *args: str, stdin: bytes | None = None, timeout: float = 1800) -> str:
    done = subprocess.run([*CLI, *args], env=env_for(home), input=stdin, capture_output=True, timeout=timeout,
                          cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"anysyncfs {' '.join(args)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = open(root / "node.log", "ab")
    proc = subprocess.Popen([*CLI, "node", "serve", "--listen", f"127.0.0.1:{free_port()}", "--data",
                             str(root / "node"), "--quota", "100G"],
                            env=env_for(root / "unused"), stdout=subprocess.PIPE, stderr=log, cwd=REPO)
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + 30
    while not line.endswith(b"\n"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the node did not start; see {root / 'node.log'}")
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line += os.read(proc.stdout.fileno(), 4096)
    return proc, line.decode().strip()


def mount(home: Path, mnt: Path, log_path: Path) -> subprocess.Popen[bytes]:
    mnt.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    proc = subprocess.Popen([*CLI, "mount", "b", str(mnt), "-f", "-o", "sync_interval=30,fetch_timeout=60"],
                            env=env_for(home), stdout=log, stderr=log, cwd=REPO)
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the mount did not come up; see {log_path}")
        time.sleep(0.05)
    return proc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="bytes in the folder (default 1G)")
    ap.add_argument("--files", type=int, default=16, help="files in the folder (default 16)")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary directory, removed)")
    args = ap.parse_args()
    size = parse_size(args.size)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-pin-"))
    root.mkdir(parents=True, exist_ok=True)
    a, b, mnt = root / "a", root / "b", root / "mnt"
    node, address = start_node(root)
    proc = None
    try:
        out = cli(a, "init", "--device-name", "bench-a").splitlines()
        phrase = out[next(i for i, line in enumerate(out) if line.startswith("Your recovery phrase")) + 1].strip()
        space = cli(a, "space", "create", "a").strip()
        cli(a, "space", "add-peer", "a", address)
        per_file = size // args.files
        t0 = time.monotonic()
        for i in range(args.files):
            data = b"".join(os.urandom(min(PIECE, per_file - o)) for o in range(0, per_file, PIECE))
            cli(a, "put", "a", f"big/f{i:03d}", stdin=data)
        t1 = time.monotonic()
        cli(a, "sync", "a")
        t2 = time.monotonic()
        print(f"setup: put {per_file * args.files / 2**20:.0f} MiB in {t1 - t0:.1f} s, "
              f"upload in {t2 - t1:.1f} s ({per_file * args.files / (t2 - t1) / 1e6:.0f} MB/s)")

        cli(b, "init", "--restore", "--device-name", "bench-b", stdin=phrase.encode() + b"\n")
        cli(b, "space", "add-peer", space, address)
        cli(b, "sync", space, "--name", "b", "--metadata-only")
        proc = mount(b, mnt, root / "mount.log")
        for label in ("pin (fetch everything)", "pin again (all here)"):
            t0 = time.monotonic()
            cli(b, "pin", "--no-progress", str(mnt / "big"))
            elapsed = time.monotonic() - t0
            total = per_file * args.files
            print(f"{label}: {total / 2**20:.0f} MiB in {elapsed:.2f} s = {total / elapsed / 1e6:.0f} MB/s")
        blobs = sum(p.stat().st_size for p in (b / "blobs").rglob("*") if p.is_file())
        print(f"B holds {blobs / 2**20:.0f} MiB of blobs")
    finally:
        if proc is not None:
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=60)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
