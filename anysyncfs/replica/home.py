"""The home directory of one device: keyring, store and blob files.

Layout::

    <home>/master.keys     keyring (see docs/protocol.md), mode 0600, written atomically
    <home>/store.db        SQLite store (WAL) for every space of this device
    <home>/blobs/ab/cd…    content-addressed blob files
    <home>/locks/<space>.lock        held (flock) by the mount of that space; JSON: pid, mountpoint, read_only
    <home>/run/<space>.status.json   the sync status a mount or `watch` publishes

The home and its folders are 0700 and store.db (with its -wal and -shm files) 0600; opening the store narrows
the modes an older install left wider.

The default home is ``$XDG_DATA_HOME/anysyncfs`` (platformdirs, in anysyncfs/home_dir.py); ``--home`` or ``ANYSYNCFS_HOME`` override it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import ids
from ..core import keyring as kr
from ..core.keys import Identity
from ..errors import AlreadyExists, KeyringCorrupt, KeyringError, NotFound, StoreError
from ..mounts import LOCKS_DIR, RUN_DIR, lock_held
from ..store.blobfiles import BlobFiles
from ..store.db import Store
from ..store.files import PRIVATE_DIR_MODE, atomic_write, private_dir, read_bounded, tighten

KEYRING_FILE = "master.keys"
STORE_FILE = "store.db"
BLOBS_DIR = "blobs"
# Folders of a home that hold secrets-adjacent data (blob files, staged writes, locks, logs, sync status): 0700.
# They are listed here so opening the store narrows the folders of installs made before that rule.
PRIVATE_SUBDIRS = (BLOBS_DIR, "staging", LOCKS_DIR, "logs", RUN_DIR)
KEYRING_MAX_SIZE = 16 << 20


@dataclass
class Unlocked:
    """A home whose keyring is open: the identity, every space key, and the passphrase to re-seal it."""

    home: "Home"
    contents: kr.KeyringContents
    identity: Identity
    passphrase: bytes = field(repr=False)

    def epoch_keys(self, space_id: bytes) -> dict[int, bytes]:
        return dict(self.contents.spaces.get(space_id, {}))

    def remember_keys(self, space_id: bytes, keys: dict[int, bytes]) -> None:
        """Add epoch keys of a space to the keyring file (re-sealed atomically) if any is new."""
        have = self.contents.spaces.get(space_id, {})
        if all(have.get(e) == k for e, k in keys.items()):
            return
        try:
            self.contents = kr.with_space_keys(self.contents, space_id, keys)
        except ValueError:
            raise KeyringError("a space key in the keyring disagrees with the space's ACL") from None
        self.home.write_keyring(self.contents, self.passphrase)


class Home:
    def __init__(self, root: Path, *, scrypt_log2_n: int = 14) -> None:
        self.root = Path(root).absolute()  # a daemonized mount chdirs to /: never depend on the cwd
        self.scrypt_log2_n = scrypt_log2_n
        self._store: Store | None = None
        self._blobs: BlobFiles | None = None

    @property
    def keyring_path(self) -> Path:
        return self.root / KEYRING_FILE

    def has_identity(self) -> bool:
        return self.keyring_path.exists()

    # ------------------------------------------------------------------------------------------ identity
    def create_identity(self, phrase: str, device_name: str, passphrase: bytes) -> Unlocked:
        if self.has_identity():
            raise AlreadyExists(f"an identity already exists in {self.root}")
        private_dir(self.root)
        identity = Identity.create(phrase, device_name, time.time_ns() // 1000)
        contents = kr.contents_from_identity(identity)
        self.write_keyring(contents, passphrase)
        return Unlocked(self, contents, identity, passphrase)

    def unlock(self, passphrase: bytes) -> Unlocked:
        if not self.has_identity():
            raise NotFound(f"no identity in {self.root} (run `anysyncfs init` first)")
        try:
            data = read_bounded(self.keyring_path, KEYRING_MAX_SIZE)
        except StoreError as e:
            raise KeyringCorrupt(f"keyring {self.keyring_path}: {e}") from None
        contents = kr.open_keyring(data, passphrase)
        return Unlocked(self, contents, kr.identity_from_contents(contents), passphrase)

    def write_keyring(self, contents: kr.KeyringContents, passphrase: bytes) -> None:
        data = kr.seal_keyring(contents, passphrase, log2_n=self.scrypt_log2_n)
        atomic_write(self.keyring_path, data, mode=0o600)

    # ------------------------------------------------------------------------------------------ storage
    def store(self) -> Store:
        if self._store is None:
            private_dir(self.root)
            for name in PRIVATE_SUBDIRS:
                tighten(self.root / name, PRIVATE_DIR_MODE)
            self._store = Store(str(self.root / STORE_FILE))
        return self._store

    def blobs(self) -> BlobFiles:
        if self._blobs is None:
            self._blobs = BlobFiles(self.root / BLOBS_DIR)
        return self._blobs

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._blobs is not None:
            self._blobs.close()  # the descriptors kept open for reads


def require_identity(home: Home) -> None:
    if not home.has_identity():
        raise KeyringError(f"no identity in {home.root} (run `anysyncfs init` first)")


# ------------------------------------------------------------------------------------- mount locks, status files
# Where the files are by which a mount tells other commands of this home that it serves a space (their formats and
# probes are in anysyncfs/mounts.py, which `unmount` imports alone). The mount (fs/mount.py) takes the lock;
# `sync`, `share` and `vault` refuse work a mount does already; `status` reads the status file a mount
# (fs/mount_sync.py) or `watch` publishes.
def lock_path(home_root: Path, space_id: bytes) -> Path:
    return home_root / LOCKS_DIR / f"{ids.space_text(space_id)}.lock"


def status_path(home_root: Path, space_id: bytes) -> Path:
    return home_root / RUN_DIR / f"{ids.space_text(space_id)}.status.json"


def space_mounted(home_root: Path, space_id: bytes) -> bool:
    """Whether a mount from this home serves the space now (its lock is held)."""
    lock = lock_path(home_root, space_id)
    return lock.exists() and lock_held(lock)

