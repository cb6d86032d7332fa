"""The stress runner's :class:`~.runner.MountControl` over the FUSE tests' :class:`tests.fuse.conftest.Mount`
(``anysyncfs mount -f`` in a subprocess, with the tests' ``-o listen=off,discovery=off``)."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.fuse.conftest import Mount

from .runner import Runner, Stats

# A kill -9 leaves the staging files of the killed run behind: the next mount says so (and removes them).
KILL_LOG = r"WARNING .*staging files left by an earlier run"


class FuseControl:
    def __init__(self, m: Mount, *options: str) -> None:
        self.m = m
        self.options = options

    def mount(self) -> None:
        self.m.mount(*self.options)

    def remount(self) -> None:
        self.m.unmount()
        self.m.mount(*self.options)

    def kill(self) -> None:
        self.m.signal(signal.SIGKILL)
        self.m.wait_exit()

    def restart(self) -> None:
        self.m.stop()  # fusermount3 -u of the dead mount
        self.m.expect_log(KILL_LOG)
        self.m.mount(*self.options)


def run_seed(m: Mount, seed: int, ops: int, *, kill_rate: float, remount_rate: float, full_every: int = 200,
             options: str = "") -> Stats:
    """Mount ``m`` (a fresh space, with ``-o options`` if given), run ``ops`` operations of ``seed``, unmount
    cleanly and fsck."""
    control = FuseControl(m, *(("-o", options) if options else ()))
    control.mount()
    runner = Runner(Path(m.mountpoint), seed, control, kill_rate=kill_rate, remount_rate=remount_rate,
                    full_every=full_every, options=options)
    stats = runner.run(ops)
    m.unmount()
    m.cli("fsck")
    return stats
