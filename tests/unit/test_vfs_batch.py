"""Group commit in the Vfs (see anysyncfs.fs.batch): one open batch, provisional application, folding, holding
back files still being written, failure handling. The mount-level behaviour (timer, kill -9) is in
tests/fuse/test_4_group_commit.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from anysyncfs.core import ops
from anysyncfs.errors import StoreError
from anysyncfs.fs import batch as batch_mod
from anysyncfs.fs.batch import fold_ops, split_payloads
from anysyncfs.fs.vfs import ROOT_INODE, SetAttrRequest
from anysyncfs.replica.home import Unlocked
from tests.unit.test_vfs_support import ROOT, Env, errno_of, listing, make_env, path_inode, read_all, write_file


@pytest.fixture
def benv(make_home: Callable[..., Unlocked], tmp_path: Path) -> Iterator[Env]:
    e = make_env(make_home, tmp_path, batch_interval=0.2)
    yield e
    e.vfs.close()
    e.unlocked.home.close()


def fresh_canonical(env: Env) -> bytes:
    return env.replica.fresh_fold().canonical()


def test_many_operations_become_one_change(benv: Env) -> None:
    vfs = benv.vfs
    before = benv.changes()
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    for i in range(20):
        write_file(vfs, d.inode, b"f%d" % i, os.urandom(100 + i * 500))  # inline and blob contents
    vfs.rename(d.inode, b"f0", ROOT_INODE, b"moved", 0, ROOT)
    vfs.unlink(d.inode, b"f1", ROOT)
    # Everything is visible at once, nothing is committed yet.
    assert benv.changes() == before
    assert len(listing(vfs, d.inode)) == 18
    assert read_all(vfs, path_inode(vfs, b"d/f19")) is not None
    vfs.flush_batch()
    assert benv.changes() == before + 1
    assert benv.replica.tree.canonical() == fresh_canonical(benv)  # the undo + commit left exactly the fold
    assert sorted(listing(vfs, d.inode)) == sorted(b"f%d" % i for i in range(2, 20))
    benv.reopen()
    assert len(listing(benv.vfs, path_inode(benv.vfs, b"d"))) == 18


def test_reads_see_pending_content_and_attributes(benv: Env) -> None:
    vfs = benv.vfs
    data = os.urandom(50_000)
    attr = write_file(vfs, ROOT_INODE, b"f", data)
    vfs.setattr(attr.inode, SetAttrRequest(mode=0o600, mtime_ns=123, atime_ns=456), None, ROOT)
    got = vfs.getattr(attr.inode)
    assert (got.size, got.mode & 0o7777, got.mtime_ns, got.atime_ns) == (50_000, 0o600, 123, 456)
    assert read_all(vfs, attr.inode) == data
    vfs.flush_batch()
    got = vfs.getattr(attr.inode)
    assert (got.size, got.mode & 0o7777, got.mtime_ns) == (50_000, 0o600, 123)
    assert read_all(vfs, attr.inode) == data


def test_one_files_ops_fold(benv: Env) -> None:
    vfs = benv.vfs
    attr = write_file(vfs, ROOT_INODE, b"f", b"one")
    for mode in (0o600, 0o640, 0o644):
        vfs.setattr(attr.inode, SetAttrRequest(mode=mode), None, ROOT)
    fh = vfs.open(attr.inode, os.O_WRONLY | os.O_TRUNC, ROOT)
    vfs.write(fh, 0, b"two")
    vfs.release(fh)
    vfs.flush_batch()
    kinds = [type(op).__name__ for op in benv.last_ops()]
    # Create, one SetAttr for the three chmods, the last Write (the first was replaced whole).
    assert kinds == ["Create", "SetAttr", "Write"], kinds
    assert read_all(vfs, attr.inode) == b"two"
    assert vfs.getattr(attr.inode).mode & 0o7777 == 0o644
    assert benv.replica.tree.canonical() == fresh_canonical(benv)


def test_fold_ops_rules() -> None:
    n, m = os.urandom(16), os.urandom(16)
    c = ops.Content(size=1, inline=b"x")
    a1 = ops.SetAttr(n, mode=0o600, xattrs_set={b"user.a": b"1", b"user.b": b"1"})
    a2 = ops.SetAttr(n, uid=5, xattrs_del=[b"user.a"], xattrs_set={b"user.c": b"3"})
    merged = fold_ops([a1, a2])
    assert merged == [ops.SetAttr(n, mode=0o600, uid=5, xattrs_set={b"user.b": b"1", b"user.c": b"3"},
                                  xattrs_del=[b"user.a"])]
    # A Write between two SetAttrs of the node keeps all three (the second SetAttr's mtime must win).
    w = ops.Write(n, c, 1)
    assert fold_ops([a1, w, a2]) == [a1, w, a2]
    # A replaced Write goes, whatever lies between.
    w2 = ops.Write(n, c, 2)
    other = ops.SetAttr(m, mode=0o700)
    assert fold_ops([w, other, a1, w2]) == [other, a1, w2]


def test_a_file_still_being_written_is_held_back(benv: Env) -> None:
    vfs = benv.vfs
    before = benv.changes()
    done = write_file(vfs, ROOT_INODE, b"done", b"closed file")
    fh, open_attr = vfs.create(ROOT_INODE, b"open", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    vfs.write(fh, 0, b"half")
    vfs.flush_batch()  # the timer's commit: "open" stays in the batch
    assert benv.changes() == before + 1
    committed = benv.replica.fresh_fold()
    assert committed.resolve(b"done") is not None and committed.resolve(b"open") is None
    assert vfs.getattr(open_attr.inode).size == 4  # still visible here
    assert vfs.getattr(done.inode).size == len(b"closed file")
    vfs.write(fh, 4, b" and the rest")
    vfs.release(fh)
    vfs.flush_batch()
    assert benv.changes() == before + 2
    assert benv.replica.fresh_fold().resolve(b"open") is not None
    assert read_all(vfs, open_attr.inode) == b"half and the rest"
    assert benv.replica.tree.canonical() == fresh_canonical(benv)


def test_a_folder_time_set_after_a_create_is_not_undone_by_holding_the_file_back(benv: Env) -> None:
    """cp -a, tar and rsync set a folder's times after writing its files; the kernel may deliver a file's release
    after that. Holding the file's Create back to a later change would apply it after the folder's SetAttr and move
    the folder's mtime to the Create's time."""
    vfs = benv.vfs
    d = vfs.mkdir(ROOT_INODE, b"d", 0o755, ROOT)
    fh, _attr = vfs.create(d.inode, b"f", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    vfs.write(fh, 0, b"content")
    vfs.setattr(d.inode, SetAttrRequest(mtime_ns=1_000_000_000, atime_ns=1_000_000_000), None, ROOT)
    vfs.flush_batch()  # the file is still open: without the parent's SetAttr it would be held back
    vfs.release(fh)
    vfs.flush_batch()
    assert vfs.getattr(d.inode).mtime_ns == 1_000_000_000
    assert benv.replica.fresh_fold().canonical() == benv.replica.tree.canonical()
    assert read_all(vfs, path_inode(vfs, b"d/f")) == b"content"


def test_fsync_commits_its_own_file_and_a_forced_commit_everything(benv: Env) -> None:
    vfs = benv.vfs
    fh_a, a = vfs.create(ROOT_INODE, b"a", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    fh_b, b = vfs.create(ROOT_INODE, b"b", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    vfs.write(fh_a, 0, b"A")
    vfs.write(fh_b, 0, b"B")
    vfs.fsync(fh_a, False)
    folded = benv.replica.fresh_fold()
    assert folded.resolve(b"a") is not None and folded.resolve(b"b") is None
    vfs.fsyncdir(0, False)  # fsync of a directory: forced, b goes as it is
    assert benv.replica.fresh_fold().resolve(b"b") is not None
    vfs.release(fh_a)
    vfs.release(fh_b)


def test_a_failed_commit_keeps_the_batch(benv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vfs = benv.vfs
    before = benv.changes()
    attr = write_file(vfs, ROOT_INODE, b"f", os.urandom(20_000))

    def full(*_: object, **__: object) -> None:
        raise StoreError("disk full while writing the store")

    monkeypatch.setattr(benv.replica, "commit", full)
    assert errno_of(vfs.flush_batch) == 28  # ENOSPC
    assert benv.changes() == before
    assert vfs.getattr(attr.inode).size == 20_000  # still there, still pending
    monkeypatch.undo()
    vfs.flush_batch()
    assert benv.changes() == before + 1
    assert benv.replica.tree.canonical() == fresh_canonical(benv)


def test_a_large_batch_is_split_into_changes_in_one_transaction(benv: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vfs = benv.vfs
    before = benv.changes()
    monkeypatch.setattr(batch_mod, "PAYLOAD_BUDGET", 2000)
    for i in range(30):
        write_file(vfs, ROOT_INODE, b"f%02d" % i, b"x" * 300)
    op_list = [op for op_list in vfs._batch.op_lists for op in op_list]  # type: ignore[union-attr]
    parts = split_payloads(fold_ops(op_list), 2000)
    assert len(parts) > 3
    monkeypatch.setattr("anysyncfs.fs.vfs_base.split_payloads", lambda ops_: split_payloads(ops_, 2000))
    vfs.flush_batch()
    assert benv.changes() == before + len(parts)
    assert len(listing(vfs, ROOT_INODE)) == 30
    assert benv.replica.tree.canonical() == fresh_canonical(benv)


def test_a_change_made_under_the_open_batch_is_caught(benv: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever changes the replica must set the batch aside (mount_sync does for the sync engine). If something
    does not, the commit notices (heads moved under the batch), refolds instead of undoing, and loses nothing."""
    vfs = benv.vfs
    write_file(vfs, ROOT_INODE, b"pending", b"in the batch")
    outside = ops.Create(os.urandom(16), os.urandom(16), bytes(16), b"outside", ops.KIND_FILE, 0o644, 0, 0, 1)
    benv.replica.commit([outside])  # behind the Vfs's back, while the batch is open
    vfs.flush_batch()
    assert "changed under the open batch" in caplog.text
    assert benv.replica.tree.canonical() == fresh_canonical(benv)
    assert sorted(listing(vfs, ROOT_INODE)) == [b"outside", b"pending"]
    assert read_all(vfs, path_inode(vfs, b"pending")) == b"in the batch"


