"""Time an anysyncfs mount of a space holding many files until it answers, and its memory: the startup cost of issue 11.

Builds a fresh home and space under ``--dir``, fills it through a real mount with ``--files`` small files (100 to
a directory, a few bytes each, written by this process: no tar needed), unmounts, then ``--runs`` times: starts
``anysyncfs mount -f``, waits until the mount point is a mount, records the seconds and the mount process's resident
memory at that moment and its peak (``VmRSS``/``VmHWM``), runs a cold ``find`` + stat over the tree, and unmounts.
With ``--profile FILE`` the last mount runs under cProfile (written to FILE when it exits).

    PYTHONPATH=$PWD /work/main/.venv/bin/python scripts/_bench_remount.py --files 100000 --dir /var/tmp/remount

The real scrypt cost of the keyring is used, as a user has it. Everything this starts is unmounted and removed on
the way out (``--keep`` leaves the home for another sitting: ``--reuse`` then skips the fill).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PASSPHRASE = "benchmark passphrase"
PER_DIR = 100
READY_TIMEOUT = 120.0


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["ANYSYNCFS_PASSPHRASE"] = PASSPHRASE
    e.pop("ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N", None)
    return e


def cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "anysyncfs", "--home", str(home), *args]


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Mounted:
    def __init__(self, home: Path, mnt: Path, log: Path, profile: Path | None = None) -> None:
        prefix = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "anysyncfs"] if profile else None
        cmd = cli(home, "mount", "-f", "bench", str(mnt))
        if prefix:
            cmd = prefix + cmd[3:]
        start = time.perf_counter()
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                raise SystemExit(f"mount exited with {self.proc.returncode}: see {log}")
            if time.perf_counter() - start > READY_TIMEOUT:
                self.kill(mnt)
                raise SystemExit(f"mount not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.005)
        self.ready_s = time.perf_counter() - start
        self.rss_mib = status_kib(self.proc.pid, "VmRSS") / 1024
        self.home, self.mnt = home, mnt

    def peak_mib(self) -> float:
        return status_kib(self.proc.pid, "VmHWM") / 1024

    def unmount(self) -> float:
        start = time.perf_counter()
        subprocess.run(cli(self.home, "unmount", str(self.mnt)), env=env(), check=True, capture_output=True)
        self.proc.wait(timeout=600)
        return time.perf_counter() - start

    def kill(self, mnt: Path) -> None:
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def fill(mnt: Path, files: int) -> None:
    tree = mnt / "tree"
    for i in range(files):
        d = tree / f"d{i // PER_DIR:05d}"
        if i % PER_DIR == 0:
            d.mkdir(parents=True)
        (d / f"f{i % PER_DIR:03d}.txt").write_bytes(b"file %d\n" % i)


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--dir", type=Path, default=Path("/var/tmp/anysyncfs-remount"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", type=Path, help="cProfile the last mount into this file")
    p.add_argument("--keep", action="store_true", help="leave the home under --dir")
    p.add_argument("--reuse", action="store_true", help="use the home left by --keep (no fill)")
    p.add_argument("--no-find", action="store_true", help="skip the cold find + stat")
    a = p.parse_args()
    home, mnt, log = a.dir / "home", a.dir / "mnt", a.dir / "mount.log"
    current: Mounted | None = None
    try:
        if not a.reuse:
            shutil.rmtree(a.dir, ignore_errors=True)
            mnt.mkdir(parents=True)
            subprocess.run(cli(home, "init", "--device-name", "bench"), env=env(), check=True, capture_output=True)
            subprocess.run(cli(home, "space", "create", "bench"), env=env(), check=True, capture_output=True)
            current = Mounted(home, mnt, log)
            start = time.perf_counter()
            fill(mnt, a.files)
            print(f"filled {a.files} files in {time.perf_counter() - start:.1f} s", flush=True)
            print(f"unmount after fill {current.unmount():.2f} s", flush=True)
            current = None
        ready, rss, peak, find_s, unmount_s = [], [], [], [], []
        for r in range(a.runs):
            drop_caches()
            current = Mounted(home, mnt, log, a.profile if a.profile and r == a.runs - 1 else None)
            ready.append(current.ready_s)
            rss.append(current.rss_mib)
            if not a.no_find:
                drop_caches()
                start = time.perf_counter()
                subprocess.run(["find", str(mnt / "tree"), "-printf", "%s %m %T@\n"], check=True,
                               stdout=subprocess.DEVNULL)
            find_s.append(time.perf_counter() - start if not a.no_find else float("nan"))
            peak.append(current.peak_mib())
            unmount_s.append(current.unmount())
            current = None
            print(f"run {r + 1}: ready {ready[-1]:.3f} s, RSS at ready {rss[-1]:.0f} MiB, find+stat cold "
                  f"{find_s[-1]:.3f} s, peak RSS {peak[-1]:.0f} MiB, unmount {unmount_s[-1]:.3f} s", flush=True)
        med = statistics.median
        print(f"median of {a.runs} ({a.files} files): mount ready {med(ready):.3f} s, RSS at ready {med(rss):.0f} MiB, "
              f"find+stat cold {med(find_s):.3f} s, peak RSS {med(peak):.0f} MiB, unmount {med(unmount_s):.3f} s")
    finally:
        if current is not None:
            current.kill(mnt)
        if not a.keep:
            shutil.rmtree(a.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
