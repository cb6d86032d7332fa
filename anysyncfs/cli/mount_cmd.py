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

from . import config, unmount_cmd
from .progress import ProgressBars

if TYPE_CHECKING:
    from .context import Context


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("mount", help="mount a space as a folder (in the background unless -f)",
                       epilog=_OPTIONS_TABLE, formatter_class=_MountHelpFormatter)
    s.add_argument("space", help="space name or ID (sp-…)")
    s.add_argument("mountpoint", type=Path, help="an existing directory")
    s.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    s.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT…]",
                   help="mount options, comma-separated: see the table below")
    s.add_argument("--read-only", action="store_true", help="mount read-only (same as -o ro)")
    s.add_argument("--cache-size", metavar="SIZE",
                   help="keep at most SIZE of file contents on this device (e.g. 2G; same as -o cache_size=SIZE): "
                        "beyond it, contents a provider holds and nobody pinned are evicted, oldest use first")
    s.set_defaults(func=cmd_mount)

    unmount_cmd.add_parser(sub)


_OPTIONS_TABLE = "\0mount options table\0"  # the epilog, replaced when help is shown


class _MountHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Writes the ``-o`` table (from the one table of mount options) only when help is shown: building it imports
    the mount machinery (pyfuse3, trio), which other commands should not pay for at start."""

    def add_text(self, text: str | None) -> None:
        if text == _OPTIONS_TABLE:
            from ..fs import mount
            from ..fs.mount_options import help_text

            text = help_text(mount.MountOptions(), mount.KERNEL_OPTIONS, mount.IGNORED_OPTIONS)
        super().add_text(text)


def cmd_mount(ctx: Context) -> int:
    from ..fs import mount

    args = ctx.args
    if mount.is_remount(args.options):  # mount(8) -o remount,...: change the running mount; no keyring needed
        mount.remount(args.mountpoint, [*args.options, *(["ro"] if args.read_only else [])], ctx.home.root)
        return 0
    cfg = config.load()  # config.toml: below the command line (its items come first; later -o items win)
    space_id, names = config.space_names(ctx, args.space)
    opts = mount.parse_options(cfg.mount_items(names) + args.options, read_only=args.read_only,
                               foreground=args.foreground)
    opts.debug = bool(args.debug)
    if args.cache_size is not None:
        opts.cache_size = mount.parse_size(args.cache_size)
    unlocked = ctx.home.unlock(ctx.passphrase())  # before forking: a prompt needs the terminal
    if space_id is not None:
        config.record_peers(ctx, cfg, space_id, names)
    if opts.foreground:
        bars = ProgressBars()  # the first sync's progress, on a terminal only
        opts.first_sync_progress = bars if bars.enabled else None
        logging.basicConfig(
            level=logging.DEBUG if args.debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
            force=True,
        )
    try:
        return mount.mount_space(unlocked, args.space, args.mountpoint, opts)
    finally:
        if opts.first_sync_progress is not None:
            bars.close()
