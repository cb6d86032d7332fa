"""Every exit code of the table in docs/user-guide.md ("Exit codes"), produced through the CLI as a subprocess,
each with its one ``anysyncfs: error:`` line (issue 16, item 2). Codes whose cause needs a whole sharing setup
are produced where that setup exists: 10 in tests/integration/test_sharing.py, 15 for `unpin` in
tests/fuse/test_7_shell_conflicts.py. Not produced by any test: 9 (a change the access rules reject, which only a
race between admins or a modified client makes), 70 (a bug) and 130 (Ctrl-C)."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CLI


def run(env: dict[str, str], *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=input, env=env, capture_output=True, timeout=120)


def error_line(p: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The last stderr line, which must be the one error line; checks the exit code."""
    err = p.stderr.decode()
    assert p.returncode == code, (p.returncode, err)
    assert "Traceback" not in err, err
    last = err.rstrip("\n").splitlines()[-1]
    assert last.startswith("anysyncfs: error: "), err
    return last


@pytest.fixture
def home(cli_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """An identity with a space ``notes`` holding /doc.txt (inline) and /big.bin (a blob)."""
    assert run(cli_env, "init", "--device-name", "exit-codes").returncode == 0
    assert run(cli_env, "space", "create", "notes").returncode == 0
    assert run(cli_env, "put", "notes", "/doc.txt", input=b"hello\n").returncode == 0
    assert run(cli_env, "put", "notes", "/big.bin", input=os.urandom(100_000)).returncode == 0
    yield cli_env


def test_0_success(home: dict[str, str]) -> None:
    p = run(home, "cat", "notes", "/doc.txt")
    assert p.returncode == 0 and p.stdout == b"hello\n" and p.stderr == b""


def test_1_mount_failed(home: dict[str, str], tmp_path: Path) -> None:
    space = run(home, "space", "list").stdout.decode().split()[0]
    locks = Path(home["ANYSYNCFS_HOME"]) / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    with open(locks / f"{space}.lock", "w") as held:  # as a running mount of the space holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        assert "is already mounted" in error_line(run(home, "mount", "notes", str(mnt), "-f"), 1)


def test_2_usage(home: dict[str, str]) -> None:
    env = {k: v for k, v in home.items() if k != "ANYSYNCFS_PASSPHRASE"}
    assert "no passphrase" in error_line(run(env, "whoami"), 2)
    assert "unknown mount option" in error_line(run(home, "mount", "notes", "/tmp", "-o", "nope"), 2)


def test_3_identity(cli_env: dict[str, str]) -> None:
    p = run(cli_env, "init", "--restore", input=b"not a recovery phrase at all\n")
    assert "invalid recovery phrase" in error_line(p, 3)


def test_4_wrong_passphrase(home: dict[str, str]) -> None:
    assert "wrong passphrase" in error_line(run(dict(home, ANYSYNCFS_PASSPHRASE="wrong"), "whoami"), 4)


def test_5_keyring_damaged(home: dict[str, str]) -> None:
    keyring = Path(home["ANYSYNCFS_HOME"]) / "master.keys"
    data = bytearray(keyring.read_bytes())
    data[len(data) // 2] ^= 0x40
    keyring.write_bytes(bytes(data))
    error_line(run(home, "whoami"), 5)


def test_6_not_found(home: dict[str, str]) -> None:
    error_line(run(home, "cat", "notes", "/missing.txt"), 6)
    error_line(run(home, "ls", "no-such-space"), 6)


def test_7_already_exists(home: dict[str, str]) -> None:
    assert "already exists" in error_line(run(home, "init"), 7)


def test_8_integrity(home: dict[str, str]) -> None:
    for blob in (p for p in (Path(home["ANYSYNCFS_HOME"]) / "blobs").rglob("*") if p.is_file()):
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0x01
        blob.chmod(0o600)
        blob.write_bytes(bytes(data))
    p = run(home, "cat", "notes", "/big.bin")
    error_line(p, 8)
    assert p.stdout == b""  # never a wrong byte


def test_11_store(home: dict[str, str]) -> None:
    store = Path(home["ANYSYNCFS_HOME"]) / "store.db"
    for extra in ("-wal", "-shm"):
        Path(f"{store}{extra}").unlink(missing_ok=True)
    store.write_bytes(b"not a database " * 1000)
    assert "cannot open store" in error_line(run(home, "space", "list"), 11)


def test_12_fsck(home: dict[str, str]) -> None:
    victim = next(p for p in (Path(home["ANYSYNCFS_HOME"]) / "blobs").rglob("*") if p.is_file())
    victim.chmod(0o600)
    victim.unlink()
    assert "fsck found" in error_line(run(home, "fsck"), 12)


def test_13_file_system(home: dict[str, str]) -> None:
    p = run(home, "put", "notes", "/doc.txt/inside", input=b"x")
    assert "not a directory" in error_line(p, 13)


def _node(env: dict[str, str], data: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([*CLI, "node", "serve", "--listen", "127.0.0.1:0", "--data", str(data)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdout is not None
    address = proc.stdout.readline().decode().strip()
    assert address.startswith("anysync://dv-"), address
    return proc, address


def _closed_port_address(device_address: str) -> str:
    """A well-formed address (a real device key) on a port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return device_address.rsplit(":", 1)[0] + f":{port}"


def test_14_network_and_15_incomplete(home: dict[str, str], tmp_path: Path) -> None:
    proc, address = _node(home, tmp_path / "node")
    try:
        dead = _closed_port_address(address)
        assert run(home, "space", "add-peer", "notes", dead).returncode == 0
        assert "no peer could be reached" in error_line(run(home, "sync", "notes"), 14)
        assert run(home, "space", "add-peer", "notes", address).returncode == 0
        # One peer synced, the other not: the work is done where it could be, and the exit code says it is not all.
        p = run(home, "sync", "notes")
        assert "sync incomplete: 1 of 2 peers failed" in error_line(p, 15)
        assert "1/2 peers reached" in p.stdout.decode()
        # An invite reaches the node but not the dead peer: the ticket is printed, and the exit code is 15.
        p = run(home, "space", "invite", "notes", "--role", "reader")
        assert "the invite is stored on this device, but 1 of 2 peers could not be reached" in error_line(p, 15)
        assert p.stdout.decode().startswith("anysync:")
        invite = re.search(r"invite (acl-\S+) ", p.stderr.decode())
        assert invite is not None, p.stderr
        p = run(home, "space", "revoke-invite", "notes", invite.group(1))
        assert "the revocation is stored on this device, but 1 of 2 peers could not be reached (the ticket still " \
               "works there)" in error_line(p, 15)  # fmt: skip
        assert run(home, "space", "remove-peer", "notes", dead).returncode == 0
        p = run(home, "sync", "notes")
        assert p.returncode == 0, p.stderr
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    assert proc.stdout is not None
    proc.stdout.close()


def test_15_sync_with_content_no_peer_has(home: dict[str, str], tmp_path: Path) -> None:
    """Content this device lost and its provider lost too: the changes sync, the content cannot be fetched, and
    sync says so with 15 (not 0, as it used to)."""
    proc, address = _node(home, tmp_path / "node")
    try:
        assert run(home, "space", "add-peer", "notes", address).returncode == 0
        assert run(home, "sync", "notes").returncode == 0  # everything uploaded
        for root in (tmp_path / "node" / "blobs", Path(home["ANYSYNCFS_HOME"]) / "blobs"):
            for blob in (p for p in root.rglob("*") if p.is_file()):
                blob.chmod(0o600)
                blob.unlink()  # damaged disks on both sides
        p = run(home, "sync", "notes", "--timeout", "10")
        assert "sync incomplete: 1 blobs could not be fetched" in error_line(p, 15)
    finally:
        _stop(proc)


def test_141_broken_pipe(home: dict[str, str]) -> None:
    big = os.urandom(3 << 20)
    assert run(home, "put", "notes", "/huge.bin", input=big).returncode == 0
    proc = subprocess.Popen([*CLI, "cat", "notes", "/huge.bin"], env=home, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # like `anysyncfs cat … | head -c 10`
    assert proc.wait(60) == 141
    proc.stderr.close()


def test_every_code_of_the_table_is_a_documented_error_class() -> None:
    from anysyncfs import errors

    guide = (Path(__file__).resolve().parents[2] / "docs" / "user-guide.md").read_text()
    table = guide[guide.index("## Exit codes"):]
    table = table[: table.index("\n## ")]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    codes = {cls.exit_code for cls in vars(errors).values() if isinstance(cls, type) and
             issubclass(cls, errors.AnysyncError)}  # fmt: skip
    from anysyncfs.fs.mount import MountFailed

    assert codes | {MountFailed.exit_code, 0, 70, 130, 141} == documented
