"""The ``unmount`` subcommand: kept apart from :mod:`.mount_cmd` and from everything heavy, so that ``anysyncfs
unmount`` starts without importing the Vfs, pyfuse3, trio or SQLAlchemy (see :func:`anysyncfs.cli.main.main`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from .. import mounts

if TYPE_CHECKING:
    from .context import Context

NAMES = ("unmount", "umount")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(NAMES[0], aliases=list(NAMES[1:]), help="unmount, after committing every staged write")
    s.add_argument("mountpoint", type=Path)
    s.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open there")
    s.add_argument("--timeout", type=float, default=mounts.UNMOUNT_TIMEOUT,
                   help="seconds to wait for the commit (default 120)")
    s.set_defaults(func=cmd_unmount)


def cmd_unmount(ctx: Context) -> int:
    mounts.unmount(ctx.args.mountpoint, ctx.home_root, lazy=ctx.args.lazy, timeout=ctx.args.timeout)
    return 0
