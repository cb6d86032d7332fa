"""What ``anysyncfs unmount`` and the lock probes of other commands need of a mount, without its machinery.

A mount process holds ``<home>/locks/<space>.lock`` (``fcntl.flock``, JSON inside: the mountpoint, read-only or
not) for as long as it serves; :mod:`anysyncfs.fs.mount` takes it. This module only reads it, and unmounts: it
imports nothing but the standard library, so ``anysyncfs unmount`` starts in a few tens of milliseconds instead of
the ~0.4 s that importing the Vfs, pyfuse3, trio and SQLAlchemy takes (half of a remount, measured).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
from pathlib import Path

from .errors import AnysyncError, NotFound, UsageError

LOCKS_DIR = "locks"  # <home>/locks/<space>.lock: held by the mount of that space
RUN_DIR = "run"  # <home>/run/<space>.status.json: the sync status a mount or `watch` publishes
UNMOUNT_TIMEOUT = 120.0


class MountFailed(AnysyncError):
    """The mount could not be set up (busy mountpoint, already mounted, FUSE refused...)."""

    exit_code = 1


def mount_table() -> dict[str, str]:
    """Mounted paths -> file system type, from /proc/self/mounts (octal escapes decoded)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            path = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1])
            out[path] = parts[2]
    return out


def lock_record(mountpoint: Path, read_only: bool) -> bytes:
    """What the holder of a mount lock writes into it."""
    return json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint), "read_only": read_only}).encode() + b"\n"


def read_lock(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops our probe lock
    return False


def find_holder(home_root: Path, mountpoint: Path) -> Path | None:
    """The lock file of the mount serving ``mountpoint`` from this home, if any."""
    d = home_root / LOCKS_DIR
    if not d.is_dir():
        return None
    for path in sorted(d.glob("*.lock")):
        info = read_lock(path)
        if info and info.get("mountpoint") == str(mountpoint) and lock_held(path):
            return path
    return None


# ---------------------------------------------------------------------------------------------- unmount
def unmount(mountpoint: Path, home_root: Path | None, *, lazy: bool = False, timeout: float = UNMOUNT_TIMEOUT) -> None:
    """Unmount (the kernel then releases every file, the Vfs commits) and wait until the mount process is done."""
    mp = Path(os.path.abspath(mountpoint))
    table = mount_table()
    if str(mp) not in table:
        raise NotFound(f"{mp} is not mounted")
    if not table[str(mp)].startswith("fuse"):
        raise UsageError(f"{mp} is not a FUSE mount ({table[str(mp)]})")
    holder = find_holder(home_root, mp) if home_root is not None else None
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mp)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        if os.geteuid() != 0:
            raise MountFailed("fusermount3 is not installed (package fuse3)") from None
        done = subprocess.run(["umount", *(["-l"] if lazy else []), str(mp)], capture_output=True, text=True,
                              check=False)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        if "busy" in reason.lower():
            reason += " (close the files open there, or use --lazy)"
        raise MountFailed(f"cannot unmount {mp}: {reason}")
    if holder is None:
        return
    deadline = time.monotonic() + timeout
    while lock_held(holder):  # the mount process commits staged writes, then drops the lock and exits
        if time.monotonic() > deadline:
            raise MountFailed(f"unmounted {mp}, but its process is still committing after {timeout:.0f} s")
        time.sleep(0.05)

