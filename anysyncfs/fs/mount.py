"""Mount lifecycle: checks, the per-space lock, daemonizing, the trio main loop, periodic commits, clean shutdown.

``mount_space`` is what ``anysyncfs mount`` runs after the keyring is unlocked (the passphrase is read, and
checked, BEFORE forking, so a prompt and a wrong passphrase behave as in every other command):

1. the mountpoint is checked in the calling process (missing, not a directory, already a mount point, or a dead
   FUSE mount -> one-line error, nothing forked);
2. unless ``foreground``, the process forks; the child does everything else and reports "ready" or a one-line
   error with its exit code through a pipe, so ``anysyncfs mount`` returns only once the mount works (and fails
   with the same message and exit code as a foreground mount would);
3. the child resolves the space, takes ``<home>/locks/<space>.lock`` (``fcntl.flock``; a second mount of the same
   space from the same home fails with a clear error), opens the replica and the Vfs, and mounts;
4. the trio loop runs ``pyfuse3.main`` plus a periodic ``vfs.commit_all()`` (long writers), a watch for other
   processes' commits to the store (picked up, then the kernel's caches of what they changed are invalidated:
   ``Operations.invalidate_changed``) and a signal watcher:
   SIGTERM, SIGINT and SIGHUP commit every staged write, then unmount;
5. when the kernel ends the session (``fusermount3 -u``, ``anysyncfs unmount``) the loop returns and
   ``vfs.close()`` commits whatever is still staged before the process exits and the lock is released.

Permissions are checked by the kernel (``default_permissions``) with the caller's complete credentials, exactly as
for a local disk (supplementary groups, sticky directories, the chmod/chown/utimensat rules); the Vfs checks the
same rules again for its direct callers (see :mod:`.fuse` for the two cases pyfuse3 blurs). ``allow_other`` is on when
running as root (so the POSIX suites that switch uids can use the mount); other users add ``-o allow_other``
(which needs ``user_allow_other`` in /etc/fuse.conf). With ``default_permissions`` that is safe: other users get
what the modes allow them, nothing more.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import re
import signal
import stat
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from ..core import acl, ids
from ..errors import AnysyncError, BlobMissing, FsError, NotFound, StoreError, UsageError
from ..mounts import MountFailed, find_holder, lock_record, mount_table, read_lock
from ..net.device_server import ListenSpec, parse_listen
from ..replica.home import Unlocked, lock_path
from ..replica.replica import Replica, resolve_space
from ..store.files import private_dir
from . import readahead
from .memory import limit_malloc_arenas
from .fuse import CACHE_TIMEOUT, Operations
from .mount_options import OPTIONS, parse_size
from .mount_sync import run_sync
from .vfs import Vfs

log = logging.getLogger(__name__)

STAGING_DIR = "staging"
LOGS_DIR = "logs"
DEFAULT_COMMIT_INTERVAL = 5.0
DEFAULT_BATCH_INTERVAL = 0.2  # group commit: seconds the open batch may wait (see anysyncfs.fs.batch)
MAX_TASKS = 32  # concurrent pyfuse3 request tasks (they mostly wait for the Vfs lock in worker threads)
PICK_UP_S = 0.1  # how often the mount looks for other processes' commits (one indexed read of the heads)
COMMIT_RETRY_S = 0.5  # after a group commit the disk refused (full): the next try, not 5 ms later
MAX_COMMIT_FETCHES = 64  # blobs a periodic commit may fetch (base content of edited files) before giving up

# Options mount(8) and fstab hand to every helper; meaningless for us, accepted and dropped.
IGNORED_OPTIONS = {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "_netdev", "nofail",
                   "rw", "async", "loop"}
# Generic mount flags the kernel understands; passed through to the FUSE mount.
KERNEL_OPTIONS = {"suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime", "relatime",
                  "strictatime", "nodiratime", "sync", "dirsync"}


@dataclass
class MountOptions:
    read_only: bool = False
    foreground: bool = False
    cache_size: int | None = None  # bytes of local blobs above which unpinned, provider-confirmed ones are evicted
    allow_other: bool | None = None  # None: on when running as root
    commit_interval: float = DEFAULT_COMMIT_INTERVAL
    batch_interval: float = DEFAULT_BATCH_INTERVAL
    sync_interval: float = 30.0  # seconds between full reconciliations with each peer (new heads go at once)
    fetch_timeout: float = 30.0  # a read waits this long for a missing blob before EIO
    offline: bool = False  # no sync engine: no connections at all
    listen: ListenSpec | None = field(default_factory=lambda: parse_listen(None))  # None: accept no sessions
    discovery: bool = True  # announce and look for members on the LAN (mDNS)
    kernel: list[str] = field(default_factory=list)
    debug: bool = False
    first_sync_progress: Callable[[str, int, int], None] | None = None  # progress of the first sync (-f on a tty)
    list_virtual_xattrs: bool = False  # listxattr names the user.anysync.* attributes too
    cache_timeout: float = CACHE_TIMEOUT  # seconds the kernel may cache names and attributes (see fuse.py)

    def fuse_options(self, fsname: str = "anysyncfs") -> set[str]:
        """Options for pyfuse3.init. Large writes need none: libfuse 3 negotiates max_write = 1 MiB with the
        kernel by itself (measured: a 64 MiB ``dd bs=1M`` arrives as 64 write requests). ``fsname`` is the mount
        source /proc/mounts shows (the space's name: ``findmnt -S NAME``). libfuse mounts nosuid,nodev unless
        ``suid``/``dev`` are asked for (kept from ``self.kernel``; the kernel allows them to root only)."""
        opts = {f"fsname={fsname}", "subtype=anysyncfs", "default_permissions"}
        allow_other = self.allow_other if self.allow_other is not None else os.geteuid() == 0
        if allow_other:
            opts.add("allow_other")
        if self.read_only:
            opts.add("ro")
        opts.update(self.kernel)
        return opts


def parse_options(option_args: list[str], *, read_only: bool = False, foreground: bool = False) -> MountOptions:
    """``-o`` values (each may hold a comma-separated list) -> MountOptions; unknown options are an error."""
    opts = MountOptions(read_only=read_only, foreground=foreground)
    for arg in option_args:
        for item in filter(None, (s.strip() for s in arg.split(","))):
            key, eq, value = item.partition("=")
            option = OPTIONS.get(key)
            if option is not None:
                option.parse(opts, value if eq else None)
            elif key in KERNEL_OPTIONS and not value:
                opts.kernel.append(key)
            elif key in IGNORED_OPTIONS or key.startswith(("x-", "comment=")) or key == "comment":
                continue
            else:
                raise UsageError(f"unknown mount option {item!r} (`anysyncfs mount --help` lists them)")
    return opts


# ---------------------------------------------------------------------------------------------- mountpoints
def check_mountpoint(path: Path) -> Path:
    """An absolute mountpoint that exists, is a directory and has nothing mounted on it; else one-line errors."""
    mp = Path(os.path.abspath(path))
    try:
        st = os.stat(mp)
    except FileNotFoundError:
        raise NotFound(f"mountpoint {mp} does not exist") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountFailed(f"{mp} is a dead FUSE mount (its process ended): run `fusermount3 -u {mp}`") from None
        raise MountFailed(f"mountpoint {mp}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {mp} is not a directory")
    if os.path.ismount(mp) or str(mp) in mount_table():
        raise MountFailed(f"mountpoint {mp} is busy: something is already mounted there")
    return mp


# ---------------------------------------------------------------------------------------------- the lock
class MountLock:
    """``<home>/locks/<space>.lock`` held with flock for the life of the mount; records pid and mountpoint."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def acquire(cls, home_root: Path, space_id: bytes, mountpoint: Path, read_only: bool = False) -> MountLock:
        path = lock_path(home_root, space_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_lock(path)
            os.close(fd)
            where = f" at {holder['mountpoint']} (pid {holder['pid']})" if holder else ""
            raise MountFailed(f"space {ids.space_text(space_id)} is already mounted from this home{where}") from None
        os.ftruncate(fd, 0)
        os.write(fd, lock_record(mountpoint, read_only))
        return cls(path, fd)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = -1


# ---------------------------------------------------------------------------------------------- mount
def mount_space(unlocked: Unlocked, space: str, mountpoint: Path, opts: MountOptions) -> int:
    """Mount ``space`` (name or ID) at ``mountpoint``; returns when the mount is ready (or, with -f, unmounted)."""
    mp = check_mountpoint(mountpoint)
    if opts.foreground:
        return serve(unlocked, space, mp, opts, ready=None)
    return _fork_and_serve(unlocked, space, mp, opts)


def _fork_and_serve(unlocked: Unlocked, space: str, mp: Path, opts: MountOptions) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:  # the command: wait for "ready" or a one-line error, then return with the child's verdict
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            report = r.read()
        if report.startswith(b"ok"):
            note = report[2:].decode(errors="replace").strip()
            if note:
                print(f"anysyncfs: mounted read-only: {note}", file=sys.stderr)
            return 0
        if report:
            code_text, _, message = report.decode(errors="replace").partition(" ")
            err = MountFailed(message.strip())
            err.exit_code = int(code_text) if code_text.isdigit() else 1
            raise err
        _, status = os.waitpid(pid, 0)
        raise MountFailed(f"the mount process ended before the mount was ready (status {status})")
    # the child: detach from the terminal, serve until unmounted, never return into the CLI
    code = 70
    reporter = Reporter(wfd)
    try:
        os.close(rfd)
        os.setsid()
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)  # replaced by the log file once the space is known
        os.close(devnull)
        code = serve(unlocked, space, mp, opts, ready=reporter)
    except AnysyncError as e:
        reporter.send(f"{e.exit_code} {e}")
        code = e.exit_code
    except BaseException as e:  # noqa: BLE001 - the child must end here, whatever happened
        log.exception("mount process failed")
        reporter.send(f"70 internal error: {type(e).__name__}: {e}")
    finally:
        logging.shutdown()
        os._exit(code)


class Reporter:
    """The child's one message to the waiting command ("ok" or "<exit code> <message>"), sent at most once: after
    that the pipe fd is closed and its number may belong to another file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, text: str) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        try:
            os.write(fd, text.encode()[:4000])
        except OSError:
            pass  # the command went away: nobody is left to tell
        finally:
            os.close(fd)


def _log_to_file(path: Path, debug: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(fd, 2)  # libfuse and Python tracebacks land there too
    os.close(fd)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


class _QuietAbandonedReplies(logging.Filter):
    """pyfuse3 logs ERROR when a reply finds its request gone (ENOENT): the caller was interrupted, or the kernel
    dropped a pending RELEASE while unmounting. Both are normal, and the Vfs has done the work either way (a
    release never delivered is covered by ``vfs.close()``), so these become DEBUG lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and "failed with No such file or directory" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def serve(unlocked: Unlocked, space: str, mp: Path, opts: MountOptions, *, ready: Reporter | None) -> int:
    """Open the space, mount it, run until unmounted or signalled; ``ready`` tells a waiting command "ok"."""
    home = unlocked.home
    limit_malloc_arenas()  # before the FUSE, sealing and I/O threads start (see .memory)
    logging.getLogger("pyfuse3").addFilter(_QuietAbandonedReplies())
    store = home.store()
    space_id = resolve_space(store, space)
    name = ids.space_text(space_id)
    if ready is not None:
        _log_to_file(home.root / LOGS_DIR / f"mount-{name}.log", opts.debug)
    lock = MountLock.acquire(home.root, space_id, mp, read_only=opts.read_only)
    vfs: Vfs | None = None
    mounted = False
    code = 0
    try:
        replica = Replica(unlocked, store, home.blobs(), space_id)
        private_dir(home.root / STAGING_DIR)  # 0700 too, not the umask's mode mkdir(parents=True) would give it
        staging = private_dir(home.root / STAGING_DIR / name)
        why_ro = _why_read_only(replica)
        if why_ro and not opts.read_only:
            log.warning("mounting read-only: %s", why_ro)
        vfs = Vfs(replica, staging_dir=staging, read_only=opts.read_only, commit_interval=opts.commit_interval,
                  batch_interval=opts.batch_interval)
        ops = Operations(vfs, read_only=opts.read_only, cache_timeout=opts.cache_timeout)
        vfs.list_virtual_xattrs = opts.list_virtual_xattrs
        _fuse_init(ops, mp, opts.fuse_options(fsname=mount_source(replica.name, name)))
        mounted = True
        ops.read_ahead_device = readahead.mount_device(mp)
        log.info("mounted space %s (%s) at %s%s", name, replica.name, mp, " read-only" if opts.read_only else "")
        if ready is not None:
            ready.send(f"ok {why_ro}" if why_ro and not opts.read_only else "ok")
        trio.run(_main_loop, ops, opts, replica)
        log.debug("vfs calls: %s", ops.timing.report())
    finally:
        if mounted:
            try:
                pyfuse3.close(unmount=True)
            except Exception:  # noqa: BLE001 - still commit and release below
                log.exception("unmounting %s", mp)
        try:
            if vfs is not None:
                vfs.close()  # commits anything still staged
        except Exception:  # noqa: BLE001 - report it; the lock must still go
            log.exception("committing staged writes at unmount failed")
            code = 1
        finally:
            lock.release()
    log.info("unmounted %s", mp)
    return code


def _why_read_only(replica: Replica) -> str:
    """Why this identity may not write to the space ("" if it may)."""
    role = replica.role
    if role is None:
        return "you are not (or no longer) a member of this space"
    if role < acl.Role.WRITER:
        return "you are a reader in this space"
    return ""


def _fuse_init(ops: Operations, mp: Path, options: set[str]) -> None:
    """pyfuse3.init, turning libfuse's stderr message into a one-line error."""
    saved = os.dup(2)
    with tempfile.TemporaryFile() as err:
        os.dup2(err.fileno(), 2)
        try:
            pyfuse3.init(ops, str(mp), options)
        except RuntimeError as e:
            os.dup2(saved, 2)
            err.seek(0)
            lines = [ln.strip() for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
            reason = lines[-1] if lines else str(e)
            raise MountFailed(f"cannot mount at {mp}: {reason}") from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            err.seek(0)
            leftover = err.read().decode(errors="replace").strip()
            if leftover:
                log.debug("libfuse: %s", leftover)


async def _main_loop(ops: Operations, opts: MountOptions, replica: Replica) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, ops)
        nursery.start_soon(_commit_periodically, ops, opts.commit_interval)
        nursery.start_soon(_commit_batches, ops, opts.batch_interval)
        nursery.start_soon(_pick_up_commits, ops)
        if not opts.offline:
            nursery.start_soon(functools.partial(run_sync, ops, replica, opts.sync_interval, opts.fetch_timeout,
                                                 opts.cache_size, opts.first_sync_progress, listen=opts.listen,
                                                 discovery=opts.discovery))
        await pyfuse3.main(max_tasks=MAX_TASKS)
        nursery.cancel_scope.cancel()


async def _commit_all(ops: Operations, why: str) -> None:
    try:
        for _attempt in range(MAX_COMMIT_FETCHES):
            try:
                await ops.run_blocking("commit_all", ops.vfs.commit_all)
                return
            except BlobMissing as e:  # an edit of content this device lacks: fetch it, then commit
                if ops.fetcher is None:
                    raise
                await ops.fetcher(e.blob_id)
    except FsError as e:
        log.warning("%s commit failed: %s", why, os.strerror(e.errno))
    except Exception:  # noqa: BLE001 - the mount must stay up; the staged data stays staged
        log.exception("%s commit failed", why)


async def _commit_periodically(ops: Operations, interval: float) -> None:
    """Long writers: what files that stay open have staged is committed with the open batch every ``interval``
    (even while a file created in the batch is still open, which the batch timer waits for)."""
    while True:
        await trio.sleep(interval)
        await _commit_all(ops, "periodic")
        try:
            await ops.run_blocking("flush_batch", functools.partial(ops.vfs.flush_batch, force=True))
        except FsError as e:
            log.warning("periodic commit failed: %s", os.strerror(e.errno))
        except Exception:  # noqa: BLE001 - the mount must stay up; the batch stays open
            log.exception("periodic commit failed")
        await ops.invalidate_changed()


async def _pick_up_commits(ops: Operations) -> None:
    """Other processes of this device write the space's store too (``anysyncfs put``, ``sync``, share commands):
    their commits are loaded and the kernel's caches of what they changed invalidated within PICK_UP_S. Otherwise
    the mount would notice only at its own next commit, and a name they removed could be served from the kernel's
    cache for the whole cache timeout. A tick where nothing moved is one indexed read of the heads."""
    while True:
        await trio.sleep(PICK_UP_S)
        await ops.pick_up_commits()


async def _commit_batches(ops: Operations, interval: float) -> None:
    """Group commit: the open batch is committed once it is ``interval`` old or has been idle for a twentieth of
    that (:meth:`~.vfs_base.VfsCore.flush_due`); looked at every fortieth of the interval (5 ms by default), without
    a thread hop while there is nothing to do."""
    vfs = ops.vfs
    failing = ""  # the last failure logged: a disk that stays full is logged once, not at every retry
    while True:
        await trio.sleep(interval / 40)
        if not vfs.batch_due():
            continue
        try:
            # The slow part first, without the lock: write and fsync the batch's blob files (immutable).
            work = await ops.run_blocking("blobs_to_sync", vfs.blobs_to_sync)
            blob_ids = [blob_id for blob_id, _data in work]
            if work:
                await trio.to_thread.run_sync(_write_durably, vfs, work)
            await ops.run_blocking("flush_due", vfs.flush_due, blob_ids)
            failing = ""
        except (FsError, StoreError) as e:
            # The disk refused the batch (full; an I/O error): the batch stays open, retried in a while; the
            # writers meet the same error at their fsync or close, as ENOSPC or EIO.
            what = os.strerror(e.errno) if isinstance(e, FsError) else re.sub(r" /\S+", "", str(e))
            if what != failing:
                log.warning("group commit failed: %s", what)
                failing = what
            await trio.sleep(COMMIT_RETRY_S)
        except Exception:  # noqa: BLE001 - the mount must stay up; the batch stays open to be retried
            log.exception("group commit failed")


def _write_durably(vfs: Vfs, work: list[tuple[bytes, bytes | None]]) -> None:
    unwritten = [(blob_id, data) for blob_id, data in work if data is not None]
    if unwritten:
        vfs.replica.blobs.put_many(unwritten)
    vfs.replica.blobs.make_durable([blob_id for blob_id, _data in work])


async def _watch_signals(ops: Operations) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: committing staged writes and unmounting", signal.Signals(signum).name)
            await _commit_all(ops, "shutdown")
            pyfuse3.terminate()
            return


def mount_source(space_name: str, space_text: str) -> str:
    """The mount's source in /proc/mounts (``findmnt -S``): the space's name, as sshfs shows ``user@host:path``.
    pyfuse3 hands options to libfuse as ASCII, and libfuse splits them at commas: a name that is not printable
    ASCII without ``,`` and ``\\`` is shown as the space's ID (``sp-…``) instead."""
    if space_name and all(" " <= ch <= "~" and ch not in ",\\" for ch in space_name):
        return space_name
    return space_text


# ---------------------------------------------------------------------------------------------- remount
# mount(2) flags (linux/mount.h) and the statvfs f_flag bits that report them (ST_RELATIME differs).
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS, MS_REMOUNT = 1, 2, 4, 8, 16, 32
MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 128, 1024, 2048, 1 << 21, 1 << 24
_ST_TO_MS = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_SYNCHRONOUS, MS_SYNCHRONOUS), (os.ST_NOATIME, MS_NOATIME),
             (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
# option -> (flags it sets, flags it clears)
_REMOUNT_FLAGS = {
    "ro": (MS_RDONLY, 0), "rw": (0, MS_RDONLY), "suid": (0, MS_NOSUID), "nosuid": (MS_NOSUID, 0),
    "dev": (0, MS_NODEV), "nodev": (MS_NODEV, 0), "exec": (0, MS_NOEXEC), "noexec": (MS_NOEXEC, 0),
    "sync": (MS_SYNCHRONOUS, 0), "async": (0, MS_SYNCHRONOUS), "dirsync": (MS_DIRSYNC, 0),
    "atime": (0, MS_NOATIME), "noatime": (MS_NOATIME, MS_RELATIME | MS_STRICTATIME),
    "relatime": (MS_RELATIME, MS_NOATIME | MS_STRICTATIME), "strictatime": (MS_STRICTATIME, MS_NOATIME | MS_RELATIME),
    "nodiratime": (MS_NODIRATIME, 0), "diratime": (0, MS_NODIRATIME),
}


# What mount(8) adds to ``-o remount`` from /proc/self/mountinfo: FUSE's own mount options (fixed for the mount).
_FUSE_MOUNT_KEYS = {"user_id", "group_id", "default_permissions", "allow_other", "rootmode", "max_read", "blksize",
                    "fd"}


def _items(option_args: list[str]) -> list[str]:
    return [item for arg in option_args for item in filter(None, (s.strip() for s in arg.split(",")))]


def is_remount(option_args: list[str]) -> bool:
    return "remount" in _items(option_args)


def remount_flags(current_st_flags: int, option_args: list[str]) -> int:
    """The mount(2) flags of ``-o remount,...``: the mount's current flags (a remount sets every per-mount flag,
    so one not repeated would be cleared: nosuid,nodev must stay) changed by the options given, last one wins.
    FUSE's own options (from mountinfo) are passed over; our options are checked but apply at the next mount."""
    flags = MS_REMOUNT
    for st_bit, ms_bit in _ST_TO_MS:
        if current_st_flags & st_bit:
            flags |= ms_bit
    for item in _items(option_args):
        if item in _REMOUNT_FLAGS:
            sets, clears = _REMOUNT_FLAGS[item]
            flags = (flags & ~clears) | sets
        elif item != "remount" and item.partition("=")[0] not in _FUSE_MOUNT_KEYS:
            parse_options([item])  # an unknown option is an error here too
    return flags


def remount(mountpoint: Path, option_args: list[str], home_root: Path | None) -> None:
    """``mount -o remount,ro|rw,...`` of a running anysyncfs mount (what mount(8) runs through the helper).

    FUSE has no remount request: the kernel changes the superblock's and the mount's flags itself (it refuses ro
    with EBUSY while a file is open for writing) and the mount process is not told. Read-only then holds in the
    kernel, before any request reaches us; back to rw works, except for a mount made with ``-o ro`` (its Vfs
    refuses writes itself, so that is refused here). Only root may remount (fusermount3 has no remount)."""
    mp = Path(os.path.abspath(mountpoint))
    kind = mount_table().get(str(mp))
    if kind is None:
        raise NotFound(f"{mp} is not mounted")
    if kind != "fuse.anysyncfs":
        raise UsageError(f"{mp} is not an anysyncfs mount ({kind})")
    flags = remount_flags(os.statvfs(mp).f_flag, option_args)
    if not flags & MS_RDONLY and home_root is not None:
        holder = find_holder(home_root, mp)
        info = read_lock(holder) if holder is not None else None
        if info and info.get("read_only"):
            raise UsageError(f"{mp} was mounted with -o ro: unmount it and mount it again without ro to write")
    if os.geteuid() != 0:
        raise MountFailed("only root can remount (fusermount3 cannot): unmount and mount again with the options")
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, os.fsencode(mp), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        why = " (a file there is open for writing)" if err == errno.EBUSY else ""
        raise MountFailed(f"cannot remount {mp}: {os.strerror(err)}{why}")
