"""The crash soak (issue 18 item 2): kill -9 of the mount, again and again, while three workloads run at once.

Shared by ``scripts/crash_soak`` (100 kills) and ``tests/fuse/test_4_crash_soak.py`` (a few, in CI).

Each round, on the mount:

* an untar of a 60-file tarball (``tests/fuse/test_4_group_commit.py``'s) into a fresh directory ``u<round>``;
* an fsync'd append loop on a fresh file ``log<round>`` (that module's writer: it prints the length after every
  fsync that returned);
* a SQLite workload on two databases that live across rounds: ``db/wal.db`` in WAL mode with
  ``synchronous=FULL`` and ``db/del.db`` in rollback-journal (DELETE) mode with ``synchronous=EXTRA``. Those are
  the modes meant to make a commit that returned durable against a crash of the file system under it (a power
  loss, from SQLite's point of view): in WAL mode NORMAL does not sync the WAL at commit (a commit may roll back), and in
  DELETE mode FULL does not sync the directory after deleting the journal, which is the commit (the journal may
  come back and roll the transaction back). Transaction i inserts row i (a deterministic body of 10 B to 12 KiB),
  deletes row i - KEEP and sets ``meta.n = i``; the workload prints ``<db> i`` after each commit returned.

  SQLite's gap: in DELETE mode the commit is the unlink of the journal, and with EXTRA SQLite then opens the
  directory and fsyncs it — but when that open fails it returns SQLITE_OK (os_unix.c, ``unixDelete``: "rc =
  SQLITE_OK" when ``osOpenDirectory`` fails). A mount killed between the unlink and that open makes the open fail
  (ENOTCONN), COMMIT returns, and the journal, whose unlink never reached the store, comes back after the crash
  and rolls the transaction back. The first 100-kill run met this once (kill 37 of seed 20261205: one confirmed
  transaction of del.db missing). So the workload confirms a DELETE-mode transaction only after its own fsync
  of the directory has returned: that fsync fails on a dead mount, as the one SQLite skipped should have.
  ``scripts/_sqlite_delete_gap.py`` shows the gap on purpose.

After a random delay the mount process gets SIGKILL. Then: the workloads exit on their own (ENOTCONN; one that
hangs is a failure), the dead mount is cleaned up, ``anysyncfs fsck`` passes on what the kill left, the space is
mounted again, and

* the log holds every fsync-confirmed byte and is an exact prefix of its record stream;
* the untar left a prefix of the tarball: exactly its first k members exist, each complete (bytes and mode) but
  possibly the last, which may be a prefix of its bytes — SQLite's directory fsyncs (DELETE mode) commit every
  pending change of the space, files being written included, as a journaling file system's commit does, and so
  does the periodic commit of long writers in the rounds that run it;
* each database passes ``PRAGMA integrity_check``, holds every transaction whose commit returned (and at most the
  one in flight beyond), and exactly the rows its last transaction leaves, with their bytes;
* the mount log has no warning or error but the expected "staging files left by an earlier run".

Every ``kills_per_home`` rounds the soak starts again from a fresh copy of the template home (the space keeps
every version of every file, so one home for 100 rounds would make each fsck slower than the last).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import Mount
from .test_4_group_commit import WRITER, Member, confirmed_length, make_tarball, present, record_stream, source_tree

KEEP = 20  # rows each database keeps: transaction i deletes row i - KEEP
EXIT_TIMEOUT = 10.0  # for the workloads to exit once their mount is dead
EXPECTED_LOG = (r"WARNING .*staging files left by an earlier run",)

# The SQLite workload: argv = directory of the databases. Prints "ready", then "<db> <i>" after each commit.
SQLITE_WORKLOAD = r'''
import os, random, sqlite3, sys
KEEP = %d
def body(i):
    r = random.Random(i)
    return r.randbytes(r.choice([10, 300, 1500, 4000, 12000]))
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
dbs = []
for name, mode, sync in (("wal", "wal", "FULL"), ("del", "delete", "EXTRA")):
    c = sqlite3.connect(os.path.join(d, name + ".db"), isolation_level=None, timeout=60)
    got = c.execute("PRAGMA journal_mode=" + mode).fetchone()[0]
    assert got == mode, (name, got)
    c.execute("PRAGMA synchronous=" + sync)
    c.execute("PRAGMA wal_autocheckpoint=64")
    c.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    c.execute("CREATE TABLE IF NOT EXISTS meta (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
    row = c.execute("SELECT n FROM meta WHERE k = 0").fetchone()
    dbs.append([name, c, row[0] if row else -1])
print("ready", flush=True)
while True:
    for db in dbs:
        name, c, n = db
        i = n + 1
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO rows VALUES (?, ?)", (i, body(i)))
        c.execute("DELETE FROM rows WHERE id = ?", (i - KEEP,))
        c.execute("INSERT OR REPLACE INTO meta VALUES (0, ?)", (i,))
        c.execute("COMMIT")
        if name == "del":  # see "SQLite's gap" in the module's docstring
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
        db[2] = i
        print(name, i, flush=True)
''' % KEEP


def sqlite_body(i: int) -> bytes:
    """Row i's body (the same function as in SQLITE_WORKLOAD)."""
    r = random.Random(i)
    return r.randbytes(r.choice([10, 300, 1500, 4000, 12000]))


