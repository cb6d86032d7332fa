"""Small durable-file helpers: atomic replacement and bounded reads.

``atomic_write`` never leaves a half-written file under the final name: the data goes to a temporary file in the
same directory (same file system, so the rename is atomic), is fsynced, renamed over the target, and the
directory is fsynced so the rename itself survives a crash. Any failure removes the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import NotFound, StoreError

TEMP_PREFIX = ".tmp-"  # temporary files start with this (so directory scans can skip them)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

StrPath = str | os.PathLike[str]


def _store_error(action: str, path: StrPath, err: OSError) -> StoreError:
    if err.errno in _DISK_FULL:
        return StoreError(f"disk full while {action} {os.fspath(path)}")
    return StoreError(f"cannot {action} {os.fspath(path)}: {err.strerror or err}")


def _fsync(path: StrPath, *, directory: bool) -> None:
    what = " directory" if directory else ""
    try:
        fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    except OSError as e:
        raise _store_error(f"open{what}", path, e) from None
    try:
        os.fsync(fd)
    except OSError as e:
        raise _store_error(f"fsync{what}", path, e) from None
    finally:
        os.close(fd)


def fsync_dir(path: StrPath) -> None:
    """Make a directory's entries (a new name, a rename) durable."""
    _fsync(path, directory=True)


def atomic_write(
    path: StrPath, data: bytes | bytearray | memoryview, mode: int = 0o600, *, durable: bool = True
) -> None:
    """Durably replace ``path`` with ``data`` (file mode ``mode``); :class:`StoreError` on failure, with the
    message "disk full ..." when the disk or quota is full. The old file, if any, stays intact on failure.
    ``durable=False`` skips both fsyncs: the caller makes the file durable later (:func:`fsync_paths`), before
    anything that needs it is committed."""
    target = Path(path)
    directory = target.parent
    temp = directory / f"{TEMP_PREFIX}{target.name}-{secrets.token_hex(8)}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as e:
        raise _store_error("create", temp, e) from None
    try:
        try:
            view = memoryview(data).cast("B")
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
            os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except OSError as e:
        _remove_quietly(temp)
        raise _store_error("write", target, e) from None
    except BaseException:
        _remove_quietly(temp)
        raise
    if durable:
        fsync_dir(directory)


def fsync_paths(paths: Sequence[Path], *, also: Sequence[Path] = (), threads: int = 8) -> None:
    """fsync many files, then their directories once each: what :func:`atomic_write` with ``durable=False``
    left undone, and the directories ``also`` (after those). The calls run in parallel (the file system's journal
    then commits many of them at once)."""
    if not paths:
        return
    directories = sorted({p.parent for p in paths})
    if len(paths) == 1:
        _fsync(paths[0], directory=False)
        fsync_dir(directories[0])
    else:
        pool = io_pool(threads)
        for _ in pool.map(lambda p: _fsync(p, directory=False), paths):
            pass
        for _ in pool.map(fsync_dir, directories):
            pass
    for d in also:
        fsync_dir(d)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def io_pool(threads: int = 8) -> ThreadPoolExecutor:
    """Threads for parallel file writes and fsyncs; one pool per size for the life of the process (starting
    threads for every batch costs more than the I/O of a small one)."""
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fsync")
    return pool


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: StrPath) -> Path:
    """Make ``path`` a directory only its owner can enter: each missing component is created 0700 (``mkdir
    parents=True`` would create the parents with the umask's mode, typically 0755), and an existing directory we
    own whose mode lets group or others in is narrowed to 0700 (installs made by older versions)."""
    target = Path(path)
    missing: list[Path] = []
    at = target
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for component in reversed(missing):
        try:
            os.mkdir(component, PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile by another process
        except OSError as e:
            raise _store_error("create directory", component, e) from None
    tighten(target, PRIVATE_DIR_MODE)
    return target


def tighten(path: StrPath, mode: int) -> None:
    """Narrow the mode of ``path`` (a file or directory we own; symlinks are left alone) to ``mode`` if it grants
    more; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & ~mode == 0:
        return
    try:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    except OSError as e:
        raise _store_error("restrict the mode of", path, e) from None


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def read_bounded(path: StrPath, max_size: int) -> bytes:
    """The whole file, refusing (:class:`StoreError`) one larger than ``max_size``; :class:`NotFound` if absent."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_size:
                raise StoreError(f"{os.fspath(path)} is {size} bytes, more than the limit of {max_size}")
            data = f.read(min(size, max_size) + 1)  # +1: the file may have grown since fstat
    except FileNotFoundError:
        raise NotFound(f"{os.fspath(path)} does not exist") from None
    except OSError as e:
        raise _store_error("read", path, e) from None
    if len(data) > max_size:
        raise StoreError(f"{os.fspath(path)} is larger than the limit of {max_size}")
    return data
