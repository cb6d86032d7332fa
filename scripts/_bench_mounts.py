"""The filesystems that ``scripts/bench`` compares: how to create, mount, unmount and clean up each one.

Every FUSE filesystem runs in the FOREGROUND as a child of the benchmark (its own session, so a Ctrl-C on the
terminal reaches only the benchmark, which then unmounts everything in order). That gives one process per mount
whose peak resident memory (``VmHWM``) can be read just before it is unmounted, and a process to wait for: an
unmount is complete only when the process has exited (anysyncfs commits staged writes on the way out; a remount
before that would find the space locked).

"Cold" (see ``Mount.make_cold``): unmount, drop the filesystem's OWN cache when it keeps one on disk (rclone's VFS
cache, JuiceFS's block cache; anysyncfs and gocryptfs keep none beyond the kernel's), remount, then ``sync`` and
drop the kernel's page, dentry and inode caches. tmpfs cannot be remounted without losing its content, and its
pages ARE the data, so its "cold" is the same as warm: it is the ceiling, not a peer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

READY_TIMEOUT = 60.0  # seconds for a mount to appear (anysyncfs derives its key with the real scrypt cost)
EXIT_TIMEOUT = 120.0  # seconds for a mount process to finish after its unmount (anysyncfs commits staged writes)
UPLOAD_TIMEOUT = 600.0  # seconds for rclone to drain its upload queue before a remount


class BenchError(RuntimeError):
    """A filesystem could not be set up, mounted or unmounted; the benchmark reports it and goes on."""


def run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120.0,
        input_text: str | None = None) -> str:
    """Run a setup command; its output is returned, a failure raises BenchError with its stderr."""
    try:
        done = subprocess.run(cmd, env=env, input=input_text, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{' '.join(cmd[:3])}…: no answer in {timeout:.0f} s") from e
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:3])}… failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def drop_caches() -> None:
    """Write back every dirty page, then drop the page cache, dentries and inodes (needs root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def lazy_unmount(mnt: Path) -> None:
    """Last resort for a mount that would not unmount cleanly (or whose process died)."""
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _hwm_kib(pid: int) -> int:
    """Peak resident set of one process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """The process and every process below it (a mount helper may fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class Mount:
    """One filesystem instance: created fresh in ``work`` for each run, mounted at ``work/mnt``."""

    name = "?"
    has_process = True  # tmpfs has no mount process (and so no RSS)

    def __init__(self, work: Path, tools: dict[str, str]) -> None:
        self.work = work
        self.tools = tools
        self.mnt = work / "mnt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0
        self.log_path = work / f"{self.name}.log"

    # -- to be provided by each filesystem
    def create(self) -> None:
        """Make the (empty) filesystem; not timed."""

    def command(self) -> list[str]:
        """The foreground mount command."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def settle(self) -> None:
        """Wait for work the filesystem still does in the background after the last write returned."""

    def drop_own_cache(self) -> None:
        """Between unmount and remount: remove the filesystem's own on-disk cache."""

    def version(self) -> str:
        raise NotImplementedError

    # -- shared lifecycle
    def setup(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.create()
        self.mount()

    def mount(self) -> float:
        """Start the mount; returns the seconds until the mount point answered."""
        start = time.perf_counter()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), env=self.env(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = start + READY_TIMEOUT
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} mount exited with {self.proc.returncode}: {self.log_tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name} mount not ready after {READY_TIMEOUT:.0f} s: {self.log_tail()}")
            time.sleep(0.02)
        return time.perf_counter() - start

    def unmount_command(self) -> list[str]:
        return ["fusermount3", "-u", str(self.mnt)]

    def unmount(self) -> float:
        """Clean unmount; returns the seconds until the mount process had exited."""
        if self.proc is None:
            return 0.0
        self.record_rss()
        start = time.perf_counter()
        proc, self.proc = self.proc, None
        try:
            done = subprocess.run(self.unmount_command(), capture_output=True, text=True, timeout=EXIT_TIMEOUT)
            if done.returncode != 0 and os.path.ismount(self.mnt):
                raise BenchError(f"{self.name}: unmount failed: {done.stderr.strip()}")
            proc.wait(timeout=EXIT_TIMEOUT)
        except (subprocess.TimeoutExpired, BenchError):
            self.kill(proc)
            raise
        return time.perf_counter() - start

    def kill(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        """Force: lazy unmount and kill the mount process (only this one, by its pid)."""
        proc = proc or self.proc
        self.proc = None
        lazy_unmount(self.mnt)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def make_cold(self) -> float:
        """Unmount, drop the filesystem's own cache, remount, drop the kernel's caches; returns the seconds the
        unmount + mount took (not part of any measured workload)."""
        self.settle()
        took = self.unmount()
        self.drop_own_cache()
        took += self.mount()
        drop_caches()
        return took

    def record_rss(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            hwm = sum(_hwm_kib(p) for p in _descendants(self.proc.pid))
            self.peak_rss_kib = max(self.peak_rss_kib, hwm)

    def teardown(self) -> None:
        """Unmount (forcing it if needed) and delete everything this instance made."""
        try:
            if self.proc is not None:
                self.unmount()
        except Exception:  # noqa: BLE001 - teardown must go on: force it below
            pass
        finally:
            if self.proc is not None or os.path.ismount(self.mnt):
                self.kill()
            shutil.rmtree(self.work, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-600:]
        except OSError:
            return ""


class Tmpfs(Mount):
    """The ceiling: the kernel's in-memory filesystem."""

    name = "tmpfs"
    has_process = False

    def __init__(self, work: Path, tools: dict[str, str], size_bytes: int) -> None:
        super().__init__(work, tools)
        self.size_bytes = size_bytes
        self.mounted = False

    def mount(self) -> float:
        start = time.perf_counter()
        run(["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes},mode=0755", "tmpfs", str(self.mnt)])
        self.mounted = True
        return time.perf_counter() - start

    def unmount(self) -> float:
        if self.mounted:
            run(["umount", str(self.mnt)])
            self.mounted = False
        return 0.0

    def make_cold(self) -> float:
        drop_caches()  # the data stays: tmpfs pages are the data itself
        return 0.0

    def kill(self, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.mounted = False
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, timeout=30)

    def teardown(self) -> None:
        if self.mounted or os.path.ismount(self.mnt):
            self.kill()
        shutil.rmtree(self.work, ignore_errors=True)

    def version(self) -> str:
        return "kernel " + os.uname().release


class Anysyncfs(Mount):
    """The project: a fresh home and space per instance, mounted with ``anysyncfs mount -f``."""

    name = "anysyncfs"
    passphrase = "benchmark passphrase"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ANYSYNCFS_PASSPHRASE"] = self.passphrase
        env.pop("ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N", None)  # the real key derivation, as a user has it
        return env

    def create(self) -> None:
        home = str(self.work / "home")
        run([self.tools["anysyncfs"], "--home", home, "init", "--device-name", "bench"], env=self.env())
        run([self.tools["anysyncfs"], "--home", home, "space", "create", "bench"], env=self.env())

    def command(self) -> list[str]:
        return [self.tools["anysyncfs"], "--home", str(self.work / "home"), "mount", "-f", "bench", str(self.mnt)]

    def unmount_command(self) -> list[str]:
        return [self.tools["anysyncfs"], "--home", str(self.work / "home"), "unmount", str(self.mnt)]

    def version(self) -> str:
        out = subprocess.run([self.tools["python"], "-c",
                              "import importlib.metadata as m; print(m.version('anysyncfs'))"],
                             capture_output=True, text=True, timeout=60)
        rev = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short",
                              "HEAD"], capture_output=True, text=True, timeout=30)
        return f"{out.stdout.strip() or '?'} (git {rev.stdout.strip() or '?'}, working tree)"


class Gocryptfs(Mount):
    """gocryptfs with its default settings (AES-256-GCM, scrypt logN 16), cipher dir on the local disk."""

    name = "gocryptfs"

    def create(self) -> None:
        (self.work / "cipher").mkdir()
        (self.work / "pass").write_text("benchmark passphrase\n")
        run([self.tools["gocryptfs"], "-init", "-q", "-passfile", str(self.work / "pass"), str(self.work / "cipher")])

    def command(self) -> list[str]:
        return [self.tools["gocryptfs"], "-f", "-q", "-passfile", str(self.work / "pass"), str(self.work / "cipher"),
                str(self.mnt)]

    def version(self) -> str:
        return run([self.tools["gocryptfs"], "-version"]).split(";")[0].strip()


class Rclone(Mount):
    """rclone crypt over an alias remote of a local directory, ``--vfs-cache-mode full``.

    Its fsync reaches only the VFS cache file: the upload to the crypt remote happens afterwards, in the background
    (``--vfs-write-back``, default 5 s). ``settle`` waits (via the rc API on a loopback port) until nothing is queued
    or uploading, so that no upload runs during a later measurement and no data is lost when the cache is dropped.
    """

    name = "rclone"

    def create(self) -> None:
        (self.work / "backing").mkdir()
        password = run([self.tools["rclone"], "obscure", "benchmark passphrase"]).strip()
        salt = run([self.tools["rclone"], "obscure", "benchmark salt"]).strip()
        (self.work / "rclone.conf").write_text(
            f"[base]\ntype = alias\nremote = {self.work / 'backing'}\n\n"
            f"[sec]\ntype = crypt\nremote = base:\npassword = {password}\npassword2 = {salt}\n")
        with socket.socket() as s:  # a free loopback port for the rc API
            s.bind(("127.0.0.1", 0))
            self.rc_port = s.getsockname()[1]

    def command(self) -> list[str]:
        return [self.tools["rclone"], "--config", str(self.work / "rclone.conf"), "mount", "sec:", str(self.mnt),
                "--vfs-cache-mode", "full", "--cache-dir", str(self.work / "cache"),
                "--rc", "--rc-addr", f"127.0.0.1:{self.rc_port}", "--rc-no-auth"]

    def settle(self) -> None:
        deadline = time.monotonic() + UPLOAD_TIMEOUT
        while True:
            out = run([self.tools["rclone"], "rc", "--url", f"http://127.0.0.1:{self.rc_port}/", "vfs/stats"])
            disk = json.loads(out).get("diskCache", {})
            if disk.get("uploadsInProgress", 0) == 0 and disk.get("uploadsQueued", 0) == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"rclone still uploading after {UPLOAD_TIMEOUT:.0f} s: {disk}")
            time.sleep(0.2)

    def drop_own_cache(self) -> None:
        shutil.rmtree(self.work / "cache", ignore_errors=True)

    def version(self) -> str:
        return run([self.tools["rclone"], "version"]).splitlines()[0].strip()


class Juicefs(Mount):
    """JuiceFS: SQLite metadata, a local directory as its object store, blocks encrypted with an RSA-wrapped
    AES-256-GCM key (so that, like every peer, nothing is stored in the clear); default cache settings."""

    name = "juicefs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["JFS_NO_CHECK_OBJECT_STORAGE"] = "1"
        return env

    def meta(self) -> str:
        return f"sqlite3://{self.work / 'meta.db'}"

    def create(self) -> None:
        key = self.work / "key.pem"
        run(["openssl", "genrsa", "-out", str(key), "2048"])
        run([self.tools["juicefs"], "format", "--storage", "file", "--bucket", f"{self.work / 'bucket'}/",
             "--encrypt-rsa-key", str(key), "--trash-days", "0", "--no-update", self.meta(), "bench"],
            env=self.env())

    def command(self) -> list[str]:
        return [self.tools["juicefs"], "mount", "--no-usage-report", "--no-syslog", "--cache-dir",
                str(self.work / "cache"), self.meta(), str(self.mnt)]

    def drop_own_cache(self) -> None:
        shutil.rmtree(self.work / "cache", ignore_errors=True)

    def version(self) -> str:
        return run([self.tools["juicefs"], "version"]).strip()


ALL = ("anysyncfs", "gocryptfs", "rclone", "juicefs", "tmpfs")
PEERS = ("gocryptfs", "rclone", "juicefs")
