"""VFS file data: staging and commits, sparse and huge files, truncation, re-chunking only what changed,
durability (fsync, reopen), disk full, corrupt and missing blobs."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import random
import stat
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anysyncfs.core import blob
from anysyncfs.core import content as content_mod
from anysyncfs.core import ops
from anysyncfs.errors import BlobMissing, StoreError
from anysyncfs.fs.fuse import fuse_errno
from anysyncfs.fs.commit import plan_regions
from anysyncfs.fs.staging import Intervals, Staged
from anysyncfs.fs.vfs import ROOT_INODE, Ctx, SetAttrRequest, Vfs
from anysyncfs.replica import Replica, create_space
from anysyncfs.replica.files import put_file
from anysyncfs.replica.home import Home
from tests.conftest import PASSPHRASE, TEST_LOG2N
from tests.unit.test_vfs_support import (  # noqa: F401  (env, small_env are fixtures)
    BOB,
    ROOT,
    SMALL_CHUNKS,
    Env,
    disk_usage,
    env,
    errno_of,
    make_env,
    path_inode,
    read_all,
    small_env,
    write_file,
)

HUGE = 999_999_999_999_999


def node_of(env: Env, name: bytes) -> ops.Content:
    state = env.replica.tree
    entry = state.lookup(bytes(16), name)
    assert entry is not None
    return state.nodes[entry.node].content


# ---------------------------------------------------------------------------------------------------- intervals
def test_intervals_merge_and_cut() -> None:
    iv = Intervals()
    iv.add(10, 20)
    iv.add(30, 40)
    iv.add(20, 25)  # touching merges
    assert iv.pairs() == [(10, 25), (30, 40)]
    iv.add(0, 5)
    iv.add(24, 31)
    assert iv.pairs() == [(0, 5), (10, 40)]
    assert list(iv.overlapping(3, 12)) == [(3, 5), (10, 12)]
    iv.cut(12)
    assert iv.pairs() == [(0, 5), (10, 12)]
    iv.cut(0)
    assert not iv


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=40), st.integers(0, 260))
def test_intervals_match_a_set_model(adds: list[tuple[int, int]], cut: int) -> None:
    iv = Intervals()
    model: set[int] = set()
    for start, length in adds:
        iv.add(start, start + length)
        model.update(range(start, start + length))
    iv.cut(cut)
    model = {x for x in model if x < cut}
    got = {x for s, e in iv.pairs() for x in range(s, e)}
    assert got == model
    pairs = iv.pairs()
    assert all(pairs[i][1] < pairs[i + 1][0] for i in range(len(pairs) - 1))  # disjoint, not touching


# ---------------------------------------------------------------------------------------------------- sparse
def test_sparse_truncate_to_a_quadrillion_costs_nothing(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"sparse", b"head")
    used_before = disk_usage(env.home_dir) + disk_usage(env.staging)
    tracemalloc.start()
    try:
        a = vfs.setattr(f.inode, SetAttrRequest(size=HUGE), None, ROOT)
        fh = vfs.open(f.inode, os.O_RDONLY, ROOT)
        assert vfs.read(fh, HUGE - 10, 100) == bytes(10)
        assert vfs.read(fh, HUGE // 2, 4096) == bytes(4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert vfs.read(fh, 0, 8) == b"head" + bytes(4)
    vfs.release(fh)
    assert a.size == HUGE and a.blocks <= 8
    assert peak < 4 << 20
    content = node_of(env, b"sparse")
    assert content.size == HUGE and [e.chunk.length for e in content.extents] == [4]  # "head", then one hole
    assert disk_usage(env.home_dir) + disk_usage(env.staging) - used_before < 2 << 20
    env.reopen()
    again = env.vfs.lookup(ROOT_INODE, b"sparse", ROOT)
    assert again.size == HUGE and again.blocks <= 8


def test_file_over_4gib_with_data_at_the_end(env: Env) -> None:
    vfs = env.vfs
    fh, f = vfs.create(ROOT_INODE, b"big", 0o644, os.O_RDWR | os.O_CREAT, ROOT)
    far = (5 << 30) + 12345
    tail = os.urandom(100_000)
    vfs.write(fh, 0, b"start")
    vfs.write(fh, far, tail)
    assert vfs.read(fh, far - 3, 10) == bytes(3) + tail[:7]
    vfs.release(fh)
    attr = vfs.getattr(f.inode)
    assert attr.size == far + len(tail)
    assert attr.blocks * 512 < 1 << 20  # only the data is stored
    assert disk_usage(env.home_dir) < 8 << 20
    env.reopen()
    inode = path_inode(env.vfs, b"big")
    fh = env.vfs.open(inode, os.O_RDONLY, ROOT)
    assert env.vfs.read(fh, far, len(tail)) == tail
    assert env.vfs.read(fh, 0, 5) == b"start"
    assert env.vfs.read(fh, 1 << 32, 64) == bytes(64)
    env.vfs.release(fh)


def test_write_at_an_offset_beyond_16_tib(env: Env) -> None:
    # ext4 limits a local file to 16 TiB: staging splits offsets over segment files.
    vfs = env.vfs
    fh, f = vfs.create(ROOT_INODE, b"far", 0o644, os.O_RDWR | os.O_CREAT, ROOT)
    off = 40 << 40
    vfs.write(fh, off, b"far away")
    assert vfs.read(fh, off - 2, 20) == b"\0\0far away"
    vfs.release(fh)  # committed; reading it whole would take forever, so read the end
    fh = vfs.open(f.inode, os.O_RDONLY, ROOT)
    assert vfs.read(fh, off, 100) == b"far away"
    vfs.release(fh)


# ---------------------------------------------------------------------------------------------------- truncation
def test_truncate_shrink_then_grow_reads_zeros(env: Env) -> None:
    vfs = env.vfs
    data = os.urandom(2 << 20)
    f = write_file(vfs, ROOT_INODE, b"f", data)
    fh = vfs.open(f.inode, os.O_RDWR, ROOT)
    vfs.setattr(f.inode, SetAttrRequest(size=1000), fh, ROOT)
    vfs.setattr(f.inode, SetAttrRequest(size=3000), fh, ROOT)
    expect = data[:1000] + bytes(2000)
    assert vfs.read(fh, 0, 5000) == expect  # staged view
    vfs.write(fh, 5000, b"Z")
    expect += bytes(2000) + b"Z"
    vfs.release(fh)
    assert read_all(vfs, f.inode) == expect  # committed view
    # Shrink a big file to something still chunked, then grow it: the cut chunk must not leak old bytes.
    g = write_file(vfs, ROOT_INODE, b"g", data)
    vfs.setattr(g.inode, SetAttrRequest(size=700_000), None, ROOT)
    vfs.setattr(g.inode, SetAttrRequest(size=1_500_000), None, ROOT)
    assert read_all(vfs, g.inode) == data[:700_000] + bytes(800_000)


def test_truncate_by_path_commits_at_once(env: Env) -> None:
    f = write_file(env.vfs, ROOT_INODE, b"f", b"0123456789")
    before = env.changes()
    a = env.vfs.setattr(f.inode, SetAttrRequest(size=4, mode=0o600), None, ROOT)
    assert env.changes() == before + 1 and a.size == 4
    assert [type(op) for op in env.last_ops()] == [ops.Write, ops.SetAttr]
    assert node_of(env, b"f").size == 4
    assert not list(env.staging.iterdir())
    same = env.vfs.setattr(f.inode, SetAttrRequest(size=4), None, ROOT)
    assert env.changes() == before + 1 and same.size == 4  # nothing changed: no change


# ---------------------------------------------------------------------------------------------------- re-chunking
def test_partial_overwrite_keeps_untouched_extents(env: Env) -> None:
    vfs = env.vfs
    data = bytearray(os.urandom(12 << 20))
    f = write_file(vfs, ROOT_INODE, b"f", bytes(data))
    old = content_mod.load_extents(node_of(env, b"f"), env.replica.get_blob)
    assert len(old) >= 5
    fh = vfs.open(f.inode, os.O_WRONLY, ROOT)
    vfs.write(fh, 6 << 20, b"patched!")
    vfs.release(fh)
    data[6 << 20 : (6 << 20) + 8] = b"patched!"
    new = content_mod.load_extents(node_of(env, b"f"), env.replica.get_blob)
    kept = {(e.offset, e.chunk.blob) for e in old} & {(e.offset, e.chunk.blob) for e in new}
    assert len(kept) >= len(old) - 3  # only the chunk holding the write (and its neighbour) were re-cut
    assert read_all(vfs, f.inode) == bytes(data)


def test_appending_in_sessions_chunks_like_one_shot(small_env: Env) -> None:
    vfs = small_env.vfs
    data = random.Random(7).randbytes(400_000)
    fh, f = vfs.create(ROOT_INODE, b"log", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    vfs.release(fh)
    for start in range(0, len(data), 70_000):
        fh = vfs.open(f.inode, os.O_WRONLY | os.O_APPEND, ROOT)
        vfs.write(fh, 0, data[start : start + 70_000])
        vfs.release(fh)  # one commit per session
    got = content_mod.load_extents(node_of(small_env, b"log"), small_env.replica.get_blob)
    blobs: dict[bytes, bytes] = {}
    one_shot = content_mod.build_content(data, small_env.replica.chunk_key_base(), blobs.__setitem__,
                                         small_env.replica.chunk_params)  # fmt: skip
    want = content_mod.load_extents(one_shot, blobs.__getitem__)
    assert [(e.offset, e.chunk.blob) for e in got] == [(e.offset, e.chunk.blob) for e in want]
    assert read_all(vfs, f.inode) == data


def test_manifest_content_and_edits(small_env: Env) -> None:
    vfs = small_env.vfs
    data = bytearray(random.Random(1).randbytes(2_000_000))
    f = write_file(vfs, ROOT_INODE, b"m", bytes(data))
    assert node_of(small_env, b"m").manifest is not None  # > 128 extents: a manifest blob
    fh = vfs.open(f.inode, os.O_RDWR, ROOT)
    for off in (0, 1_000_000, 1_999_990):
        vfs.write(fh, off, b"EDIT")
        data[off : off + 4] = b"EDIT"
    vfs.release(fh)
    assert read_all(vfs, f.inode, piece=4096) == bytes(data)


def test_zero_runs_become_holes(env: Env) -> None:
    data = os.urandom(300_000) + bytes(32 << 20) + os.urandom(300_000)
    f = write_file(env.vfs, ROOT_INODE, b"z", data)
    # Whole chunks of zeros are holes; only the chunks at the edges of the run (at most max_size each) hold zeros.
    assert f.blocks * 512 < 10 << 20
    assert read_all(env.vfs, f.inode) == data


def test_plan_regions_never_chunks_holes(tmp_path: Path) -> None:
    staged = Staged(bytes(16), ops.Content(size=0), 0, 0, tmp_path)
    try:
        staged.truncate(1 << 50, 1)
        staged.write(1 << 40, b"x", 2)
        regions, kept = plan_regions(staged, [])
        assert regions == [(1 << 40, (1 << 40) + 1)] and kept == []
    finally:
        staged.close()


_names = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(
    st.tuples(st.just("w"), st.integers(0, 300_000), st.integers(1, 60_000)),
    st.tuples(st.just("t"), st.integers(0, 400_000), st.just(0)),
    st.tuples(st.just("c"), st.just(0), st.just(0)),
), max_size=14))  # fmt: skip
def test_random_writes_truncates_and_commits_match_a_model(small_env: Env, steps: list[tuple[str, int, int]]) -> None:
    vfs = small_env.vfs
    name = b"model-%d" % next(_names)
    fh, f = vfs.create(ROOT_INODE, name, 0o644, os.O_RDWR | os.O_CREAT | os.O_EXCL, ROOT)
    model = bytearray()
    rng = random.Random(len(steps))
    try:
        for kind, a, b in steps:
            if kind == "w":
                data = rng.randbytes(b) if rng.random() < 0.7 else bytes(b)
                vfs.write(fh, a, data)
                if len(model) < a + b:
                    model.extend(bytes(a + b - len(model)))
                model[a : a + b] = data
            elif kind == "t":
                vfs.setattr(f.inode, SetAttrRequest(size=a), fh, ROOT)
                model = model[:a] + bytes(max(0, a - len(model)))
            else:
                vfs.flush(fh)
            assert vfs.getattr(f.inode).size == len(model)
            assert vfs.read(fh, 0, len(model) + 10) == bytes(model)
    finally:
        vfs.release(fh)
    assert read_all(vfs, f.inode, piece=30_000) == bytes(model)
    content_mod.check_content(node_of(small_env, name))


def test_attributes_set_on_an_open_file_commit_with_its_data(env: Env) -> None:
    # tar's pattern: create, write, futimens, fchown, fchmod, close -> two changes, not five.
    vfs = env.vfs
    before = env.changes()
    fh, f = vfs.create(ROOT_INODE, b"t", 0o600, os.O_WRONLY | os.O_CREAT | os.O_EXCL, ROOT)
    vfs.write(fh, 0, b"payload")
    vfs.setattr(f.inode, SetAttrRequest(mtime_ns=1_000_000_007), None, ROOT)
    vfs.setattr(f.inode, SetAttrRequest(uid=BOB.uid, gid=BOB.gid), None, ROOT)
    a = vfs.setattr(f.inode, SetAttrRequest(mode=0o640), None, ROOT)
    assert (a.mtime_ns, a.uid, a.gid, stat.S_IMODE(a.mode), a.size) == (1_000_000_007, BOB.uid, BOB.gid, 0o640, 7)
    assert vfs.getattr(f.inode) == a
    assert env.changes() == before + 1  # only the create so far
    assert read_all(vfs, f.inode, BOB) == b"payload"  # permission checks see the pending owner and mode
    assert errno_of(vfs.open, f.inode, os.O_RDONLY, Ctx(uid=3000, gid=3000)) == errno.EACCES
    vfs.release(fh)
    assert env.changes() == before + 2
    assert [type(op) for op in env.last_ops()] == [ops.Write, ops.SetAttr]
    c = vfs.getattr(f.inode)
    assert (c.mtime_ns, c.uid, c.gid, c.mode, c.size) == (a.mtime_ns, a.uid, a.gid, a.mode, a.size)
    assert c.ctime_ns >= a.ctime_ns - 1000  # the change's time (µs) stands for ctime now
    env.reopen()
    b = env.vfs.lookup(ROOT_INODE, b"t", ROOT)
    assert (b.mtime_ns, b.uid, b.gid, b.mode, b.size) == (a.mtime_ns, a.uid, a.gid, a.mode, a.size)


# ---------------------------------------------------------------------------------------------------- durability
def test_fsync_is_visible_to_a_fresh_replica(env: Env) -> None:
    vfs = env.vfs
    fh, _ = vfs.create(ROOT_INODE, b"durable", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    payload = os.urandom(1 << 20)
    vfs.write(fh, 0, payload)
    vfs.fsync(fh, False)
    # Another process's view: a fresh Home and Replica on the same directory, while the handle is still open.
    other = Home(env.home_dir, scrypt_log2_n=TEST_LOG2N)
    try:
        from anysyncfs.replica import open_replica

        replica = open_replica(other.unlock(PASSPHRASE), "s")
        entry = replica.tree.lookup(bytes(16), b"durable")
        assert entry is not None
        got = content_mod.read_range(replica.tree.nodes[entry.node].content, 0, len(payload), replica.get_blob)
        assert got == payload
    finally:
        other.close()
    vfs.release(fh)


def test_fsync_and_fsyncdir_make_commits_durable(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # The store commits with synchronous=NORMAL (atomic, durable later): fsync must sync it after committing.
    vfs = env.vfs
    synced_at: list[int] = []
    monkeypatch.setattr(env.replica, "sync", lambda: synced_at.append(env.changes()))
    fh, _ = vfs.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    vfs.write(fh, 0, b"data")
    before = env.changes()
    vfs.fsync(fh, True)
    assert synced_at == [before + 1]  # committed first, then synced
    dh = vfs.opendir(ROOT_INODE, ROOT)
    vfs.fsyncdir(dh, False)
    assert len(synced_at) == 2

    def full() -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(env.replica, "sync", full)
    assert errno_of(vfs.fsync, fh, False) == errno.ENOSPC
    vfs.releasedir(dh)
    vfs.release(fh)


def test_commit_all_commits_every_staged_file(env: Env) -> None:
    vfs = env.vfs
    handles = []
    for i in range(3):
        fh, _ = vfs.create(ROOT_INODE, b"f%d" % i, 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
        vfs.write(fh, 0, b"data %d" % i)
        handles.append(fh)
    before = env.changes()
    vfs.commit_all()
    assert env.changes() == before + 3
    for i in range(3):
        assert node_of(env, b"f%d" % i).inline == b"data %d" % i
    vfs.commit_all()
    assert env.changes() == before + 3
    for fh in handles:
        vfs.release(fh)


def test_reopen_keeps_tree_modes_times_xattrs(env: Env) -> None:
    vfs = env.vfs
    d = vfs.mkdir(ROOT_INODE, b"dir", 0o750, ROOT)
    f = write_file(vfs, d.inode, b"file", os.urandom(200_000), mode=0o604)
    vfs.symlink(d.inode, b"link", b"file", ROOT)
    vfs.link(f.inode, ROOT_INODE, b"hard", ROOT)
    vfs.setattr(f.inode, SetAttrRequest(uid=123, gid=456, atime_ns=111_222_333_444, mtime_ns=555_666_777_888), None,
                ROOT)  # fmt: skip
    vfs.setxattr(f.inode, b"user.note", b"\x00binary\xff", 0, ROOT)
    vfs.setxattr(d.inode, b"user.dir", b"yes", 0, ROOT)

    def snapshot(v: Vfs) -> dict[bytes, tuple[object, ...]]:
        out = {}
        for path in (b"", b"dir", b"dir/file", b"dir/link", b"hard"):
            inode = path_inode(v, path)
            a = v.getattr(inode)
            x = {n: v.getxattr(inode, n, ROOT) for n in v.listxattr(inode, ROOT)} if path != b"dir/link" else {}
            out[path] = (a.inode, a.mode, a.nlink, a.uid, a.gid, a.size, a.atime_ns, a.mtime_ns, a.ctime_ns, x)
        return out

    want = snapshot(vfs)
    data = read_all(vfs, f.inode)
    env.reopen()
    assert snapshot(env.vfs) == want
    assert read_all(env.vfs, path_inode(env.vfs, b"hard")) == data
    assert env.vfs.readlink(path_inode(env.vfs, b"dir/link"), ROOT) == b"file"


def test_leftover_staging_files_are_removed(env: Env) -> None:
    env.staging.mkdir(exist_ok=True)
    (env.staging / "deadbeef.0.stage").write_bytes(b"stale")
    env.reopen()
    assert not (env.staging / "deadbeef.0.stage").exists()


# ---------------------------------------------------------------------------------------------------- failures
def test_enospc_from_the_blob_store_reaches_the_writer(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vfs = env.vfs
    original = os.urandom(100_000)
    f = write_file(vfs, ROOT_INODE, b"f", original)
    committed = node_of(env, b"f")

    def full(*_: object, **__: object) -> None:
        raise StoreError("disk full while write /blobs/xx")

    fh = vfs.open(f.inode, os.O_WRONLY, ROOT)
    vfs.write(fh, 0, os.urandom(50_000))  # staging still works
    monkeypatch.setattr(env.replica.blobs, "put", full)
    before = env.changes()
    assert errno_of(vfs.flush, fh) == errno.ENOSPC
    assert errno_of(vfs.fsync, fh, False) == errno.ENOSPC
    assert env.changes() == before and node_of(env, b"f") == committed  # nothing committed, nothing damaged
    monkeypatch.undo()
    vfs.flush(fh)  # the staged writes were kept: they commit once there is room
    assert env.changes() == before + 1
    vfs.release(fh)


def test_enospc_from_sqlite_reaches_the_writer(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"committed")

    def full(*_: object, **__: object) -> None:
        raise StoreError("store write failed: disk full")

    fh = vfs.open(f.inode, os.O_WRONLY, ROOT)
    vfs.write(fh, 0, b"C")
    monkeypatch.setattr(env.replica.store, "add_change", full)
    assert errno_of(vfs.release, fh) == errno.ENOSPC
    assert errno_of(vfs.mkdir, ROOT_INODE, b"d", 0o755, ROOT) == errno.ENOSPC
    assert node_of(env, b"f").inline == b"committed"
    monkeypatch.undo()
    vfs.commit_all()  # the staged write outlived its handle and commits now
    assert node_of(env, b"f").inline == b"Committed"


def test_enospc_on_a_really_full_disk(make_home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True,
                             check=False)  # fmt: skip
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here")
    home = None
    vfs = None
    try:
        home = Home(mnt / "home", scrypt_log2_n=TEST_LOG2N)
        from anysyncfs.core import keys

        unlocked = home.create_identity(keys.generate_phrase(), "dev", PASSPHRASE)
        replica = create_space(unlocked, "s")
        vfs = Vfs(replica, staging_dir=tmp_path / "staging")  # staging on the big disk: the store fills up
        keep = write_file(vfs, ROOT_INODE, b"keep", b"precious" * 1000)
        fh, f = vfs.create(ROOT_INODE, b"fill", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
        vfs.write(fh, 0, os.urandom(12 << 20))
        assert errno_of(vfs.fsync, fh, False) == errno.ENOSPC
        vfs.setattr(f.inode, SetAttrRequest(size=0), fh, ROOT)
        vfs.release(fh)
        assert read_all(vfs, keep.inode) == b"precious" * 1000
    finally:
        if vfs is not None:
            vfs.close()
        if home is not None:
            home.close()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_corrupt_blob_gives_eio_and_one_log_line(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A flipped byte in segment 2 of the (one) chunk's blob file: reads of that segment give EIO with one log line,
    reads of the other segments still return the right bytes (each segment is authenticated on its own)."""
    data = os.urandom(300_000)
    f = write_file(env.vfs, ROOT_INODE, b"f", data)
    env.reopen()  # no cached plaintext
    # The first chunk (random data: stored uncompressed) covers at least 256 KiB, the chunker's minimum: the keyed
    # chunker may cut the rest into a second one.
    extent = node_of(env, b"f").extents[0]
    assert extent.offset == 0 and extent.chunk.length >= 4 * blob.SEGMENT_SIZE
    path = env.replica.blobs.path_of(extent.chunk.blob)
    raw = bytearray(path.read_bytes())
    raw[blob.HEADER_LEN + 2 * (blob.SEGMENT_SIZE + blob.TAG_LEN) + 100] ^= 0x40
    path.write_bytes(bytes(raw))
    fh = env.vfs.open(path_inode(env.vfs, b"f"), os.O_RDONLY, ROOT)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert errno_of(env.vfs.read, fh, 2 * blob.SEGMENT_SIZE + 4096, 4096) == errno.EIO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    assert env.vfs.read(fh, 0, 4096) == data[:4096]
    assert env.vfs.read(fh, 3 * blob.SEGMENT_SIZE, 4096) == data[3 * blob.SEGMENT_SIZE :][:4096]
    assert errno_of(env.vfs.read, fh, 0, 300_000) == errno.EIO  # a read spanning it fails whole
    env.vfs.release(fh)
    assert f.size == 300_000


