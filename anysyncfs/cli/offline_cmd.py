"""``pin``, ``unpin`` and ``evict``: offline control of paths inside a mounted space.

They work through the mount, with extended attributes (see :mod:`anysyncfs.fs.vfs_xattr`), so they need no
passphrase and act on whatever mount serves the path:

* ``pin PATH…`` sets ``user.anysync.pinned`` to ``1``, then reads through the mount every byte of every file at
  or below PATH that is not all here yet, so that the mount fetches what is missing (a progress bar on a
  terminal). Pinned content is never evicted; later files in a pinned folder, and new versions of pinned files,
  are fetched by the mount in the background.
* ``unpin PATH…`` sets it to ``0``: PATH and every pinned node below it are unpinned (the content stays until
  the cache needs the space).
* ``evict PATH…`` sets ``user.anysync.evict`` to ``1``: the mount deletes the local blob files of PATH (every file
  below a folder) that a provider has confirmed storing and that nothing pinned or open uses, and the command says
  how much it freed and how much it kept because no provider has it yet.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import AnysyncError, Incomplete, NetworkError, PermissionDenied, UsageError
from .progress import Progress, ProgressBars

if TYPE_CHECKING:
    from .context import Context

STATE = "user.anysync.state"
PINNED = "user.anysync.pinned"
EVICT = "user.anysync.evict"
LOCAL_BYTES = "user.anysync.local_bytes"
UNSYNCED_BYTES = "user.anysync.unsynced_bytes"
HERE_STATES = (b"pinned", b"local")  # every blob of the file is on this device
READERS = 4  # files (or pieces of one) read at once: fetches of different blobs overlap
PIECE = 16 << 20  # a large file is read in pieces of this size, side by side
READ_SIZE = 1 << 20
PROGRESS_EVERY_S = 0.2


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                space_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("pin", help="keep files (folders: everything in them) on this device, fetching them now")
    s.add_argument("paths", nargs="+", metavar="PATH", help="a file or folder inside a mounted space")
    s.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    s.set_defaults(func=cmd_pin)

    s = sub.add_parser("unpin", help="stop keeping files (folders: everything in them) on this device")
    s.add_argument("paths", nargs="+", metavar="PATH", help="a file or folder inside a mounted space")
    s.set_defaults(func=cmd_unpin)

    s = sub.add_parser("evict", help="free the space files (folders: everything in them) use on this device now")
    s.add_argument("paths", nargs="+", metavar="PATH", help="a file or folder inside a mounted space")
    s.set_defaults(func=cmd_evict)


# ---------------------------------------------------------------------------------------------- helpers
def human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _check_mounted(path: str) -> None:
    """UsageError unless ``path`` exists inside an anysyncfs mount (outside its .anysync folder) and is not a
    symbolic link: any member can turn a path of the space into a link to a file of this device, so these commands
    never follow one (every xattr call and open below is no-follow)."""
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise UsageError(f"{path} is a symbolic link: pin, unpin and evict act on the files and folders of a "
                             f"space, never through a link (give the path it points to)")
        os.getxattr(path, PINNED, follow_symlinks=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file or directory") from None
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise UsageError(f"{path} is not a file or folder of a mounted space") from None
        raise UsageError(f"{path}: {e.strerror}") from None


def _set(path: str, name: str, value: bytes, what: str) -> None:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise PermissionDenied(f"cannot {what} {path}: the space is mounted read-only (-o ro)") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(f"cannot {what} {path}: {e.strerror} (the kernel lets only a user who may write "
                                   f"a file or folder change its attributes: try a folder above it)") from None
        raise AnysyncError(f"cannot {what} {path}: {e.strerror}") from None


def _get(path: str, name: str) -> bytes:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as e:
        raise AnysyncError(f"{path}: {e.strerror}") from None


def _files(top: str) -> Iterator[tuple[str, int]]:
    """(path, size) of the regular files at or below ``top`` (symlinks not followed; the .anysync folder, whose
    nodes have no offline attributes, skipped)."""
    st = os.lstat(top)
    if stat.S_ISREG(st.st_mode):
        yield top, st.st_size
        return
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if _is_space_dir(os.path.join(dirpath, d)))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # removed meanwhile
            if stat.S_ISREG(st.st_mode):
                yield path, st.st_size


def _is_space_dir(path: str) -> bool:
    if os.path.islink(path):
        return False
    try:
        os.getxattr(path, PINNED, follow_symlinks=False)
    except OSError:
        return False  # the .anysync folder (or something that is not part of the space)
    return True


# ---------------------------------------------------------------------------------------------- pin
@dataclass
class PinReport:
    files: int = 0
    total: int = 0  # bytes of the pinned files
    to_read: int = 0  # bytes of the files that were not all here
    done: int = 0  # bytes read so far
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n


def cmd_pin(ctx: Context) -> int:
    paths = [os.path.abspath(p) for p in ctx.args.paths]
    for path in paths:
        _check_mounted(path)
    for path in paths:
        _set(path, PINNED, b"1", "pin")
    failures = 0
    for path in paths:
        with ProgressBars(enabled=False if ctx.args.no_progress else None, byte_counts={"pin"}) as bars:
            report = pin_contents(path, progress=bars if bars.enabled else None)
        failures += len(report.failed)
        for bad, reason in sorted(report.failed.items()):
            print(f"anysyncfs: {bad}: {reason}", file=sys.stderr)
        print(f"pinned {path}: {report.files} files, {human(report.total)} ({human(report.done)} read to fetch "
              f"what was missing)")
    if failures:
        raise NetworkError(f"{failures} files could not be fetched now (is a provider reachable?); they stay "
                           f"pinned and the mount fetches them when it can")
    return 0


def pin_contents(path: str, *, progress: Progress | None = None, readers: int = READERS) -> PinReport:
    """Read through the mount every file at or below ``path`` that is not all here (so the mount fetches it),
    ``readers`` pieces at a time; afterwards every file read must show the state ``pinned``."""
    report = PinReport()
    pieces: list[tuple[str, int, int]] = []
    todo: list[str] = []
    for file_path, size in _files(path):
        report.files += 1
        report.total += size
        try:
            state = os.getxattr(file_path, STATE, follow_symlinks=False)
        except OSError as e:
            report.failed[file_path] = e.strerror or str(e)
            continue
        if state in HERE_STATES:
            continue
        todo.append(file_path)
        report.to_read += size
        pieces.extend((file_path, start, min(PIECE, size - start)) for start in range(0, max(size, 1), PIECE))
    if pieces:
        with ThreadPoolExecutor(max_workers=readers) as pool:
            futures = [pool.submit(_read_piece, p, start, length, report) for p, start, length in pieces]
            if progress is not None:
                while not all(f.done() for f in futures):
                    progress("pin", report.done, report.to_read)
                    time.sleep(PROGRESS_EVERY_S)
                progress("pin", report.done, report.to_read)
            for f in futures:
                f.result()
    for file_path in todo:
        if file_path in report.failed:
            continue
        try:
            state = os.getxattr(file_path, STATE, follow_symlinks=False)
        except OSError as e:
            report.failed[file_path] = e.strerror or str(e)
            continue
        if state not in HERE_STATES and state != b"conflict":
            report.failed[file_path] = f"still {state.decode(errors='replace')} after reading it"
    return report


def _read_piece(path: str, start: int, length: int, report: PinReport) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        with report.lock:
            report.failed.setdefault(path, e.strerror or str(e))
        return
    try:
        # Drop what the kernel caches of the range: the reads must reach the mount, which fetches missing blobs.
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
        offset, end = start, start + length
        while offset < end:
            data = os.pread(fd, min(READ_SIZE, end - offset), offset)
            if not data:
                break  # the file shrank meanwhile
            offset += len(data)
            report.add(len(data))
    except OSError as e:
        with report.lock:
            report.failed.setdefault(path, e.strerror or str(e))
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- unpin, evict
def cmd_unpin(ctx: Context) -> int:
    paths = [os.path.abspath(p) for p in ctx.args.paths]
    for path in paths:
        _check_mounted(path)
    still: list[str] = []
    for path in paths:
        _set(path, PINNED, b"0", "unpin")
        if _get(path, PINNED) == b"1":
            print(f"{path} stays pinned: a folder above it is pinned (unpin that folder)")
            still.append(path)
        else:
            print(f"unpinned {path}")
    if still:
        raise Incomplete(f"{len(still)} of {len(paths)} paths stay pinned through a pinned folder above them")
    return 0


def cmd_evict(ctx: Context) -> int:
    paths = [os.path.abspath(p) for p in ctx.args.paths]
    for path in paths:
        _check_mounted(path)
    for path in paths:
        before = int(_get(path, LOCAL_BYTES))
        _set(path, EVICT, b"1", "evict")
        after = int(_get(path, LOCAL_BYTES))
        unsynced = int(_get(path, UNSYNCED_BYTES))
        line = f"evicted {path}: freed {human(max(before - after, 0))}"
        if after:
            line += f"; kept {human(after)} here"
            reasons = []
            if unsynced:
                reasons.append(f"{human(unsynced)} not on a provider yet")
            if _get(path, PINNED) == b"1":
                reasons.append("pinned")
            if reasons:
                line += f" ({', '.join(reasons)})"
        print(line)
    return 0
