"""Issue 10 item 8b: the store and the folders of a home are private to their owner (store.db and its -wal/-shm
0600, folders 0700), for new homes and for homes an older version made with the umask's modes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.conftest import CLI


def run(env: dict[str, str], *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run([*CLI, *args], input=input, env=env, capture_output=True, timeout=120,
                       preexec_fn=lambda: os.umask(0o022))  # the usual umask, which gave 0644 and 0755 before
    assert p.returncode == 0, p.stderr.decode()
    return p


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_new_home_is_private(cli_env: dict[str, str]) -> None:
    home = Path(cli_env["ANYSYNCFS_HOME"])
    run(cli_env, "init", "--device-name", "laptop")
    run(cli_env, "space", "create", "docs")
    run(cli_env, "put", "docs", "/a.txt", input=b"hello")
    assert mode(home) == 0o700
    assert mode(home / "store.db") == 0o600
    assert mode(home / "master.keys") == 0o600
    assert mode(home / "blobs") == 0o700
    for sub in (home / "blobs").iterdir():
        assert mode(sub) == 0o700


def test_older_home_is_narrowed_on_open(cli_env: dict[str, str]) -> None:
    home = Path(cli_env["ANYSYNCFS_HOME"])
    run(cli_env, "init", "--device-name", "laptop")
    run(cli_env, "space", "create", "docs")
    (home / "staging" / "sp-x").mkdir(parents=True)
    wide = [home, home / "blobs", home / "staging", home / "staging" / "sp-x"]
    for d in wide:
        os.chmod(d, 0o755)
    os.chmod(home / "store.db", 0o644)
    run(cli_env, "ls", "docs", "/")
    assert mode(home) == 0o700
    assert mode(home / "blobs") == 0o700
    assert mode(home / "staging") == 0o700
    assert mode(home / "store.db") == 0o600