def test_truncated_blob_file_gives_eio(env: Env) -> None:
    """A blob file cut short (even after the segments a read needs) gives EIO, never wrong or short bytes."""
    write_file(env.vfs, ROOT_INODE, b"f", os.urandom(300_000))
    env.reopen()
    extent = node_of(env, b"f").extents[0]  # at least 256 KiB (the chunker's minimum): covers the read below
    path = env.replica.blobs.path_of(extent.chunk.blob)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 1])
    fh = env.vfs.open(path_inode(env.vfs, b"f"), os.O_RDONLY, ROOT)
    assert errno_of(env.vfs.read, fh, 0, 4096) == errno.EIO
    env.vfs.release(fh)


def test_missing_blob_names_the_blob_to_fetch(env: Env) -> None:
    """A read of content this device lacks raises BlobMissing with the blob's ID (the FUSE adapter fetches it and
    retries, or answers EIO: see fuse_errno)."""
    write_file(env.vfs, ROOT_INODE, b"f", os.urandom(100_000))
    env.reopen()
    ids_before = set(env.replica.blobs.iter_ids())
    for blob_id in ids_before:
        env.replica.blobs.delete(blob_id)
    inode = path_inode(env.vfs, b"f")
    assert env.vfs.getxattr(inode, b"user.anysync.state", ROOT) == b"remote-only"
    fh = env.vfs.open(inode, os.O_RDONLY, ROOT)
    with pytest.raises(BlobMissing) as caught:
        env.vfs.read(fh, 0, 10)
    assert caught.value.blob_id in ids_before
    assert fuse_errno(caught.value) == errno.EIO
    env.vfs.release(fh)


