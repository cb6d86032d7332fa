"""Mount fixtures: a home with an identity and a space (made with the CLI), mounted with ``anysyncfs mount -f``.

Every fixture ALWAYS unmounts (``fusermount3 -u``, then ``-uz``) and kills the mount process in ``finally``, so
a failing test leaves no mount and no process behind. The mount's stderr goes to a log file; a WARNING, ERROR or
traceback in it fails the test at teardown unless the test declared it with :meth:`Mount.expect_log`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.conftest import CLI, PASSPHRASE, TEST_LOG2N

REPO = Path(__file__).resolve().parents[2]
FUSERMOUNT = shutil.which("fusermount3")
MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0
# Before each test's own options (the last value of an option wins): a test mount accepts no device sessions and
# sends no mDNS, so tests use only loopback and two mounts of a test meet only through the peers it gives them.
TEST_MOUNT_OPTS = ("-o", "listen=off,discovery=off")
BAD_LOG = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")


def fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this environment)"
    if FUSERMOUNT is None:
        return "fusermount3 is not installed (package fuse3)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e.strerror}"
    return None


def make_env(home: Path) -> dict[str, str]:
    """The environment of tests/conftest.py's cli_env, for a given home (usable at any fixture scope)."""
    env = dict(os.environ)
    env["ANYSYNCFS_PASSPHRASE"] = PASSPHRASE.decode()
    env["ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N"] = str(TEST_LOG2N)
    env["ANYSYNCFS_HOME"] = str(home)
    env["ANYSYNCFS_CONFIG"] = str(home.parent / "config.toml")  # never the user's own config.toml
    env.pop("ANYSYNCFS_DEBUG", None)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def is_mounted(path: Path) -> bool:
    """In the mount table (also true for a dead FUSE mount, where os.path.ismount fails)."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[1]) == target:
                return True
    return False


class Mount:
    """One home + space + mountpoint under ``root``, and the mount process serving it."""

    def __init__(self, root: Path, space: str = "test") -> None:
        self.root = root
        self.home = root / "home"
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.space = space
        self.env = make_env(self.home)
        self.proc: subprocess.Popen[bytes] | None = None
        self.bg_pids: list[int] = []  # background mounts (anysyncfs mount without -f)
        self.log_path = root / "mount.log"
        self.expected: list[re.Pattern[str]] = []
        self.mount_args: list[str] = []

    # ------------------------------------------------------------------------------------------ CLI
    def cli(self, *args: str, check: bool = True, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        p = subprocess.run([*CLI, *args], input=input, env=self.env, capture_output=True, timeout=timeout, cwd=REPO)
        if check and p.returncode != 0:
            raise AssertionError(f"anysyncfs {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}")
        return p

    def create(self, template: Path | None = None) -> Mount:
        """An identity and a space made with the CLI, or a copy of a home made that way (same IDs, much faster)."""
        if template is not None:
            shutil.copytree(template, self.home)
        else:
            self.cli("init", "--device-name", "fusetest")
            self.cli("space", "create", self.space)
        return self

    # ------------------------------------------------------------------------------------------ lifecycle
    def mount(self, *extra: str) -> None:
        """``anysyncfs mount SPACE MNT -f`` in a subprocess; returns once the mount answers."""
        assert self.proc is None or self.proc.poll() is not None, "already mounted"
        self.mount_args = list(extra)
        with open(self.log_path, "ab") as log:
            log.write(f"---- mount {' '.join(extra)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*CLI, "mount", self.space, str(self.mountpoint), "-f", *TEST_MOUNT_OPTS, *extra],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not mounted after {MOUNT_TIMEOUT} s:\n{self.log_text()}")
            time.sleep(0.02)

    def mount_background(self, *extra: str) -> subprocess.CompletedProcess[bytes]:
        """``anysyncfs mount SPACE MNT`` (daemonizing); remembers the server's pid for cleanup."""
        p = self.cli("mount", self.space, str(self.mountpoint), *extra, check=False)
        for lock in (self.home / "locks").glob("*.lock"):
            text = lock.read_text()
            if text.strip():
                self.bg_pids.append(int(json.loads(text)["pid"]))
        return p

    def wait_exit(self, timeout: float = EXIT_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mount process still running {timeout} s after unmount:\n{self.log_text()}") from None

    def unmount(self) -> None:
        """``fusermount3 -u`` and wait until the process has committed and exited (status 0)."""
        assert FUSERMOUNT is not None
        subprocess.run([FUSERMOUNT, "-u", str(self.mountpoint)], check=True, capture_output=True, timeout=30)
        code = self.wait_exit()
        assert code == 0, f"mount process exited {code}:\n{self.log_text()}"
        assert not is_mounted(self.mountpoint)

    def remount(self, *extra: str) -> None:
        self.unmount()
        self.mount(*(extra or self.mount_args))

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> None:
        """Whatever state we are in: unmount (normal, then lazy) and end the process. Never raises."""
        if FUSERMOUNT is not None and is_mounted(self.mountpoint):
            subprocess.run([FUSERMOUNT, "-u", str(self.mountpoint)], capture_output=True, timeout=30)
            if self.proc is not None:
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            if is_mounted(self.mountpoint):
                subprocess.run([FUSERMOUNT, "-uz", str(self.mountpoint)], capture_output=True, timeout=30)
        terminate(self.proc)
        for pid in self.bg_pids:
            _kill_pid(pid)
        if FUSERMOUNT is not None and is_mounted(self.mountpoint):
            subprocess.run([FUSERMOUNT, "-uz", str(self.mountpoint)], capture_output=True, timeout=30)

    # ------------------------------------------------------------------------------------------ logs
    def log_text(self) -> str:
        """The foreground mount's stderr plus the log files of background mounts."""
        parts = []
        for path in [self.log_path, *sorted((self.home / "logs").glob("*.log"))]:
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def expect_log(self, pattern: str) -> None:
        """Declare a WARNING/ERROR line this test provokes on purpose (a regex searched in the line)."""
        self.expected.append(re.compile(pattern))

    def log_problems(self) -> list[str]:
        bad = []
        for line in self.log_text().splitlines():
            if BAD_LOG.search(line) and not any(p.search(line) for p in self.expected):
                bad.append(line)
        return bad

    def path(self, *parts: str) -> Path:
        return self.mountpoint.joinpath(*parts)


def mount_helper_inputs(m: Mount, tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """What mount(8), fstab and the mount helper get in place of the test's environment: a wrapper script that runs
    this checkout's CLI, a passphrase file, and the environment without the passphrase and home variables (they
    must come from the ``-o`` options)."""
    wrapper = tmp_path / "anysyncfs-bin"
    wrapper.write_text(f"#!/bin/sh\nexec {' '.join(CLI)} \"$@\"\n")
    wrapper.chmod(0o755)
    passfile = tmp_path / "pass"
    passfile.write_text(m.env["ANYSYNCFS_PASSPHRASE"] + "\n")
    env = {k: v for k, v in m.env.items() if k not in ("ANYSYNCFS_PASSPHRASE", "ANYSYNCFS_HOME")}
    return wrapper, passfile, env


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """End a child process we started, if it still runs: SIGTERM, then SIGKILL after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def pid_alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _kill_pid(pid: int) -> None:
    """End a background mount process we started (SIGTERM, then SIGKILL)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.05)


def _check_fuse() -> None:
    reason = fuse_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def template_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with an identity and the space "test", made once per session with the CLI (copied per test)."""
    _check_fuse()
    m = Mount(tmp_path_factory.mktemp("template")).create()
    return m.home


def assert_clean_log(m: Mount) -> None:
    """A test fails on any warning, error or traceback in its mount log that it did not declare."""
    problems = m.log_problems()
    assert not problems, "unexpected warnings/errors in the mount log:\n" + "\n".join(problems)


@pytest.fixture
def fuse_space(tmp_path: Path, template_home: Path) -> Iterator[Mount]:
    """A home with an identity and a space, NOT mounted yet (for tests of the mount command itself)."""
    m = Mount(tmp_path).create(template_home)
    try:
        yield m
    finally:
        m.stop()
    assert_clean_log(m)


@pytest.fixture
def mounted(fuse_space: Mount) -> Mount:
    """A fresh space mounted in the foreground; unmounted (and checked) by fuse_space's teardown."""
    fuse_space.mount()
    return fuse_space


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory: pytest.TempPathFactory, template_home: Path) -> Iterator[Mount]:
    """One mount for a whole test module (each test works in its own directory: see ``workdir``)."""
    _check_fuse()
    m = Mount(tmp_path_factory.mktemp("fuse")).create(template_home)
    try:
        m.mount()
        yield m
    finally:
        m.stop()
    assert_clean_log(m)


