"""Run mount(8) and ``mount -o remount`` against scripts/mount.fuse.anysyncfs installed as /sbin/mount.fuse.anysyncfs,
without touching the machine's /sbin: started by tests/fuse/test_2_posix_gaps.py under ``unshare -m`` (a private
mount namespace), it mounts a tmpfs over /usr/sbin (/sbin on a merged-/usr system) holding only the helper.

    unshare -m --propagation private python tests/fuse/_mount8.py SPACE MOUNTPOINT HOME PASSFILE ANYSYNCFS_BIN OPTS

Prints one JSON object: the mount's options after each step, the errors of the writes tried, and the mount
process's pid. Always unmounts (inside the namespace) before it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HELPER = Path(__file__).resolve().parents[2] / "scripts" / "mount.fuse.anysyncfs"


def options(mnt: str) -> list[str]:
    out = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", mnt], capture_output=True, text=True).stdout
    return out.strip().split(",")


def try_write(path: Path) -> str:
    try:
        path.write_bytes(b"x")
        return "ok"
    except OSError as e:
        return os.strerror(e.errno or 0)


def main() -> int:
    space, mnt, home, passfile, exe, extra = sys.argv[1:7]
    sbin = os.path.realpath("/sbin")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", sbin], check=True)
    os.symlink(HELPER, os.path.join(sbin, "mount.fuse.anysyncfs"))
    env = {k: v for k, v in os.environ.items() if k not in ("ANYSYNCFS_PASSPHRASE", "ANYSYNCFS_HOME")}
    env["ANYSYNCFS_BIN"] = exe  # what `mount -o remount` (no home=, no anysyncfs= option) finds the command by
    report: dict[str, object] = {}
    try:
        opts = f"home={home},passphrase_file={passfile},{extra}"
        p = subprocess.run(["mount", "-t", "fuse.anysyncfs", space, mnt, "-o", opts], env=env,
                           capture_output=True, text=True, timeout=120)
        report["mount"] = [p.returncode, p.stderr.strip()]
        lock = next((q for q in Path(home, "locks").glob("*.lock") if q.read_text().strip()), None)
        report["pid"] = json.loads(lock.read_text())["pid"] if lock else None
        report["source"] = subprocess.run(["findmnt", "-n", "-o", "SOURCE", mnt], capture_output=True,
                                          text=True).stdout.strip()
        report["after_mount"] = options(mnt)
        steps = [("ro", "remount,ro"), ("rw", "remount,rw")]
        for name, opt in steps:
            p = subprocess.run(["mount", "-o", opt, mnt], env=env, capture_output=True, text=True, timeout=60)
            report[f"remount_{name}"] = [p.returncode, p.stderr.strip()]
            report[f"after_{name}"] = options(mnt)
            report[f"write_{name}"] = try_write(Path(mnt, f"written-{name}"))
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True, timeout=60)
        pid = report.get("pid")
        deadline = time.monotonic() + 60
        while isinstance(pid, int) and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