def test_content_unchanged_and_changed_inodes(env: Env) -> None:
    vfs = env.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"v1")
    fh = vfs.open(f.inode, os.O_RDWR, ROOT)
    assert vfs.content_unchanged(fh)  # the kernel saw this content at create and wrote through its cache
    vfs.write(fh, 0, b"v2")
    vfs.release(fh)
    fh = vfs.open(f.inode, os.O_RDONLY, ROOT)
    assert vfs.content_unchanged(fh)
    vfs.release(fh)
    assert vfs.take_landed() == ([], [])  # local changes need no invalidation
    # A change that did not come through this Vfs (another process of the device; sync delivers them alike): the
    # kernel must drop its cache.
    home = env.unlocked.home
    put_file(Replica(env.unlocked, home.store(), home.blobs(), env.replica.space_id), "f", b"from elsewhere")
    assert vfs.pick_up_commits()
    assert vfs.take_landed() == ([f.inode], [])
    assert vfs.take_landed() == ([], [])
    fh = vfs.open(f.inode, os.O_RDONLY, ROOT)
    assert not vfs.content_unchanged(fh)
    assert vfs.read(fh, 0, 100) == b"from elsewhere"
    vfs.release(fh)


def test_staged_bytes_are_encrypted_on_disk(env: Env) -> None:
    """Uncommitted writes never reach the disk as plaintext, and read back (and commit) exactly."""
    marker = b"STAGED-PLAINTEXT-MARKER-" + os.urandom(6).hex().encode()
    data = marker * 2000 + b"tail"
    vfs = env.vfs
    f = vfs.create(ROOT_INODE, b"secret.txt", 0o644, os.O_RDWR, ROOT)
    fh, inode = f[0], f[1].inode
    vfs.write(fh, 0, data[:5000])
    vfs.write(fh, 5000, data[5000:])
    vfs.write(fh, 3, b"XY")  # an unaligned rewrite inside the range
    expected = data[:3] + b"XY" + data[5:]
    on_disk = b"".join(p.read_bytes() for p in env.staging.rglob("*") if p.is_file())
    assert len(on_disk) >= len(data)  # the bytes are staged...
    assert marker not in on_disk and marker[:12] not in on_disk  # ...but not readable
    assert vfs.read(fh, 0, len(data) + 10) == expected
    assert vfs.read(fh, 7, 50) == expected[7:57]
    vfs.release(fh)
    fh = vfs.open(inode, os.O_RDONLY, ROOT)
    assert vfs.read(fh, 0, len(data)) == expected
    vfs.release(fh)