class SoakFailure(AssertionError):
    pass


@dataclass
class Totals:
    kills: int = 0
    fscks: int = 0
    checks: int = 0  # individual checks passed (fsck, log, untar, each database, mount log)
    log_bytes_confirmed: int = 0
    sqlite_commits_confirmed: int = 0
    untar_members: int = 0
    torn_last_member: int = 0  # rounds where the last member present was a (legal) prefix of its bytes
    hangs: int = 0
    bytes_lost: int = 0
    failures: list[str] = field(default_factory=list)


def _wait_ready(out: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while "ready" not in out.read_text(errors="replace"):
        if proc.poll() is not None:
            raise SoakFailure(f"workload exited {proc.returncode} before ready: {out.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SoakFailure(f"workload not ready within {timeout} s")
        time.sleep(0.01)


def sqlite_confirmed(out: Path) -> dict[str, int]:
    """The last confirmed transaction of each database in the workload's output (-1: none this round)."""
    got = {"wal": -1, "del": -1}
    for line in out.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in got and parts[1].isdigit():
            got[parts[0]] = int(parts[1])
    return got


def check_untar(root: Path, members: list[Member]) -> tuple[int, bool]:
    """(k, torn): exactly members[:k] exist, each complete, but the last one, which may hold a prefix of its bytes
    (torn = it does). Raises SoakFailure otherwise."""
    found = present(root) if root.exists() else {}
    k = 0
    while k < len(members) and members[k][0] in found:
        k += 1
    extra = sorted(set(found) - {m[0] for m in members[:k]})
    if extra:
        raise SoakFailure(f"untar: present beyond the prefix of {k} members: {extra[:5]}")
    torn = False
    for j, (name, is_dir, body, mode) in enumerate(members[:k]):
        p = found[name]
        if is_dir:
            if not p.is_dir():
                raise SoakFailure(f"untar: {name} is not a directory")
            continue
        data = p.read_bytes()
        last = j == k - 1
        if data != body:
            if last and body.startswith(data):
                torn = True
                continue
            raise SoakFailure(f"untar: {name}: {len(data)} bytes, want {len(body)} (torn or wrong, member "
                              f"{j + 1} of the {k} present)")
        if not last and p.lstat().st_mode & 0o7777 != mode:
            raise SoakFailure(f"untar: {name}: mode {oct(p.lstat().st_mode & 0o7777)}, want {oct(mode)}")
    return k, torn


def check_db(path: Path, confirmed: int) -> int:
    """integrity_check, every confirmed transaction there (at most one more), the rows the last one leaves."""
    if not path.exists():
        if confirmed >= 0:
            raise SoakFailure(f"{path.name}: missing, {confirmed + 1} transactions confirmed")
        return -1
    c = sqlite3.connect(str(path), isolation_level=None, timeout=60)
    try:
        result = [r[0] for r in c.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise SoakFailure(f"{path.name}: integrity_check: {result[:5]}")
        try:
            row = c.execute("SELECT n FROM meta WHERE k = 0").fetchone()
            rows = c.execute("SELECT id, body FROM rows ORDER BY id").fetchall()
        except sqlite3.OperationalError as e:  # the tables' creation itself may not have been committed
            if confirmed >= 0:
                raise SoakFailure(f"{path.name}: {e}, {confirmed + 1} transactions confirmed") from None
            return -1
        n = row[0] if row else -1
        if n < confirmed:
            raise SoakFailure(f"{path.name}: holds transactions up to {n}, {confirmed} was confirmed "
                              f"({confirmed - n} committed transactions lost)")
        if n > confirmed + 1:
            raise SoakFailure(f"{path.name}: holds transactions up to {n}, only {confirmed} confirmed")
        ids = [r[0] for r in rows]
        want = list(range(max(0, n - KEEP + 1), n + 1))
        if ids != want:
            raise SoakFailure(f"{path.name}: row ids {ids[:3]}..{ids[-3:]}, want {want[:3]}..{want[-3:]}")
        for i, body in rows:
            if body != sqlite_body(i):
                raise SoakFailure(f"{path.name}: row {i} has the wrong bytes")
        return n
    finally:
        c.close()


def _stop(proc: subprocess.Popen[bytes] | None) -> bool:
    """Wait for a workload to exit after the kill; kill it if it hangs. True if it exited on its own."""
    if proc is None:
        return True
    try:
        proc.wait(EXIT_TIMEOUT)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Soak:
    """Runs the rounds under ``root`` (a scratch directory) from copies of ``template`` (a home made by the CLI)."""

    def __init__(self, root: Path, template: Path, seed: int, kills_per_home: int = 10,
                 say: Callable[[str], None] = print) -> None:
        self.root = root
        self.template = template
        self.rnd = random.Random(seed)
        self.seed = seed
        self.kills_per_home = kills_per_home
        self.say = say
        self.totals = Totals()
        self.members = source_tree()
        self.tar_path = root / "tree.tar"
        make_tarball(self.tar_path, self.members)
        self.mount: Mount | None = None
        self.sqlite_prefix: list[str] = []  # e.g. ["strace", "-f", "-o", FILE]: run the SQLite workload under it
        self.db_confirmed: dict[str, int] = {}  # per database: the last transaction that must be there
        self.db_seen: dict[str, int] = {}  # per database: its last transaction at the previous check
        self._log_seen = 0

    def run(self, kills: int) -> Totals:
        try:
            for r in range(kills):
                if r % self.kills_per_home == 0:
                    self._new_home(r // self.kills_per_home)
                try:
                    self._round(r)
                except SoakFailure as e:
                    self.totals.failures.append(f"seed {self.seed}, kill {r + 1}: {e}")
                    self.say(f"FAILED seed {self.seed}, kill {r + 1}: {e}")
                    break
            else:
                if self.mount is not None:
                    self._finish_home()
        finally:
            if self.mount is not None:
                self.mount.stop()
        return self.totals

    # ------------------------------------------------------------------------------------------ homes
    def _new_home(self, index: int) -> None:
        if self.mount is not None:
            self._finish_home()
            self.mount.stop()
            shutil.rmtree(self.mount.root, ignore_errors=True)
        m = Mount(self.root / f"home{index}").create(self.template)
        for pattern in EXPECTED_LOG:
            m.expect_log(pattern)
        self.mount = m
        self.db_confirmed = {"wal": -1, "del": -1}
        self.db_seen = {"wal": -1, "del": -1}
        self._log_seen = 0
        m.mount(*self._options())

    def _finish_home(self) -> None:
        """A clean unmount and a last fsck at the end of a home's rounds."""
        m = self.mount
        assert m is not None
        m.unmount()
        self._fsck()
        self._check_log()

    def _options(self) -> tuple[str, ...]:
        batch = self.rnd.choice([10, 50, 200])
        # Mostly without the periodic commit of long writers (it commits a file still being written), sometimes
        # with a short one, so the kill also lands in the middle of a background commit.
        commit = self.rnd.choice(["3600", "3600", "0.2"])
        return ("-o", f"batch_interval={batch},commit_interval={commit}")

    def _fsck(self) -> None:
        assert self.mount is not None
        p = self.mount.cli("fsck", check=False, timeout=300)
        if p.returncode != 0:
            raise SoakFailure(f"fsck exited {p.returncode}: {(p.stdout + p.stderr).decode(errors='replace')[-3000:]}")
        self.totals.fscks += 1
        self.totals.checks += 1

    def _check_log(self) -> None:
        m = self.mount
        assert m is not None
        lines = m.log_text().splitlines()
        new, self._log_seen = lines[self._log_seen:], len(lines)
        bad = [line for line in new if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)
               and not any(p.search(line) for p in m.expected)]
        if bad:
            raise SoakFailure("unexpected lines in the mount log:\n" + "\n".join(bad[:20]))
        self.totals.checks += 1

    # ------------------------------------------------------------------------------------------ one round
    def _round(self, r: int) -> None:
        m = self.mount
        assert m is not None
        work = self.root / "work"
        work.mkdir(exist_ok=True)
        for old in m.mountpoint.iterdir():  # the previous round's tree and log were checked: drop them
            if old.name.startswith("u"):
                shutil.rmtree(old)
            elif old.name.startswith("log"):
                old.unlink()
        _fsync_dir(m.mountpoint)
        log = m.path(f"log{r}")
        tree = m.path(f"u{r}")
        tree.mkdir()
        log_out, db_out = work / f"log{r}.out", work / f"db{r}.out"
        delay = self.rnd.uniform(0.05, 2.5)
        procs: list[subprocess.Popen[bytes] | None] = [None, None, None]
        try:
            with open(log_out, "wb") as out:
                procs[0] = subprocess.Popen([sys.executable, "-c", WRITER, str(log)], stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.DEVNULL)
            with open(db_out, "wb") as out:
                procs[1] = subprocess.Popen([*self.sqlite_prefix, sys.executable, "-c", SQLITE_WORKLOAD,
                                             str(m.path("db"))],
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            _wait_ready(log_out, procs[0])
            _wait_ready(db_out, procs[1])
            procs[2] = subprocess.Popen(["tar", "-xf", str(self.tar_path), "-C", str(tree)],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
            time.sleep(delay)
            m.signal(signal.SIGKILL)
            m.wait_exit()
            self.totals.kills += 1
            hung = [name for name, p in zip(("append loop", "sqlite", "untar"), procs) if not _stop(p)]
            if hung:
                self.totals.hangs += len(hung)
                raise SoakFailure(f"{', '.join(hung)} hung on the dead mount")
        finally:
            for p in procs:
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait(10)
            m.stop()
        length = confirmed_length(log_out)
        dbs = sqlite_confirmed(db_out)
        for name, i in dbs.items():
            if i >= 0:
                self.db_confirmed[name] = i
        self._fsck()

        m.mount(*self._options())
        data = log.read_bytes() if log.exists() else b""
        if len(data) < length:
            self.totals.bytes_lost += length - len(data)
            raise SoakFailure(f"log: {length - len(data)} fsync-confirmed bytes lost (kill after {delay:.2f} s)")
        if data != record_stream(len(data))[: len(data)]:
            raise SoakFailure("log: not a prefix of its record stream")
        self.totals.checks += 1
        self.totals.log_bytes_confirmed += length
        k, torn = check_untar(tree / "t", self.members)
        self.totals.checks += 1
        self.totals.untar_members += k
        self.totals.torn_last_member += torn
        # The databases as the kill left them (a hot journal, a WAL), before the checks open them and recover:
        # with --keep, what a failure leaves to look at.
        evidence = work / "db-as-left"
        shutil.rmtree(evidence, ignore_errors=True)
        if m.path("db").is_dir():
            shutil.copytree(m.path("db"), evidence)
        got = {}
        for name in ("wal", "del"):
            got[name] = check_db(m.path("db", f"{name}.db"), self.db_confirmed[name])
            self.totals.checks += 1
            if dbs[name] >= 0:
                self.totals.sqlite_commits_confirmed += dbs[name] - self.db_seen[name]
            # What a remount shows was committed by the store: the next rounds must keep it too.
            self.db_seen[name] = self.db_confirmed[name] = max(self.db_confirmed[name], got[name])
        self._check_log()
        self.say(f"kill {r + 1}: after {delay:.2f} s; log {len(data)} B ({length} confirmed); untar {k}/"
                 f"{len(self.members)}{' (last torn)' if torn else ''}; sqlite wal {got['wal']} "
                 f"(confirmed {self.db_confirmed['wal']}), del {got['del']} (confirmed {self.db_confirmed['del']})")
