"""What every command gets (:class:`Context`): the parsed arguments, the home, and the passphrase, asked at most
once. Its own module so that :mod:`.main` imports the command modules and none of them imports it back."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..home_dir import default_home

if TYPE_CHECKING:
    from ..replica.home import Home

PASSPHRASE_ENV = "ANYSYNCFS_PASSPHRASE"
# Test-only: lowers the scrypt cost of keyrings written by this process (never use for real keys).
TEST_SCRYPT_ENV = "ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N"
DEFAULT_SCRYPT_LOG2N = 14  # N = 16384


class Context:
    """What every command gets: the home and a way to get the passphrase (asked at most once)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        root = args.home if args.home is not None else default_home()
        self.home_root = Path(root).absolute()  # a daemonized mount chdirs to /: never depend on the cwd
        self._home: Home | None = None
        self._passphrase: bytes | None = None

    @property
    def home(self) -> Home:
        """The home, opened on first use: importing it loads the store layer, which ``unmount`` does without."""
        if self._home is None:
            from ..replica.home import Home

            self._home = Home(self.home_root, scrypt_log2_n=scrypt_cost())
        return self._home

    def close(self) -> None:
        if self._home is not None:
            self._home.close()

    def passphrase(self, *, new: bool = False) -> bytes:
        if self._passphrase is None:
            self._passphrase = read_passphrase(self.args.passphrase_file, new=new)
        return self._passphrase


def scrypt_cost() -> int:
    text = os.environ.get(TEST_SCRYPT_ENV)
    if not text:
        return DEFAULT_SCRYPT_LOG2N
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{TEST_SCRYPT_ENV} must be an integer") from None
    if not 1 <= value <= DEFAULT_SCRYPT_LOG2N:
        raise UsageError(f"{TEST_SCRYPT_ENV} must be between 1 and {DEFAULT_SCRYPT_LOG2N}")
    return value


def read_passphrase(path: Path | None, *, new: bool) -> bytes:
    if path is not None:
        try:
            data = path.read_bytes()[: 64 * 1024]
        except OSError as e:
            raise UsageError(f"cannot read passphrase file {path}: {e.strerror}") from None
        value = data.split(b"\n", 1)[0].rstrip(b"\r")
    elif os.environ.get(PASSPHRASE_ENV) is not None:
        value = os.environ[PASSPHRASE_ENV].encode()
    elif sys.stdin.isatty():
        value = getpass.getpass("Passphrase: ").encode()
        if new and getpass.getpass("Passphrase (again): ").encode() != value:
            raise UsageError("the passphrases do not match")
    else:
        raise UsageError(f"no passphrase: use --passphrase-file, {PASSPHRASE_ENV}, or run on a terminal")
    if not value:
        raise UsageError("the passphrase is empty")
    return value
