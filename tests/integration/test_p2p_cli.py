"""A device address added with ``anysyncfs space add-peer`` is a member's device, never a provider (issue 13):
through the CLI and two ``sync --watch`` processes on loopback (real TCP, TLS, the session handshake).

Its confirmations must not count a blob as uploaded (a device may evict its copy), it is not back-filled, and
``status`` shows no provider backlog for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from anysyncfs.core import ids, keys
from anysyncfs.replica import adopt_space, create_space

from tests.conftest import PASSPHRASE, TEST_LOG2N

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANYSYNCFS_PASSPHRASE=PASSPHRASE.decode(), ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N=str(TEST_LOG2N),
               ANYSYNCFS_HOME=str(home), PYTHONPATH=str(ROOT))
    return env


def _cli(home: Path, *args: str, stdin: bytes = b"") -> str:
    done = subprocess.run([sys.executable, "-m", "anysyncfs", *args], input=stdin, env=_env(home),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout.decode()


def _watch(home: Path, space: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "anysyncfs", "sync", space, "--watch", "-o",
                             "listen=127.0.0.1:0,discovery=off,sync_interval=1"], env=_env(home),
                            stdout=subprocess.PIPE, stderr=log.open("wb"))
    assert proc.stdout is not None
    address = ""
    for line in proc.stdout:
        if line.startswith(b"listening at "):
            address = line.split()[-1].decode()
        if line.startswith(b"watching"):
            return proc, address
    raise AssertionError(f"sync --watch did not start: {log.read_text()[-2000:]}")


def _wait_for(check, what: str, timeout: float = 20.0) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened within {timeout} s: {what}")


def test_a_device_added_with_add_peer_is_never_counted_as_a_provider(make_home, tmp_path: Path) -> None:
    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    adopt_space(b_home, "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    space = ids.space_text(a.space_id)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pa, a_address = _watch(a_home.home.root, space, tmp_path / "a.log")
        procs.append(pa)
        assert a_address.startswith("anysync://dv-")
        _cli(b_home.home.root, "space", "add-peer", space, a_address)
        pb, _ = _watch(b_home.home.root, space, tmp_path / "b.log")
        procs.append(pb)
        data = os.urandom(200_000)  # stored as blobs, queued for upload on b
        _cli(b_home.home.root, "put", space, "/from-b.bin", stdin=data)

        def a_has_it() -> bool:
            return "from-b.bin" in _cli(a_home.home.root, "ls", space, "/")

        _wait_for(a_has_it, "b's file listed on a")

        def b_peer() -> dict:
            (row,) = json.loads(_cli(b_home.home.root, "status", "--json", space))
            (peer,) = row["peers"]
            return row | {"peer": peer}

        _wait_for(lambda: b_peer()["peer"]["last_sync_us"], "b synced with a")
        time.sleep(1.5)  # one more round: an upload would have been confirmed by now
        status = b_peer()
        assert status["peer"]["address"] == a_address
        assert status["peer"]["found_by"] == "manual"  # a device recorded by hand, not a provider
        assert status["peer"]["blobs_behind"] == 0 and status["peer"]["bytes_behind"] == 0
        assert status["blobs_to_upload"] > 0  # a device's copy does not count as uploaded
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_status_without_a_running_sync_shows_how_each_peer_was_found_and_what_it_is(make_home, tmp_path: Path
                                                                                       ) -> None:
    """What the engines judged is stored (peers_seen): once every sync process has stopped, ``status`` still tells
    the provider from a member's device added with add-peer, and lists the device found by its address record;
    a recorded peer never reached is "unknown", not a provider. And with a device recorded beside the provider, a
    blob the provider confirmed leaves the upload queue (the device does not hold it back)."""
    from tests.conftest import free_port

    phrase = keys.generate_phrase()
    a_home, b_home = make_home("a", phrase), make_home("b", phrase)
    a = create_space(a_home, "docs")
    adopt_space(b_home, "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    space = ids.space_text(a.space_id)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        node = subprocess.Popen([sys.executable, "-m", "anysyncfs", "node", "serve", "--listen", "127.0.0.1:0",
                                 "--data", str(tmp_path / "node")], env=_env(tmp_path / "nodehome"),
                                stdout=subprocess.PIPE, stderr=(tmp_path / "node.log").open("wb"))
        procs.append(node)
        assert node.stdout is not None
        provider = node.stdout.readline().decode().strip()
        assert provider.startswith("anysync://dv-"), (tmp_path / "node.log").read_text()[-2000:]
        for home in (a_home, b_home):
            _cli(home.home.root, "space", "add-peer", space, provider)
        pa, a_address = _watch(a_home.home.root, space, tmp_path / "a.log")
        procs.append(pa)
        _cli(b_home.home.root, "space", "add-peer", space, a_address)  # b records a's device by hand
        pb, b_address = _watch(b_home.home.root, space, tmp_path / "b.log")
        procs.append(pb)
        _cli(b_home.home.root, "put", space, "/from-b.bin", stdin=os.urandom(200_000))

        def peers(home: Path) -> tuple[dict, dict[str, dict]]:
            (row,) = json.loads(_cli(home, "status", "--json", space))
            return row, {p["address"]: p for p in row["peers"]}

        def settled() -> bool:
            b_row, b_peers = peers(b_home.home.root)
            _a_row, a_peers = peers(a_home.home.root)
            return (b_row["blobs_to_upload"] == 0  # the provider confirmed; a's device does not hold it back
                    and b_peers[a_address]["kind"] == "device" and b_peers[provider]["kind"] == "provider"
                    and a_peers.get(b_address, {}).get("connected", False))

        _wait_for(settled, "b's blob confirmed by the provider, and a and b connected both ways")
        _stop(procs)
        procs.clear()

        b_row, b_peers = peers(b_home.home.root)
        assert not b_row["mounted"] and b_row["blobs_to_upload"] == 0
        assert (b_peers[provider]["found_by"], b_peers[provider]["kind"]) == ("provider", "provider")
        assert (b_peers[a_address]["found_by"], b_peers[a_address]["kind"]) == ("manual", "device")
        assert b_peers[a_address]["blobs_behind"] == 0 and b_peers[a_address]["changes_behind"] == 0
        assert b_peers[a_address]["last_sync_us"]
        _a_row, a_peers = peers(a_home.home.root)
        assert (a_peers[provider]["found_by"], a_peers[provider]["kind"]) == ("provider", "provider")
        assert (a_peers[b_address]["found_by"], a_peers[b_address]["kind"]) == ("address record", "device")
        assert a_peers[b_address]["last_sync_us"] and not a_peers[b_address]["connected"]
        assert a_peers[b_address]["blobs_behind"] == 0

        # A device address recorded now, never reached: nothing says what it is.
        nowhere = f"anysync://{ids.device_text(os.urandom(32))}@127.0.0.1:{free_port()}"
        _cli(b_home.home.root, "space", "add-peer", space, nowhere)
        _b_row, b_peers = peers(b_home.home.root)
        assert (b_peers[nowhere]["found_by"], b_peers[nowhere]["kind"]) == ("manual", "unknown")
        text = _cli(b_home.home.root, "status", space)
        assert f"{a_address}: not connected (manual, a member's device)" in text
        assert f"{provider}: not connected (provider)" in text
        assert f"{nowhere}: not connected (manual, not reached yet)" in text
        text = _cli(a_home.home.root, "status", space)
        assert f"{b_address}: not connected (address record, a member's device)" in text
    finally:
        _stop(procs)


def test_sync_watch_with_a_taken_listen_address_still_syncs_by_dialling_out(make_home, tmp_path: Path) -> None:
    """-o listen=HOST:PORT that is taken: logged, no listener, and the process goes on (it still dials out)."""
    import socket

    a_home = make_home("a")
    a = create_space(a_home, "docs")
    space = ids.space_text(a.space_id)
    log = tmp_path / "a.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "anysyncfs", "sync", space, "--watch", "-o",
                                 f"listen=127.0.0.1:{port},discovery=off"], env=_env(a_home.home.root),
                                stdout=subprocess.PIPE, stderr=log.open("wb"))
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline().decode()
            assert first.startswith("watching"), first + log.read_text()[-2000:]
            assert proc.poll() is None

            def live() -> dict:
                (row,) = json.loads(_cli(a_home.home.root, "status", "--json", space))
                return row

            _wait_for(lambda: live()["mounted"], "the watch process publishes its status")
            assert live()["listen"] == []  # no address to give out
        finally:
            _stop([proc])
    assert f"cannot listen on 127.0.0.1:{port}" in log.read_text()
