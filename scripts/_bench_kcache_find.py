"""How many requests repeated walks cost at a given ``cache_timeout``.

Makes a space of ``--files`` small files (100 to a folder) through an offline mount, remounts (the kernel's caches
start cold), walks it ``--walks`` times with ``--pause`` seconds between walks (longer than the old fixed 1 s
timeout) — ``find -printf "%s %m %T@"`` (readdir), or ``stat``: an lstat of every file by path without listing
anything, as ``git status`` or ``make`` do — unmounts, and prints the Vfs call counts the mount logs at unmount with --debug,
plus the wall time of each walk. Request counts do not depend on the machine's load; the wall times do.

    PYTHONPATH=/path/to/tree python /path/to/tree/scripts/_bench_kcache_find.py --timeouts 1,10
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "anysyncfs"]


def run(env: dict[str, str], *args: str) -> None:
    subprocess.run([*CLI, *args], env=env, check=True, capture_output=True)


def mount(env: dict[str, str], mnt: Path, log: Path, *opts: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        proc = subprocess.Popen([*CLI, "--debug", "mount", "s", str(mnt), "-f", "-o",
                                 "offline,listen=off,discovery=off", *opts],
                                env=env, stdout=f, stderr=f)  # fmt: skip
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"mount failed:\n{log.read_text()}")
        time.sleep(0.02)
    return proc


def unmount(mnt: Path, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--walks", type=int, default=3)
    ap.add_argument("--pause", type=float, default=1.5)
    ap.add_argument("--timeouts", default="1,10")
    ap.add_argument("--workload", choices=("find", "stat"), default="stat")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-kcache-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, ANYSYNCFS_HOME=str(root / "home"), ANYSYNCFS_CONFIG=str(root / "config.toml"),
                   ANYSYNCFS_PASSPHRASE="bench passphrase", ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N="4")  # fmt: skip
        run(env, "init", "--device-name", "bench")
        run(env, "space", "create", "s")
        mnt = root / "mnt"
        mnt.mkdir()
        proc = mount(env, mnt, root / "fill.log")
        for i in range(args.files):
            d = mnt / f"d{i // 100:03d}"
            if i % 100 == 0:
                d.mkdir()
            (d / f"f{i:05d}").write_bytes(b"x" * (i % 200))
        unmount(mnt, proc)
        for timeout in args.timeouts.split(","):
            log = root / f"walk-{timeout}.log"
            proc = mount(env, mnt, log, "-o", f"cache_timeout={timeout}")
            walls = []
            for _ in range(args.walks):
                t = time.perf_counter()
                if args.workload == "find":
                    subprocess.run(["find", str(mnt), "-printf", "%s %m %T@\n"], check=True,
                                   stdout=subprocess.DEVNULL)  # fmt: skip
                else:
                    for i in range(args.files):
                        os.lstat(mnt / f"d{i // 100:03d}" / f"f{i:05d}")
                walls.append(time.perf_counter() - t)
                time.sleep(args.pause)
            unmount(mnt, proc)
            report = next((ln for ln in log.read_text().splitlines() if "vfs calls:" in ln), "")
            counts = {k: int(v) for k, v in re.findall(r"(\w+): n=(\d+)", report)}
            print(f"{args.workload}, cache_timeout={timeout}: walks {', '.join(f'{w:.3f}' for w in walls)} s; "
                  f"lookup {counts.get('lookup', 0)}, getattr {counts.get('getattr', 0)}, "
                  f"readdir {counts.get('readdir', 0)}")


if __name__ == "__main__":
    main()