def _history_of(env: Env, name: bytes) -> list[bytes]:
    """The content of ``name`` after each committed change that wrote it, oldest first."""
    node = env.replica.tree.resolve(name)
    assert node is not None
    out = []
    for _change, op_list in env.replica.payloads():
        for op in op_list:
            if isinstance(op, ops.Write) and op.node == node.id:
                out.append(read_content(env, op.content))
    return out


def read_content(env: Env, content: ops.Content) -> bytes:
    return env.vfs.reads.read(content, 0, content.size)


@pytest.mark.parametrize("between", ["timer", "fsync of another file", "flush of a dup'd descriptor"])
def test_a_truncating_open_then_writes_is_one_change_with_the_final_content(benv: Env, between: str) -> None:
    """`echo x > f`: bash opens f with O_TRUNC, dup2()s it to stdout and closes the original (a FLUSH of the empty
    file), writes, closes. Whatever commits the batch in between, other devices get ONE change: the final
    content, never the empty intermediate (which made false conflicts on two offline devices)."""
    vfs = benv.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"old content")
    other = write_file(vfs, ROOT_INODE, b"other", b"o")
    vfs.flush_batch()
    before = benv.changes()
    fh = vfs.open(f.inode, os.O_WRONLY | os.O_TRUNC, ROOT)
    if between == "flush of a dup'd descriptor":
        vfs.flush(fh)
    assert vfs.getattr(f.inode).size == 0  # the truncation is visible here at once
    if between == "timer":
        vfs.flush_batch()
    elif between == "fsync of another file":
        fh_o = vfs.open(other.inode, os.O_WRONLY, ROOT)
        vfs.write(fh_o, 1, b"!")
        vfs.fsync(fh_o, False)
        vfs.release(fh_o)
    else:
        vfs.flush_batch()
    assert benv.replica.fresh_fold().resolve(b"f").size == len(b"old content")  # type: ignore[union-attr]
    vfs.write(fh, 0, b"x\n")
    vfs.flush(fh)
    vfs.flush_batch()  # still open: still held
    assert benv.replica.fresh_fold().resolve(b"f").size == len(b"old content")  # type: ignore[union-attr]
    vfs.release(fh)
    vfs.flush_batch()
    assert _history_of(benv, b"f") == [b"old content", b"x\n"]
    assert benv.changes() - before == (2 if between == "fsync of another file" else 1)
    assert benv.replica.tree.canonical() == fresh_canonical(benv)


