"""The blob cache (anysyncfs.replica.cache) through the Vfs, with real blobs: pins, the pinned blob set, LRU
eviction under a size limit, ``evict``, the offline xattrs, and the pins tables in the store."""

from __future__ import annotations

import errno
import itertools
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anysyncfs.errors import BlobMissing
from anysyncfs.fs.vfs import ROOT_INODE, Vfs
from anysyncfs.replica import cache as cache_mod
from anysyncfs.replica import create_space, files
from anysyncfs.replica.home import Unlocked
from anysyncfs.store.db import Store
from tests.unit.test_vfs_support import (  # noqa: F401  (env is a fixture)
    ALICE,
    BOB,
    ROOT,
    Env,
    env,
    errno_of,
    path_inode,
    read_all,
    write_file,
)

KiB = 1024
FILE_SIZE = 64 * KiB  # below the minimum chunk size: one blob per file


# ---------------------------------------------------------------------------------------------------- helpers
def make_tree(env: Env, count: int, folder: bytes = b"d") -> dict[bytes, bytes]:
    """``count`` files of random bytes in a new folder; returns {path: bytes}."""
    d = env.vfs.mkdir(ROOT_INODE, folder, 0o755, ROOT)
    out = {}
    for i in range(count):
        data = os.urandom(FILE_SIZE)
        write_file(env.vfs, d.inode, b"f%02d" % i, data)
        out[folder + b"/f%02d" % i] = data
    return out


def blobs_of(env: Env, path: bytes) -> list[bytes]:
    node = files.resolve(env.replica.tree, path.decode())
    return env.vfs.cache.content_blobs(node.content)[0]


def local(env: Env) -> set[bytes]:
    return set(env.replica.blobs.iter_ids())


def confirm_all(env: Env) -> dict[bytes, bytes]:
    """A provider stored every local blob (as an upload would record): returns its copy, for refetching."""
    provider = {b: env.replica.blobs.get(b) for b in local(env)}
    env.replica.store.mark_uploaded(env.replica.space_id, sorted(provider))
    return provider


def state(env: Env, path: bytes) -> bytes:
    return env.vfs.getxattr(path_inode(env.vfs, path), b"user.anysync.state", ROOT)


def xattr_int(env: Env, path: bytes, name: bytes) -> int:
    return int(env.vfs.getxattr(path_inode(env.vfs, path), name, ROOT))


def pin(env: Env, path: bytes, value: bytes = b"1", ctx=ROOT) -> None:
    env.vfs.setxattr(path_inode(env.vfs, path), b"user.anysync.pinned", value, 0, ctx)


