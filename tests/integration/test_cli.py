"""The CLI flows of the core issue, run as subprocesses exactly as a user or a script runs them."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI


def run(env: dict[str, str], *args: str, input: bytes | None = None, home: Path | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    argv = [*CLI, *(["--home", str(home)] if home else []), *args]
    p = subprocess.run(argv, input=input, env=env, capture_output=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} exited {p.returncode}: {p.stderr.decode()}")
    return p


def init(env: dict[str, str], home: Path | None = None) -> tuple[str, str]:
    out = run(env, "init", "--device-name", "laptop", home=home).stdout.decode().splitlines()
    phrase = out[1]
    account = next(line.split()[1] for line in out if line.startswith("account "))
    return phrase, account


def one_line_error(p: subprocess.CompletedProcess[bytes]) -> str:
    err = p.stderr.decode()
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith("anysyncfs: error: ")
    return err


def test_init_whoami_and_keyring_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    phrase, account = init(cli_env)
    assert len(phrase.split()) == 24
    assert account.startswith("ac-")
    who = run(cli_env, "whoami").stdout.decode()
    assert f"account {account}" in who
    assert "device  dv-" in who
    keyring = Path(cli_env["ANYSYNCFS_HOME"]) / "master.keys"
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    assert phrase.encode() not in keyring.read_bytes()
    p = run(cli_env, "init", check=False)
    assert p.returncode != 0
    one_line_error(p)


def test_wrong_passphrase_leaves_keyring_unchanged(cli_env: dict[str, str]) -> None:
    init(cli_env)
    keyring = Path(cli_env["ANYSYNCFS_HOME"]) / "master.keys"
    before = keyring.read_bytes()
    bad = dict(cli_env, ANYSYNCFS_PASSPHRASE="not the passphrase")
    for args in (["whoami"], ["space", "create", "x"], ["space", "list"]):
        p = run(bad, *args, check=False)
        assert p.returncode == 4, p.stderr
        assert "wrong passphrase" in one_line_error(p)
        assert keyring.read_bytes() == before


def test_passphrase_file_and_missing_passphrase(cli_env: dict[str, str], tmp_path: Path) -> None:
    init(cli_env)
    pf = tmp_path / "pass.txt"
    pf.write_text(cli_env["ANYSYNCFS_PASSPHRASE"] + "\n")
    env = dict(cli_env)
    del env["ANYSYNCFS_PASSPHRASE"]
    assert run(env, "--passphrase-file", str(pf), "whoami").returncode == 0
    p = run(env, "whoami", check=False)
    assert p.returncode == 2
    assert "no passphrase" in one_line_error(p)


def test_restore_on_fresh_home_gives_same_account(cli_env: dict[str, str], tmp_path: Path) -> None:
    phrase, account = init(cli_env)
    other = tmp_path / "desktop"
    p = run(cli_env, "init", "--restore", "--device-name", "desktop", input=phrase.encode() + b"\n", home=other)
    assert f"account {account}" in p.stdout.decode()
    assert phrase not in p.stdout.decode()  # a restore does not print the phrase again
    who_a = run(cli_env, "whoami").stdout.decode().splitlines()
    who_b = run(cli_env, "whoami", home=other).stdout.decode().splitlines()
    assert who_a[0] == who_b[0]  # same account
    assert who_a[1] != who_b[1]  # different device
    bad = " ".join(reversed(phrase.split()))
    p = run(cli_env, "init", "--restore", input=bad.encode(), home=tmp_path / "third", check=False)
    assert p.returncode != 0
    assert "invalid recovery phrase" in one_line_error(p)


def test_space_put_cat_ls_history_fsck(cli_env: dict[str, str], tmp_path: Path) -> None:
    _, account = init(cli_env)
    space = run(cli_env, "space", "create", "notes").stdout.decode().strip()
    assert space.startswith("sp-")
    listing = run(cli_env, "space", "list").stdout.decode()
    assert space in listing and "notes" in listing
    members = run(cli_env, "space", "members", space).stdout.decode()
    assert account in members and "owner" in members

    run(cli_env, "put", "notes", "/docs/hello.txt", input=b"first\n")
    big = os.urandom(3_000_000) + b"tail"
    run(cli_env, "put", "notes", "data/big.bin", input=big)
    run(cli_env, "put", "notes", "/docs/hello.txt", input=b"second\n")

    assert run(cli_env, "cat", "notes", "/docs/hello.txt").stdout == b"second\n"
    assert run(cli_env, "cat", space, "data/big.bin").stdout == big
    assert run(cli_env, "ls", "notes").stdout.decode().split() == ["data/", "docs/"]
    long = run(cli_env, "ls", "notes", "/docs", "-l").stdout.decode()
    assert "hello.txt" in long and "-rw-r--r--" in long

    hist = run(cli_env, "history", "notes", "/docs/hello.txt").stdout.decode().splitlines()
    assert len(hist) == 2
    assert "create hello.txt" in hist[0] and "write 6 bytes" in hist[0]
    assert "write 7 bytes" in hist[1]
    first_change = hist[0].split()[1]
    assert run(cli_env, "cat", "notes", "/docs/hello.txt", "--at", first_change).stdout == b"first\n"

    p = run(cli_env, "fsck")
    assert "OK" in p.stderr.decode()

    # errors: unknown space, missing path, writing to a directory
    p = run(cli_env, "cat", "nope", "/x", check=False)
    assert p.returncode == 6 and "unknown space" in one_line_error(p)
    p = run(cli_env, "cat", "notes", "/missing", check=False)
    assert p.returncode == 6 and "no such file" in one_line_error(p)
    p = run(cli_env, "put", "notes", "/docs", input=b"x", check=False)
    assert p.returncode != 0
    one_line_error(p)


def test_fsck_detects_corrupt_blob_and_stale_tree(cli_env: dict[str, str]) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "s")
    run(cli_env, "put", "s", "/f.bin", input=os.urandom(200_000))
    home = Path(cli_env["ANYSYNCFS_HOME"])
    blob_files = [p for p in (home / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".ob")]
    assert blob_files
    victim = blob_files[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.chmod(0o600)
    victim.write_bytes(bytes(data))
    p = run(cli_env, "fsck", check=False)
    assert p.returncode == 12
    assert "blob" in p.stdout.decode()
    # reading the corrupted file fails loudly, never returns wrong bytes
    p = run(cli_env, "cat", "s", "/f.bin", check=False)
    assert p.returncode == 8 and p.stdout == b""
    one_line_error(p)


def test_fsck_repair_rebuilds_the_tree_cache_only(cli_env: dict[str, str]) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "s")
    run(cli_env, "put", "s", "/a.txt", input=b"alpha")
    home = Path(cli_env["ANYSYNCFS_HOME"])
    db = sqlite3.connect(home / "store.db")
    db.execute("DELETE FROM entries")
    db.commit()
    db.close()
    p = run(cli_env, "fsck", check=False)
    assert p.returncode == 12 and "differs from a fresh fold" in p.stdout.decode()
    p = run(cli_env, "fsck", "--repair")
    assert "repaired" in p.stdout.decode()
    run(cli_env, "fsck")
    assert run(cli_env, "cat", "s", "/a.txt").stdout == b"alpha"


def test_fsck_checks_and_repairs_outboards(cli_env: dict[str, str]) -> None:
    init(cli_env)
    run(cli_env, "space", "create", "s")
    content = os.urandom(200_000)
    run(cli_env, "put", "s", "/f.bin", input=content)
    home = Path(cli_env["ANYSYNCFS_HOME"])
    outboards = [p for p in (home / "blobs").rglob("*.ob")]
    assert len(outboards) == 1  # one blob of more than one 16 KiB group
    blob = outboards[0].with_name(outboards[0].name[:-3])
    assert outboards[0].stat().st_size == (-(-blob.stat().st_size // 16384) - 1) * 64 <= blob.stat().st_size / 256
    good = outboards[0].read_bytes()
    outboards[0].write_bytes(good[:70] + bytes([good[70] ^ 1]) + good[71:])
    p = run(cli_env, "fsck", check=False)
    assert p.returncode == 12 and "outboard file is damaged" in p.stdout.decode(), p.stdout
    outboards[0].unlink()
    p = run(cli_env, "fsck", check=False)
    assert p.returncode == 12 and "has no outboard file" in p.stdout.decode(), p.stdout
    p = run(cli_env, "fsck", "--repair")
    assert "rebuilt" in p.stdout.decode()
    assert outboards[0].read_bytes() == good
    run(cli_env, "fsck")
    assert run(cli_env, "cat", "s", "/f.bin").stdout == content
