"""Issue 16 item 5: progress bars where a user waits — ``join``, the first sync of a foreground mount, ``pin`` — drawn
on a terminal (a pseudo-terminal here) and absent when stderr is not one; ``status --watch`` refreshes until Ctrl-C
and then exits 0."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
from pathlib import Path

from tests.conftest import CLI, free_port

from .conftest import (
    MOUNT_TIMEOUT,
    REPO,
    TEST_MOUNT_OPTS,
    Mount,
    SyncNode,
    _check_fuse,
    cluster_cleanup,
    eventually,
    init_device,
)
from .test_8_sharing import invite


class PtyOutput:
    """A pseudo-terminal (120 columns) for a child's stderr, drained by a thread into ``text`` until every holder of
    the terminal side has closed it."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self._data = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the terminal side is closed everywhere
                return
            if not chunk:
                return
            self._data += chunk

    def started(self) -> None:
        """The child has the terminal side: close ours, so the end of the child ends the drain."""
        os.close(self.slave)

    @property
    def text(self) -> str:
        return self._data.decode(errors="replace")

    def close(self) -> None:
        self._thread.join(10)
        os.close(self.master)


def run_on_pty(m: Mount, *args: str, timeout: float = 60) -> tuple[int, str]:
    out = PtyOutput()
    p = subprocess.Popen([*CLI, *args], env=m.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=out.slave, cwd=REPO)
    out.started()
    try:
        code = p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        out.close()
    return code, out.text


def bar(text: str, what: str) -> bool:
    """A finished tqdm bar for ``what`` ("changes :100%|█████| 5/5 …") was drawn."""
    return re.search(rf"{what}\s*:\s*100%\|", text) is not None


def test_progress_of_join_first_mount_sync_and_pin(tmp_path: Path) -> None:
    _check_fuse()
    node = SyncNode(tmp_path / "node", free_port())
    owner, member = Mount(tmp_path / "owner"), Mount(tmp_path / "member")
    with cluster_cleanup(node, owner, member):
        address = node.start()
        init_device(owner, "owner")
        owner.cli("space", "create", owner.space)
        owner.cli("space", "add-peer", owner.space, address)
        for i in range(2):
            owner.cli("put", owner.space, f"/docs/f{i}.bin", input=os.urandom(200_000))
        owner.cli("sync", owner.space)
        ticket = invite(owner, "writer")
        init_device(member, "member")

        code, text = run_on_pty(member, "join", ticket, "--name", member.space)
        assert code == 0, text
        assert bar(text, "changes"), text

        owner.cli("put", owner.space, "/more/g0.txt", input=b"later")  # a change for the mount's first sync
        owner.cli("sync", owner.space)
        out = PtyOutput()
        member.proc = subprocess.Popen([*CLI, "mount", member.space, str(member.mountpoint), "-f", *TEST_MOUNT_OPTS],
                                       env=member.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=out.slave, cwd=REPO)
        out.started()
        try:
            eventually(lambda: os.path.ismount(member.mountpoint), "member mounted", MOUNT_TIMEOUT)
            eventually(lambda: bar(out.text, "changes"), "the first sync's progress bar")
            assert os.listdir(member.path("more")) == ["g0.txt"]

            code, text = run_on_pty(member, "pin", str(member.path("docs")))
            assert code == 0, text
            assert bar(text, "pin") and "391k/391k" in text and "B/s" in text, text  # counted in bytes
            p = member.cli("pin", str(member.path("docs")))  # stderr not a terminal: no bar at all
            assert b"\r" not in p.stderr and b"%|" not in p.stderr
            member.unmount()
        finally:
            member.stop()
            out.close()
        assert "Traceback" not in out.text, out.text