def read_fetching(env: Env, path: bytes, provider: dict[bytes, bytes], after_fetch: Callable[[], None]) -> bytes:
    """Read a file as the FUSE adapter does: the handle stays open; a missing blob is fetched from ``provider``
    (remote-confirmed, as the sync engine stores it), the cache told, and the read retried."""
    vfs = env.vfs
    inode = path_inode(vfs, path)
    fh = vfs.open(inode, os.O_RDONLY, ROOT)
    try:
        size = vfs.getattr(inode).size
        parts, offset = [], 0
        while offset < size:
            try:
                data = vfs.read(fh, offset, 128 * KiB)
            except BlobMissing as e:
                env.replica.put_fetched_blob(e.blob_id, provider[e.blob_id], remote_confirmed=True)
                vfs.cache_after_fetch(e.blob_id)
                after_fetch()
                continue
            parts.append(data)
            offset += len(data)
        return b"".join(parts)
    finally:
        vfs.release(fh)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Distinct, increasing access times for every noted read (the real clock may tick less than a read)."""
    ticks = itertools.count(time.time_ns() // 1000 + 10**9)
    monkeypatch.setattr(cache_mod, "now_us", lambda: next(ticks))
    yield


# ---------------------------------------------------------------------------------------------------- eviction rules
def test_nothing_unconfirmed_is_ever_evicted(env: Env) -> None:
    tree = make_tree(env, 6)
    before = local(env)
    env.vfs.cache.limit = 0
    assert env.vfs.cache_tick().evicted == 0  # nothing has reached a provider
    assert local(env) == before
    first = sorted(tree)[:3]
    confirmed = {b for p in first for b in blobs_of(env, p)}
    env.replica.store.mark_uploaded(env.replica.space_id, sorted(confirmed))
    result = env.vfs.cache_tick()
    assert result.evicted == len(confirmed) and local(env) == before - confirmed
    for path in sorted(tree):
        assert state(env, path) == (b"remote-only" if path in first else b"local")


def test_lru_order_and_the_limit(env: Env, clock: None) -> None:
    tree = make_tree(env, 8)
    confirm_all(env)
    paths = sorted(tree)
    for path in [paths[5], paths[2], paths[7], paths[0], paths[1], paths[3], paths[4], paths[6]]:
        assert read_all(env.vfs, path_inode(env.vfs, path)) == tree[path]
    blob_size = env.replica.store.local_blob_bytes() // 8
    env.vfs.cache.limit = 3 * blob_size + blob_size // 2  # room for three blobs
    env.vfs.cache_tick()
    # The three read last stay; the five read before them went, oldest first.
    assert local(env) == {b for p in (paths[3], paths[4], paths[6]) for b in blobs_of(env, p)}
    assert env.replica.blobs.total_size() <= env.vfs.cache.limit


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_reads_keep_working_under_a_small_limit(env: Env, seed: int) -> None:
    tree = make_tree(env, 16)
    provider = confirm_all(env)
    biggest = max(len(b) for b in provider.values())
    limit = env.vfs.cache.limit = 4 * biggest
    env.vfs.cache_tick()
    peaks: list[int] = []

    def check() -> None:
        peaks.append(env.replica.blobs.total_size())
        assert peaks[-1] <= limit + biggest

    rng = random.Random(seed)
    order = [p for _ in range(3) for p in rng.sample(sorted(tree), len(tree))]
    for path in order:
        env.vfs.reads.drop_cache()  # the in-memory cache would hide what the disk cache does
        assert read_fetching(env, path, provider, check) == tree[path]
        check()
    assert max(peaks) <= limit and len(peaks) > len(tree)  # refetched many times, never over the limit


def test_pinned_content_is_never_evicted(env: Env) -> None:
    tree = make_tree(env, 4, b"keep")
    tree |= make_tree(env, 4, b"other")
    pin(env, b"keep")
    confirm_all(env)
    env.vfs.cache.limit = 0
    env.vfs.cache_tick()
    kept = {b for p in tree if p.startswith(b"keep/") for b in blobs_of(env, p)}
    assert local(env) == kept
    assert state(env, b"keep") == b"pinned" and state(env, b"keep/f00") == b"pinned"
    assert state(env, b"other") == b"local" and state(env, b"other/f00") == b"remote-only"
    # A file written later in the pinned folder is pinned too, once confirmed as well as before.
    write_file(env.vfs, path_inode(env.vfs, b"keep"), b"new", os.urandom(FILE_SIZE))
    confirm_all(env)
    env.vfs.cache_tick()
    assert set(blobs_of(env, b"keep/new")) <= local(env)
    assert env.vfs.getxattr(path_inode(env.vfs, b"keep/new"), b"user.anysync.pinned", ROOT) == b"1"
    # Unpinned, the cache may take it all.
    pin(env, b"keep", b"0")
    env.vfs.cache_tick()
    assert local(env) == set()
    assert state(env, b"keep") == b"local" and state(env, b"keep/new") == b"remote-only"


def test_blobs_of_open_and_staged_files_stay(env: Env) -> None:
    tree = make_tree(env, 3)
    confirm_all(env)
    env.vfs.cache.limit = 0
    reading = path_inode(env.vfs, b"d/f00")
    writing = path_inode(env.vfs, b"d/f01")
    fh_read = env.vfs.open(reading, os.O_RDONLY, ROOT)
    fh_write = env.vfs.open(writing, os.O_RDWR, ROOT)
    env.vfs.write(fh_write, 10, b"patch")  # staged: the commit re-chunks from the base content
    env.vfs.cache_tick()
    assert local(env) == set(blobs_of(env, b"d/f00")) | set(blobs_of(env, b"d/f01"))
    env.vfs.release(fh_write)  # commits: its new blob is unconfirmed and stays
    env.vfs.release(fh_read)
    env.vfs.cache_tick()
    assert local(env) == set(blobs_of(env, b"d/f01"))
    expected = bytearray(tree[b"d/f01"])
    expected[10:15] = b"patch"
    assert read_all(env.vfs, writing) == expected


def test_pins_of_one_space_hold_in_the_caches_of_others(env: Env, tmp_path: Path) -> None:
    make_tree(env, 3, b"mine")
    pin(env, b"mine")
    confirm_all(env)
    env.vfs.cache_tick()  # saves this space's pinned blobs
    pinned = {b for i in range(3) for b in blobs_of(env, b"mine/f%02d" % i)}
    other_replica = create_space(env.unlocked, "other")
    other = Vfs(other_replica, staging_dir=tmp_path / "staging-other")
    try:
        write_file(other, ROOT_INODE, b"x", os.urandom(FILE_SIZE))
        other_replica.store.mark_uploaded(other_replica.space_id, sorted(local(env)))
        other.cache.limit = 0
        other.cache_tick()
        assert local(env) == pinned  # the other space's blob went; this space's pinned ones stayed
    finally:
        other.close()


# ---------------------------------------------------------------------------------------------------- evict and xattrs
def test_evict_frees_what_a_provider_holds_and_reports_the_rest(env: Env) -> None:
    tree = make_tree(env, 4)
    first = set(blobs_of(env, b"d/f00")) | set(blobs_of(env, b"d/f01"))
    env.replica.store.mark_uploaded(env.replica.space_id, sorted(first))
    size_of = {b: len(env.replica.blobs.get(b)) for b in local(env)}
    total = sum(size_of.values())
    assert xattr_int(env, b"d", b"user.anysync.local_bytes") == total
    assert xattr_int(env, b"d", b"user.anysync.unsynced_bytes") == total - sum(size_of[b] for b in first)
    inode = path_inode(env.vfs, b"d/f00")
    env.vfs.setxattr(inode, b"user.anysync.evict", b"1", 0, ROOT)
    assert state(env, b"d/f00") == b"remote-only"
    assert xattr_int(env, b"d/f00", b"user.anysync.local_bytes") == 0
    env.vfs.setxattr(path_inode(env.vfs, b"d"), b"user.anysync.evict", b"1", 0, ROOT)  # a folder: every file
    assert local(env) == set(size_of) - first
    assert xattr_int(env, b"d", b"user.anysync.local_bytes") == xattr_int(env, b"d", b"user.anysync.unsynced_bytes")
    assert [state(env, p) for p in sorted(tree)] == [b"remote-only"] * 2 + [b"local"] * 2
    assert errno_of(env.vfs.getxattr, inode, b"user.anysync.evict", ROOT) == errno.ENODATA
    assert errno_of(env.vfs.setxattr, inode, b"user.anysync.evict", b"yes", 0, ROOT) == errno.EINVAL


def test_pin_xattr_rules(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    sub = vfs.mkdir(d.inode, b"sub", 0o755, ROOT)
    f = write_file(vfs, sub.inode, b"f", b"x" * 10_000)
    secret = write_file(vfs, ROOT_INODE, b"secret", b"s" * 10_000, mode=0o600)
    name = b"user.anysync.pinned"
    assert vfs.getxattr(f.inode, name, ROOT) == b"0"
    vfs.setxattr(f.inode, name, b"1", 0, BOB)  # read access is enough (pins are this device's business)
    vfs.setxattr(d.inode, name, b"1", 0, ALICE)
    assert vfs.cache.pins == {files.resolve(env.replica.tree, p).id for p in ("/d", "/d/sub/f")}
    assert [vfs.getxattr(i, name, ROOT) for i in (d.inode, sub.inode, f.inode)] == [b"1"] * 3
    assert errno_of(vfs.setxattr, secret.inode, name, b"1", 0, BOB) == errno.EACCES
    assert errno_of(vfs.setxattr, f.inode, name, b"2", 0, ROOT) == errno.EINVAL
    assert errno_of(vfs.setxattr, f.inode, name, b"1", os.XATTR_CREATE, ROOT) == errno.EEXIST
    link = vfs.symlink(ROOT_INODE, b"link", b"d", ROOT)
    assert errno_of(vfs.setxattr, link.inode, name, b"1", 0, ROOT) == errno.EPERM
    # Unpinning a file below a pinned folder leaves it pinned through the folder; unpinning the folder takes
    # every pin below it.
    vfs.removexattr(f.inode, name, ROOT)
    assert vfs.getxattr(f.inode, name, ROOT) == b"1"
    vfs.setxattr(f.inode, name, b"1", 0, ROOT)
    vfs.setxattr(d.inode, name, b"0", 0, ROOT)
    assert vfs.cache.pins == frozenset()
    assert vfs.getxattr(f.inode, name, ROOT) == b"0"
    # Not listed (copying tools must not carry device settings), and pins are not changes.
    assert name not in vfs.listxattr(f.inode, ROOT)
    changes = env.changes()
    vfs.setxattr(d.inode, name, b"1", 0, ROOT)
    assert env.changes() == changes
    # Pins survive a remount (they are in the store).
    env.reopen()
    assert env.vfs.getxattr(path_inode(env.vfs, b"d/sub/f"), name, ROOT) == b"1"


def test_pins_work_on_a_read_only_vfs_but_not_in_history(env: Env, tmp_path: Path) -> None:
    write_file(env.vfs, ROOT_INODE, b"f", b"x" * 10_000)
    env.vfs.close()
    env.vfs = Vfs(env.replica, staging_dir=env.staging, read_only=True)
    pin(env, b"f")
    assert state(env, b"f") == b"pinned"
    history = env.vfs.lookup(env.vfs.lookup(ROOT_INODE, b".anysync", ROOT).inode, b"history", ROOT).inode
    fh = env.vfs.opendir(history, ROOT)
    day = env.vfs.readdir(fh, 0)[2]  # after "." and ".."
    env.vfs.releasedir(fh)
    fh = env.vfs.opendir(day[1].inode, ROOT)
    change = env.vfs.readdir(fh, 0)[-1]
    env.vfs.releasedir(fh)
    old = env.vfs.lookup(change[1].inode, b"f", ROOT)
    assert env.vfs.getxattr(old.inode, b"user.anysync.pinned", ROOT) == b"0"
    assert errno_of(env.vfs.setxattr, old.inode, b"user.anysync.pinned", b"1", 0, ROOT) == errno.EROFS


def test_reads_are_noted_and_flushed_in_batches(env: Env, clock: None) -> None:
    make_tree(env, 2)
    blob = blobs_of(env, b"d/f01")[0]
    store = env.replica.store
    written = store.blob_rows([blob])[blob].last_access_us
    env.vfs.reads.drop_cache()
    read_all(env.vfs, path_inode(env.vfs, b"d/f01"))
    assert store.blob_rows([blob])[blob].last_access_us == written  # noted in memory only
    env.vfs.cache_tick()
    assert store.blob_rows([blob])[blob].last_access_us > written


def test_missing_pinned_blobs_are_listed_for_the_background_fetcher(env: Env) -> None:
    make_tree(env, 3)
    confirm_all(env)
    env.vfs.setxattr(path_inode(env.vfs, b"d/f01"), b"user.anysync.evict", b"1", 0, ROOT)
    assert env.vfs.cache_missing_pinned(10) == []  # not pinned: nothing to fetch
    pin(env, b"d")
    assert env.vfs.cache_missing_pinned(10) == blobs_of(env, b"d/f01")


# ---------------------------------------------------------------------------------------------------- store
def test_pins_tables_appear_in_a_store_made_before_them(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store(str(path)).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE pins")
    db.execute("DROP TABLE pinned_blobs")
    db.commit()
    db.close()
    store = Store(str(path))
    try:
        assert store.pins(b"S" * 32) == [] and store.pinned_blob_ids(b"S" * 32) == set()
    finally:
        store.close()


def test_store_pin_queries(make_home: Callable[..., Unlocked]) -> None:
    unlocked = make_home("dev")
    replica = create_space(unlocked, "s")
    store, space = replica.store, replica.space_id
    a, b = b"a" * 16, b"b" * 16
    assert store.add_pin(space, b) and store.add_pin(space, a) and not store.add_pin(space, a)
    assert store.pins(space) == [a, b]
    store.remove_pins(space, [a])
    assert store.pins(space) == [b]
    x, y = b"x" * 32, b"y" * 32
    store.update_pinned_blobs(space, [x, y], [])
    store.update_pinned_blobs(space, [y], [x])
    assert store.pinned_blob_ids(space) == {y}
