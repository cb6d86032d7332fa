"""Small O_APPEND writes through a real anysyncfs mount: writes per second (issue 18, "slow small appends").

    sudo python3 scripts/_bench_appends.py                    3,000,000 four-byte writes (the issue's figure)
    sudo python3 scripts/_bench_appends.py --writes 200000    a shorter run
    sudo python3 scripts/_bench_appends.py --profile out.svg  also record the mount process with py-spy

Makes a throw-away home and space with the CLI under a temporary directory, mounts it in the foreground, opens
one file with O_WRONLY|O_APPEND|O_CREAT and writes ``--size`` bytes ``--writes`` times with os.write (one
syscall, one FUSE write request each: the mount has no writeback cache), closes it, checks the file's size and
content after an fsync, and unmounts. Run it from the repository root with the project's virtualenv python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSPHRASE = "bench appends passphrase"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=3_000_000)
    ap.add_argument("--size", type=int, default=4, help="bytes per write (default 4)")
    ap.add_argument("--profile", metavar="SVG", help="record the mount process with py-spy into this flame graph")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anysyncfs-appends-"))
    env = dict(os.environ, ANYSYNCFS_HOME=str(root / "home"), ANYSYNCFS_PASSPHRASE=PASSPHRASE,
               ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N="4", PYTHONPATH=str(REPO))
    cli = [sys.executable, "-m", "anysyncfs"]
    mnt = root / "mnt"
    mnt.mkdir()
    proc: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([*cli, "init", "--device-name", "bench"], env=env, check=True, capture_output=True)
        subprocess.run([*cli, "space", "create", "bench"], env=env, check=True, capture_output=True)
        log = open(root / "mount.log", "wb")
        proc = subprocess.Popen([*cli, "mount", "bench", str(mnt), "-f"], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mount failed:\n{(root / 'mount.log').read_text()}")
            time.sleep(0.05)
        if args.profile:
            py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([py_spy, "record", "--pid", str(proc.pid), "--output", args.profile,
                                    "--rate", "200", "--nonblocking", *(["--format", "raw"] if not args.profile.endswith(".svg") else [])])
            time.sleep(1)
        chunk = b"abcd" * (args.size // 4) + b"x" * (args.size % 4)
        path = mnt / "log"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        write = os.write
        cpu0 = _cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for _ in range(args.writes):
            write(fd, chunk)
        elapsed = time.perf_counter() - t0
        cpu = _cpu_seconds(proc.pid) - cpu0
        os.fsync(fd)
        os.close(fd)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        size = os.stat(path).st_size
        assert size == args.writes * len(chunk), (size, args.writes * len(chunk))
        with open(path, "rb") as f:
            assert f.read(len(chunk) * 1000) == chunk * min(1000, args.writes)
        print(f"{args.writes} writes of {len(chunk)} bytes with O_APPEND: {elapsed:.1f} s, "
              f"{args.writes / elapsed:,.0f} writes/s; mount process CPU {cpu / args.writes * 1e6:.0f} us per write "
              f"(load average {os.getloadavg()[0]:.1f})")
        return 0
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=120)
        if proc is not None:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        if spy is not None and spy.poll() is None:
            spy.kill()
        shutil.rmtree(root, ignore_errors=True)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (what the mount spends, whatever else runs on the machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    raise SystemExit(main())
