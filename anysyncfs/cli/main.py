"""The ``anysyncfs`` command line: argument parsing and the one error -> exit code table (the context every command
gets, with the passphrase sources, is in :mod:`.context`).

Errors are one line on stderr (``anysyncfs: error: …``) with the exit code of their class (see
:mod:`anysyncfs.errors`); ``--debug`` adds the traceback and debug logging.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import AnysyncError
from . import unmount_cmd
from .context import Context


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(prog="anysyncfs", description="End-to-end encrypted, peer-to-peer synced drive.")
    p.add_argument("--home", type=Path, help="home directory (default: $ANYSYNCFS_HOME or the XDG data dir)")
    p.add_argument("--passphrase-file", type=Path, help="read the keyring passphrase from this file")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    return p, p.add_subparsers(dest="command", metavar="COMMAND", required=True)


def build_parser() -> argparse.ArgumentParser:
    from . import commands, config, mount_cmd, offline_cmd, service, share_cmd, sync_cmd, vault_cmd, versions

    p, sub = _top_parser()

    s = sub.add_parser("init", help="create this device's identity (or restore one from a recovery phrase)")
    s.add_argument("--device-name", default=None, help="label for this device (default: the host name)")
    s.add_argument("--restore", action="store_true", help="read a recovery phrase from stdin instead")
    vault_cmd.add_restore_options(s)
    s.set_defaults(func=commands.cmd_init)

    s = sub.add_parser("whoami", help="print the account ID and device ID")
    s.set_defaults(func=commands.cmd_whoami)

    sp = sub.add_parser("space", help="create and inspect spaces").add_subparsers(dest="space_cmd", required=True)
    s = sp.add_parser("create", help="create a space and print its ID")
    s.add_argument("name")
    s.set_defaults(func=commands.cmd_space_create)
    s = sp.add_parser("list", help="list the spaces on this device")
    s.set_defaults(func=commands.cmd_space_list)
    s = sp.add_parser("members", help="list a space's members and roles")
    s.add_argument("space")
    s.set_defaults(func=commands.cmd_space_members)
    space_sub = sp

    s = sub.add_parser("put", help="write stdin to a file in a space")
    s.add_argument("space")
    s.add_argument("path")
    s.set_defaults(func=commands.cmd_put)

    s = sub.add_parser("cat", help="write a file of a space to stdout")
    s.add_argument("space")
    s.add_argument("path")
    s.add_argument("--at", metavar="CHANGE", help="the file as it was at this change (ch-… from history)")
    s.set_defaults(func=commands.cmd_cat)

    s = sub.add_parser("ls", help="list a directory of a space")
    s.add_argument("space")
    s.add_argument("path", nargs="?", default="/")
    s.add_argument("-l", dest="long", action="store_true", help="long format")
    s.set_defaults(func=commands.cmd_ls)

    s = sub.add_parser("history", help="list the changes that touched a file (SPACE PATH, or a mounted path)")
    s.add_argument("target", metavar="SPACE|MOUNTED_PATH")
    s.add_argument("path", nargs="?", help="path inside SPACE (omit for a path inside a mount)")
    s.set_defaults(func=versions.cmd_history)

    s = sub.add_parser("revert", help="restore a file as it was at a change or time (SPACE PATH, or a mounted path)")
    s.add_argument("target", metavar="SPACE|MOUNTED_PATH")
    s.add_argument("path", nargs="?", help="path inside SPACE (omit for a path inside a mount)")
    s.add_argument("--at", required=True, metavar="WHEN", help="a change ID (ch-…) or a UTC time (2026-11-22T05:35)")
    s.set_defaults(func=versions.cmd_revert)

    s = sub.add_parser("fsck", help="verify every change, blob and the cached tree; exit non-zero on problems")
    s.add_argument("space", nargs="?")
    s.add_argument("--repair", action="store_true", help="rebuild the cached tree (changes nothing else)")
    s.set_defaults(func=commands.cmd_fsck)

    mount_cmd.add_parsers(sub)
    sync_cmd.add_parsers(sub, space_sub)
    share_cmd.add_parsers(sub, space_sub)
    offline_cmd.add_parsers(sub, space_sub)
    config.add_parsers(sub)
    service.add_parsers(sub)
    vault_cmd.add_parsers(sub, space_sub)
    return p


def unmount_parser() -> argparse.ArgumentParser:
    """The parser for ``anysyncfs unmount`` alone: the same top-level options and subcommand as in
    :func:`build_parser`, without importing the other commands (their imports are most of a remount's unmount)."""
    p, sub = _top_parser()
    unmount_cmd.add_parser(sub)
    return p


def command_word(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (the first word that is neither a top-level option nor its value)."""
    words = iter(argv)
    for word in words:
        if word in ("--home", "--passphrase-file"):
            next(words, None)
        elif word in ("-h", "--help"):
            return None
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    parser = unmount_parser() if command_word(words) in unmount_cmd.NAMES else build_parser()
    args = parser.parse_args(words)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="anysyncfs: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    ctx = None
    try:
        ctx = Context(args)
        return int(args.func(ctx) or 0)
    except AnysyncError as e:
        if args.debug:
            logging.exception("failed")
        print(f"anysyncfs: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("anysyncfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug: still one line unless --debug
        if args.debug:
            raise
        print(f"anysyncfs: internal error: {type(e).__name__}: {e} (rerun with --debug)", file=sys.stderr)
        return 70
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
