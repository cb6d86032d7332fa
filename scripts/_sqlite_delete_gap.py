"""SQLite's DELETE-mode gap on a file system that dies (docs/reliability.md, "Crash soak"): shown on purpose.

    .venv/bin/python scripts/_sqlite_delete_gap.py [--runs 10] [--own-dirsync]

A SQLite workload (journal_mode=DELETE, synchronous=EXTRA) commits transactions in a mount and prints each whose
COMMIT returned. It runs under strace, which delays the return of every unlink (the journal's deletion, the
commit) by 300 ms, and the mount's batch never commits on its own (batch_interval of an hour), so a kill of the
mount lands between the unlink and SQLite's fsync of the directory most of the time. SQLite's open of the
directory then fails (ENOTCONN) and it returns SQLITE_OK all the same (os_unix.c, unixDelete): the COMMIT returns,
and after the remount the hot journal rolls that transaction back. With --own-dirsync the workload confirms a
transaction only after its own fsync of the directory (what tests/fuse/crash_soak.py does): nothing confirmed is
lost. Needs strace and FUSE. Prints one line per kill and "lost N of RUNS".
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORKLOAD = r'''
import os, random, sqlite3, sys
def body(i):
    r = random.Random(i)
    return r.randbytes(r.choice([10, 300, 1500, 4000, 12000]))
d, own = sys.argv[1], sys.argv[2] == "own"
os.makedirs(d, exist_ok=True)
c = sqlite3.connect(os.path.join(d, "del.db"), isolation_level=None, timeout=60)
c.execute("PRAGMA journal_mode=delete")
c.execute("PRAGMA synchronous=EXTRA")
c.execute("CREATE TABLE IF NOT EXISTS rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
c.execute("CREATE TABLE IF NOT EXISTS meta (k INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
row = c.execute("SELECT n FROM meta WHERE k = 0").fetchone()
n = row[0] if row else -1
print("ready", flush=True)
while True:
    i = n + 1
    c.execute("BEGIN IMMEDIATE")
    c.execute("INSERT INTO rows VALUES (?, ?)", (i, body(i)))
    c.execute("DELETE FROM rows WHERE id = ?", (i - 20,))
    c.execute("INSERT OR REPLACE INTO meta VALUES (0, ?)", (i,))
    c.execute("COMMIT")
    if own:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
    n = i
    print("del", i, flush=True)
'''
OPTS = ("-o", "batch_interval=3600000,commit_interval=3600")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--own-dirsync", action="store_true")
    args = ap.parse_args()
    from tests.fuse.conftest import Mount
    from tests.fuse.crash_soak import SoakFailure, check_db, sqlite_confirmed

    root = Path(tempfile.mkdtemp(prefix="anysyncfs-sqlite-gap-"))
    m = Mount(root / "m").create()
    rnd = random.Random(2)
    confirmed, lost = -1, 0
    try:
        m.mount(*OPTS)
        for r in range(args.runs):
            out = root / f"out{r}"
            with open(out, "wb") as f:
                p = subprocess.Popen(["strace", "-f", "-o", "/dev/null", "-e", "trace=unlink",
                                      "-e", "inject=unlink:delay_exit=300000", sys.executable, "-c", WORKLOAD,
                                      str(m.path("db")), "own" if args.own_dirsync else "sqlite"],
                                     stdout=f, stderr=subprocess.STDOUT)
            while "ready" not in out.read_text():
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.3, 1.5))
            m.signal(signal.SIGKILL)
            m.wait_exit()
            p.wait(20)
            m.stop()
            confirmed = max(confirmed, sqlite_confirmed(out)["del"])
            m.mount(*OPTS)
            try:
                n = check_db(m.path("db", "del.db"), confirmed)
                print(f"kill {r + 1}: ok, {n} (confirmed {confirmed})", flush=True)
            except SoakFailure as e:
                lost += 1
                n = confirmed - 1
                print(f"kill {r + 1}: {e}", flush=True)
            confirmed = n
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"lost {lost} of {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