def test_ftruncate_then_writes_is_one_change_and_fsync_of_the_file_commits_it(benv: Env) -> None:
    vfs = benv.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"0123456789")
    vfs.flush_batch()
    fh = vfs.open(f.inode, os.O_RDWR, ROOT)
    vfs.setattr(f.inode, SetAttrRequest(size=0), fh, ROOT)
    vfs.flush(fh)  # a descriptor closed in between (a dup, a child process)
    vfs.flush_batch()
    vfs.write(fh, 0, b"new")
    vfs.flush_batch()
    assert _history_of(benv, b"f") == [b"0123456789"]
    vfs.fsync(fh, False)  # asked for explicitly: the file goes as it is now
    assert _history_of(benv, b"f") == [b"0123456789", b"new"]
    vfs.release(fh)
    vfs.flush_batch()
    assert _history_of(benv, b"f") == [b"0123456789", b"new"]


def test_a_reader_keeping_the_file_open_does_not_hold_a_rewrite_back(benv: Env) -> None:
    vfs = benv.vfs
    f = write_file(vfs, ROOT_INODE, b"f", b"old")
    vfs.flush_batch()
    reader = vfs.open(f.inode, os.O_RDONLY, ROOT)  # tail -f, a viewer
    fh = vfs.open(f.inode, os.O_WRONLY | os.O_TRUNC, ROOT)
    vfs.flush(fh)
    vfs.write(fh, 0, b"new")
    vfs.release(fh)
    vfs.flush_batch()
    assert _history_of(benv, b"f") == [b"old", b"new"]
    vfs.release(reader)
