"""Shared fixtures: throwaway home directories with a cheap (test-only) scrypt cost."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

# Timing varies on shared CI machines: never fail a property on a per-example deadline.
settings.register_profile("anysyncfs", deadline=None)
settings.load_profile("anysyncfs")

from anysyncfs.core import keys
from anysyncfs.replica.home import Home, Unlocked

pytest_plugins = ["tests.backends.fixtures"]  # pg_server, s3_server, pg_s3, node_backend

TEST_LOG2N = 4  # test-only scrypt cost (production: 14)
PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def make_home(tmp_path: Path) -> Callable[..., Unlocked]:
    """make_home(name, phrase=None) -> an unlocked home with a fresh (or restored) identity."""
    homes: list[Home] = []

    def make(name: str = "dev", phrase: str | None = None) -> Unlocked:
        home = Home(tmp_path / name, scrypt_log2_n=TEST_LOG2N)
        homes.append(home)
        return home.create_identity(phrase or keys.generate_phrase(), name, PASSPHRASE)

    yield make
    for h in homes:
        h.close()


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the CLI as a subprocess."""
    env = dict(os.environ)
    env["ANYSYNCFS_PASSPHRASE"] = PASSPHRASE.decode()
    env["ANYSYNCFS_INSECURE_TEST_SCRYPT_LOG2N"] = str(TEST_LOG2N)
    env["ANYSYNCFS_HOME"] = str(tmp_path / "clihome")
    env["ANYSYNCFS_CONFIG"] = str(tmp_path / "config.toml")  # never the user's own config.toml
    env.pop("ANYSYNCFS_DEBUG", None)
    return env


CLI = [sys.executable, "-m", "anysyncfs"]


# ------------------------------------------------------------------------------------ helpers the suites share
def free_port() -> int:
    """A 127.0.0.1 port that nothing listens on (bound once, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Wait (trio) until ``check()`` is true; fail with ``what`` after ``timeout`` seconds (generous: a loaded
    machine must not fail a test on timing)."""
    import trio

    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"never happened: {what}")
