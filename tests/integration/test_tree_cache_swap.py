"""Issue 10 item 8a: cached tree rows are bound to their node and to the heads by a keyed stamp.

Before, each row was sealed with only the space and the row kind as associated data: an older sealed row of the
same node, copied back into store.db after later commits, opened fine and the CLI (or the mount) showed the old
content under the current heads. These tests make that swap with sqlite3 and run the CLI as a subprocess.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from tests.conftest import CLI


def run(env: dict[str, str], *args: str, input: bytes | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run([*CLI, *args], input=input, env=env, capture_output=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr.decode()
    return p


def rows(db_path: Path) -> dict[bytes, bytes]:
    with sqlite3.connect(db_path) as db:
        return {node: state for node, state in db.execute("SELECT node, state FROM nodes WHERE state IS NOT NULL")}


def set_row(db_path: Path, node: bytes, state: bytes) -> None:
    db = sqlite3.connect(db_path)
    db.execute("UPDATE nodes SET state = ? WHERE node = ?", (state, node))
    db.commit()
    db.close()


def test_an_older_row_swapped_in_is_never_shown(cli_env: dict[str, str]) -> None:
    db = Path(cli_env["ANYSYNCFS_HOME"]) / "store.db"
    run(cli_env, "init", "--device-name", "laptop")
    run(cli_env, "space", "create", "s")
    run(cli_env, "put", "s", "/a.txt", input=b"old content")
    before = rows(db)
    run(cli_env, "put", "s", "/a.txt", input=b"new content, written later")
    after = rows(db)
    changed = [n for n in after if before.get(n) not in (None, after[n])]
    assert changed, "the later write changed no cached row"
    for node in changed:
        set_row(db, node, before[node])  # the attack: yesterday's valid row, today's heads

    p = run(cli_env, "cat", "s", "/a.txt")
    assert p.stdout == b"new content, written later"
    assert b"cached tree does not match its keyed stamp" in p.stderr and b"refolding" in p.stderr
    run(cli_env, "fsck")  # the cat refolded and stored a good cache
    assert run(cli_env, "cat", "s", "/a.txt").stderr == b""

    for node in changed:  # again; fsck (read-only) names the problem and --repair fixes it
        set_row(db, node, before[node])
    p = run(cli_env, "fsck", check=False)
    assert p.returncode == 12 and b"keyed stamp" in p.stdout, p.stdout
    assert b"rebuilt" in run(cli_env, "fsck", "--repair").stdout
    run(cli_env, "fsck")


def test_a_row_moved_to_another_node_is_never_shown(cli_env: dict[str, str]) -> None:
    db = Path(cli_env["ANYSYNCFS_HOME"]) / "store.db"
    run(cli_env, "init", "--device-name", "laptop")
    run(cli_env, "space", "create", "s")
    run(cli_env, "put", "s", "/a.txt", input=b"content of a")
    nodes_before = set(rows(db))
    run(cli_env, "put", "s", "/b.txt", input=b"content of b")
    current = rows(db)
    (b_node,) = set(current) - nodes_before
    a_node = next(n for n in nodes_before if n != bytes(16))
    set_row(db, a_node, current[b_node])  # a's row now holds b's sealed record
    p = run(cli_env, "cat", "s", "/a.txt")
    assert p.stdout == b"content of a"
    assert b"refolding" in p.stderr
