"""``init --restore --lan`` between network namespaces (issue 15, docs/protocol.md 70.15): device 1 keeps two
spaces with ``anysyncfs sync SPACE --watch`` (one process per space, as mounts are) and no provider exists
anywhere; device 2, in another namespace, has the recovery phrase only. It finds device 1's listeners by their
account announcement, fetches the vault from them, restores both spaces from them, and reads the files.

Needs root (network namespaces; the fixtures of test_p2p_netns.py); skipped with the reason otherwise. Every
process is killed and every namespace deleted."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anysyncfs.core import ids, keys
from anysyncfs.replica import create_space
from anysyncfs.replica.home import Home
from anysyncfs.replica.files import put_file
from tests.integration.test_p2p_netns import DEBUG, Lan, env_for, lan  # noqa: F401 - lan is a fixture

TIMEOUT = 120


def cli(ns: str | None, home: Path, *args: str, stdin: bytes | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    p = subprocess.run([*prefix, sys.executable, "-m", "anysyncfs", *DEBUG, *args], env=env_for(home),
                       input=stdin, capture_output=True, timeout=TIMEOUT)
    out = subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}): {out.stderr[-4000:]}")
    return out


@pytest.fixture
def watchers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_restore_from_the_phrase_finds_the_accounts_device_on_the_lan(
        lan: Lan, make_home, tmp_path: Path, watchers: list[subprocess.Popen[bytes]]) -> None:  # noqa: F811
    phrase = keys.generate_phrase()
    one = make_home("one", phrase)
    files = {"docs": ("/report.txt", b"the quarterly report\n" * 500), "photos": ("/cat.jpg", bytes(range(256)) * 700)}
    spaces: dict[str, bytes] = {}
    for name, (path, data) in files.items():
        replica = create_space(one, name)
        put_file(replica, path, data)
        spaces[name] = replica.space_id
    one.home.store().sync()
    home1 = one.home.root
    cli(None, home1, "vault", "sync")  # no provider: the vault is kept on device 1 only
    for name, space_id in spaces.items():
        log = (home1 / f"watch-{name}.log").open("wb")
        proc = subprocess.Popen(["ip", "netns", "exec", lan.namespaces[0], sys.executable, "-m", "anysyncfs",
                                 *DEBUG, "sync", ids.space_text(space_id), "--watch", "-o", "sync_interval=2"],
                                env=env_for(home1), stdout=subprocess.PIPE, stderr=log)
        watchers.append(proc)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"watching"):
                break
        else:
            raise AssertionError((home1 / f"watch-{name}.log").read_text()[-3000:])

    # A stranger's phrase finds nothing there: one line, a non-zero exit, no identity created.
    stranger = tmp_path / "stranger"
    p = cli(lan.namespaces[2], stranger, "init", "--restore", "--lan", "--lan-wait", "2",
            stdin=keys.generate_phrase().encode(), check=False)
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "no device of this account found on the LAN" in errors[0], p.stderr
    assert not Home(stranger).has_identity()

    home2 = tmp_path / "two"
    p = cli(lan.namespaces[1], home2, "init", "--restore", "--lan", "--device-name", "two", stdin=phrase.encode())
    assert "found 2 listener(s)" in p.stderr, p.stderr
    assert "2 space(s) restored" in p.stderr, p.stderr
    listed = cli(None, home2, "space", "list").stdout.split()
    assert dict(zip(listed[1::2], listed[0::2])) == {n: ids.space_text(s) for n, s in spaces.items()}
    for name, (path, data) in files.items():
        # Content comes from the device listener that served the space (the one recorded as its peer).
        synced = cli(lan.namespaces[1], home2, "sync", name)
        # The listener of the other space refused this one at the restore and was not kept as its peer.
        assert "not available" not in synced.stderr and "FORBIDDEN" not in synced.stderr, synced.stderr
        got = subprocess.run([sys.executable, "-m", "anysyncfs", "cat", name, path], env=env_for(home2),
                             capture_output=True, timeout=TIMEOUT)
        assert got.returncode == 0 and got.stdout == data, got.stderr[-2000:]
