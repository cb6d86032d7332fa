"""Level 4: the crash soak of issue 18 item 2, short — a few kill -9 of the mount while an untar, a SQLite workload
(WAL/FULL and DELETE/EXTRA) and an fsync'd append log run at once; after each kill fsck passes, the remount holds
every fsync-confirmed byte and every confirmed SQLite commit, and integrity_check is ok. The long run (100 kills)
is ``scripts/crash_soak``, on the same code (tests/fuse/crash_soak.py)."""

from __future__ import annotations

import os
from pathlib import Path

from .crash_soak import Soak

KILLS = int(os.environ.get("ANYSYNCFS_CRASH_SOAK_KILLS", "3"))


def test_crash_soak_short(tmp_path: Path, template_home: Path) -> None:
    lines: list[str] = []
    soak = Soak(tmp_path, template_home, seed=18, kills_per_home=KILLS, say=lines.append)
    totals = soak.run(KILLS)
    print("\n".join(lines))
    assert not totals.failures, "\n".join(totals.failures + lines)
    assert totals.kills == KILLS
    assert totals.fscks == KILLS + 1  # after each kill, and after the last clean unmount
    assert totals.bytes_lost == 0
    assert totals.log_bytes_confirmed > 0 and totals.sqlite_commits_confirmed > 0
