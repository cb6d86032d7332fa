"""Writing a file inside a mount without ever following a symbolic link.

A path inside a mounted space is shared with every member: any of them can turn a name into a symbolic link (a
synced Create), pointing anywhere on this device. A command that writes through such a path with ``open(path,
"wb")`` and ``chmod(path)`` would follow that link and overwrite, and change the mode of, a local file outside the
space. So the CLI never writes to a mounted path by name: it opens the mountpoint, walks each folder with
``openat(O_NOFOLLOW | O_DIRECTORY)``, opens the file itself with ``O_NOFOLLOW``, checks with ``fstat`` that every
step is on the mount's file system and that the file is a regular file, and then writes, truncates, fsyncs and
``fchmod``\\ s the open descriptor — so a link swapped in at any moment is refused, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import AnysyncError, UsageError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for writing would otherwise block until a reader comes; the fstat check refuses it.
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _what_is(dir_fd: int, name: str) -> str:
    """What ``name`` is now, for an error message (never follows it)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return "not reachable"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    return "a special file"


def write_in_mount(mountpoint: Path, rel: str, data: bytes, mode: int) -> None:
    """Replace the content of the regular file ``rel`` (``/a/b``) inside the mount at ``mountpoint`` with ``data``
    and set its permission bits to ``mode`` (creating it if missing). Refuses, with a one-line
    :class:`UsageError`, if any component of ``rel`` is now a symbolic link, the file is not a regular file, or a
    component lies on another file system; nothing outside the mount is opened for writing."""
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UsageError(f"{rel}: not a file path inside the space")
    shown = mountpoint
    try:
        dir_fd = os.open(mountpoint, _DIR_FLAGS)
    except OSError as e:
        raise AnysyncError(f"cannot open the mount at {mountpoint}: {e.strerror}") from None
    try:
        device = os.fstat(dir_fd).st_dev
        for name in parts[:-1]:
            shown = shown / name
            try:
                next_fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UsageError(f"refusing to revert {mountpoint / rel.lstrip('/')}: {shown} is now "
                                     f"{_what_is(dir_fd, name)}, not a folder (revert never follows links)") from None
                raise AnysyncError(f"cannot open {shown}: {e.strerror}") from None
            os.close(dir_fd)
            dir_fd = next_fd
            if os.fstat(dir_fd).st_dev != device:
                raise UsageError(f"refusing to revert through {shown}: another file system is mounted there")
        target = shown / parts[-1]
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, mode & 0o777, dir_fd=dir_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ETXTBSY):
                raise UsageError(f"refusing to revert {target}: it is now {_what_is(dir_fd, parts[-1])} "
                                 f"(revert never follows links; remove it, then run revert again)") from None
            raise AnysyncError(f"cannot open {target}: {e.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_dev != device:
            raise UsageError(f"refusing to revert {target}: it is not a regular file of the mounted space")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        os.fsync(fd)  # the running mount commits the new content now
    except OSError as e:
        raise AnysyncError(f"cannot write {target}: {e.strerror}") from None
    finally:
        os.close(fd)