@pytest.fixture
def workdir(shared_mount: Mount, request: pytest.FixtureRequest) -> Path:
    """A fresh directory inside the shared mount, named after the test."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:200]
    d = shared_mount.mountpoint / name
    d.mkdir()
    return d


# ---------------------------------------------------------------------------------------------- sync (level 7)
NODE_START_TIMEOUT = 30.0
NODE_STOP_TIMEOUT = 15.0


class SyncNode:
    """``anysyncfs node serve`` in a subprocess on a fixed port; stopped with SIGTERM, always killed in cleanup.

    Its stderr goes to ``<root>/node.log``; like a mount log, a WARNING, ERROR or traceback in it that was not
    declared with :meth:`expect_log` fails the test at teardown."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.env = make_env(root / "unused-home")  # the node needs no identity: only PYTHONPATH etc. matter
        self.log_path = root / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.expected: list[re.Pattern[str]] = []

    def start(self) -> str:
        """Start serving and return the address line the node prints (the same on every restart)."""
        import select

        assert self.proc is None or self.proc.poll() is not None, "node already running"
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(b"---- node start\n")
            log.flush()
            self.proc = subprocess.Popen(
                [*CLI, "node", "serve", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=REPO,
            )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        line = b""
        deadline = time.monotonic() + NODE_START_TIMEOUT
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node printed no address in {NODE_START_TIMEOUT} s:\n{self.log_text()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"node exited ({self.proc.wait(5)}):\n{self.log_text()}")
                line += chunk
        address = line.decode().strip()
        assert address.startswith("anysync://dv-") and address.endswith(f"@127.0.0.1:{self.port}"), address
        assert not self.address or address == self.address, "the node's address changed across a restart"
        self.address = address
        return address

    def stop(self) -> None:
        """SIGTERM and wait for a clean exit (status 0)."""
        assert self.proc is not None and self.proc.poll() is None, "node not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(NODE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"node still running {NODE_STOP_TIMEOUT} s after SIGTERM:\n{self.log_text()}") from None
        assert code == 0, f"node exited {code}:\n{self.log_text()}"
        self._close_pipe()

    def kill(self) -> None:
        """Whatever state it is in: end the process (SIGTERM, then SIGKILL). Never raises."""
        terminate(self.proc)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def expect_log(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def log_problems(self) -> list[str]:
        return [line for line in self.log_text().splitlines()
                if BAD_LOG.search(line) and not any(p.search(line) for p in self.expected)]


def init_device(m: Mount, name: str, phrase: str | None = None) -> str:
    """``anysyncfs init`` in ``m``'s home (``--restore`` from ``phrase`` if given); returns the recovery phrase."""
    if phrase is not None:
        m.cli("init", "--restore", "--device-name", name, input=phrase.encode() + b"\n")
        return phrase
    out = m.cli("init", "--device-name", name).stdout.decode().splitlines()
    at = next(i for i, line in enumerate(out) if line.startswith("Your recovery phrase"))
    phrase = out[at + 1].strip()
    assert len(phrase.split()) == 24, "init did not print a 24-word phrase"
    return phrase


# ---------------------------------------------------------------------------------------------- shared by levels 7-9
CONVERGE_TIMEOUT = 60.0
POLL_S = 0.1
_T = TypeVar("_T")


def eventually(probe: Callable[[], _T | None], what: str, timeout: float = CONVERGE_TIMEOUT) -> _T:
    """Poll ``probe`` until it returns something other than None/False (file errors count as "not yet")."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = probe()
            if got is not None and got is not False:
                return got
            last = got
        except OSError as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout} s: {what} (last probe: {last!r})")
        time.sleep(POLL_S)


def write_synced(path: Path, data: bytes) -> None:
    """Write a whole file and fsync it (so the mount has committed it when this returns)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def blob_bytes(m: Mount) -> int:
    """Bytes of content blobs this device holds (the mount's home): blob files, not their outboards (``….ob``)
    nor partial blobs being fetched (``partial/``)."""
    return sum(p.stat().st_size for p in (m.home / "blobs").glob("[0-9a-f][0-9a-f]/*")
               if p.is_file() and not p.name.endswith(".ob"))


@contextlib.contextmanager
def cluster_cleanup(node: SyncNode, *mounts: Mount) -> Iterator[None]:
    """Around a multi-process fixture: always stop every mount and the node (even when setup or a test failed),
    then fail on any undeclared warning or error in their logs."""
    try:
        yield
    finally:
        for m in mounts:
            m.stop()
        node.kill()
    for m in mounts:
        assert_clean_log(m)
    problems = node.log_problems()
    assert not problems, "unexpected warnings/errors in the node log:\n" + "\n".join(problems)
