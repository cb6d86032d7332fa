"""The ``mount`` and ``unmount`` subcommands (the lifecycle itself lives in :mod:`anysyncfs.fs.mount`).

``anysyncfs mount SPACE MOUNTPOINT`` reads the passphrase and unlocks the keyring first (prompt, wrong
passphrase: exactly as every other command), then forks and returns once the mount works; ``-f`` stays in the
foreground and logs to stderr. ``anysyncfs unmount MOUNTPOINT`` unmounts and waits until the mount process has
committed every staged write.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .main import Context


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("mount", help="mount a space as a folder (in the background unless -f)")
    s.add_argument("space", help="space name or ID (sp-…)")
    s.add_argument("mountpoint", type=Path, help="an existing directory")
    s.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    s.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT…]",
                   help="ro, cache_size=SIZE, allow_other, batch_interval=MS, commit_interval=SECONDS, nosuid, nodev, "
                        "noexec, noatime")
    s.add_argument("--read-only", action="store_true", help="mount read-only (same as -o ro)")
    s.add_argument("--cache-size", metavar="SIZE",
                   help="keep at most SIZE of file contents on this device (e.g. 2G; same as -o cache_size=SIZE): "
                        "beyond it, contents a provider holds and nobody pinned are evicted, oldest use first")
    s.set_defaults(func=cmd_mount)

    s = sub.add_parser("unmount", aliases=["umount"], help="unmount, after committing every staged write")
    s.add_argument("mountpoint", type=Path)
    s.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open there")
    s.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the commit (default 120)")
    s.set_defaults(func=cmd_unmount)


def cmd_mount(ctx: Context) -> int:
    from ..fs import mount

    args = ctx.args
    if mount.is_remount(args.options):  # mount(8) -o remount,...: change the running mount; no keyring needed
        mount.remount(args.mountpoint, [*args.options, *(["ro"] if args.read_only else [])], ctx.home.root)
        return 0
    opts = mount.parse_options(args.options, read_only=args.read_only, foreground=args.foreground)
    opts.debug = bool(args.debug)
    if args.cache_size is not None:
        opts.cache_size = mount.parse_size(args.cache_size)
    unlocked = ctx.home.unlock(ctx.passphrase())  # before forking: a prompt needs the terminal
    if opts.foreground:
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
            force=True,
        )
    return mount.mount_space(unlocked, args.space, args.mountpoint, opts)


def cmd_unmount(ctx: Context) -> int:
    from ..fs import mount

    mount.unmount(ctx.args.mountpoint, ctx.home.root, lazy=ctx.args.lazy, timeout=ctx.args.timeout)
    return 0
