"""Blob files on disk and the atomic-write helpers."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from anysyncfs.core import crypto
from anysyncfs.errors import IdMismatch, NotFound, StoreError
from anysyncfs.store.blobfiles import BlobFiles
from anysyncfs.store.files import atomic_write, read_bounded


def blob_of(n: int, seed: int = 0) -> tuple[bytes, bytes]:
    data = crypto.derive_key("anysyncfs 2026 test blob files", seed.to_bytes(4, "big"), n) if n else b""
    return crypto.blake3(data), data


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------------- files
def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"one")
    assert target.read_bytes() == b"one" and mode_of(target) == 0o600
    atomic_write(target, memoryview(b"two!"), mode=0o640)
    assert target.read_bytes() == b"two!" and mode_of(target) == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_disk_full_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old contents")
    real_write = os.write
    calls = [0]

    def failing_write(fd: int, data: bytes) -> int:
        calls[0] += 1
        if calls[0] == 1:
            return real_write(fd, bytes(data)[:3])  # a short write first, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(StoreError, match="disk full"):
        atomic_write(target, b"new contents that do not fit")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["f"]  # the temporary file is gone


def test_atomic_write_other_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError):
        atomic_write(tmp_path / "missing-dir" / "f", b"x")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreError, match="I/O error"):
        atomic_write(tmp_path / "g", b"x")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []

    def interrupted(fd: int, data: bytes) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "h", b"x")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_read_bounded(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"12345")
    assert read_bounded(p, 5) == b"12345"
    with pytest.raises(StoreError):
        read_bounded(p, 4)
    with pytest.raises(NotFound):
        read_bounded(tmp_path / "nope", 10)
    with pytest.raises(StoreError):
        read_bounded(tmp_path, 10)  # a directory


# ---------------------------------------------------------------------------------------------------- blob files
def test_put_get_layout(tmp_path: Path) -> None:
    store = BlobFiles(tmp_path / "blobs")
    blob_id, data = blob_of(100_000)
    store.put(blob_id, data)
    text = blob_id.hex()
    path = tmp_path / "blobs" / text[:2] / text[2:]
    assert path.read_bytes() == data and mode_of(path) == 0o600
    assert mode_of(tmp_path / "blobs") == 0o700 and mode_of(path.parent) == 0o700
    assert store.get(blob_id) == data
    assert store.has(blob_id) and store.size_of(blob_id) == len(data)
    empty_id, empty = blob_of(0)
    store.put(empty_id, empty)
    assert store.get(empty_id) == b""


def test_put_checks_the_id(tmp_path: Path) -> None:
    store = BlobFiles(tmp_path)
    blob_id, data = blob_of(1000)
    with pytest.raises(IdMismatch):
        store.put(blob_id, data + b"x")
    assert not store.has(blob_id) and list(store.iter_ids()) == []
    with pytest.raises(ValueError):
        store.put(b"short", data)
    with pytest.raises(StoreError):
        BlobFiles(tmp_path / "small", max_blob_len=10).put(blob_id, data)


def test_put_is_idempotent(tmp_path: Path) -> None:
    store = BlobFiles(tmp_path)
    blob_id, data = blob_of(5000)
    store.put(blob_id, data)
    path = store.path_of(blob_id)
    before = path.stat()
    store.put(blob_id, data)
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # not rewritten
    assert list(store.iter_ids()) == [blob_id]


def test_corrupted_file_is_detected_and_repaired(tmp_path: Path) -> None:
    store = BlobFiles(tmp_path)
    blob_id, data = blob_of(5000)
    store.put(blob_id, data)
    path = store.path_of(blob_id)
    bad = bytearray(data)
    bad[1234] ^= 0x10
    path.write_bytes(bytes(bad))
    with pytest.raises(IdMismatch):
        store.get(blob_id)
    path.write_bytes(data[:-1])
    with pytest.raises(IdMismatch):
        store.get(blob_id)
    store.put(blob_id, data)  # a damaged copy is replaced
    assert store.get(blob_id) == data


def test_missing_blob(tmp_path: Path) -> None:
    store = BlobFiles(tmp_path)
    blob_id, _ = blob_of(10)
    assert not store.has(blob_id)
    with pytest.raises(NotFound):
        store.get(blob_id)
    with pytest.raises(NotFound):
        store.size_of(blob_id)
    assert store.delete(blob_id) is False


def test_listing_delete_and_total(tmp_path: Path) -> None:
    store = BlobFiles(tmp_path)
    blobs = dict(blob_of(100 * (i + 1), seed=i) for i in range(20))
    for blob_id, data in blobs.items():
        store.put(blob_id, data)
    # stray files are ignored by listings
    (tmp_path / "zz").mkdir()
    (tmp_path / "README").write_text("x")
    some_dir = store.path_of(next(iter(blobs))).parent
    (some_dir / ".tmp-abc-123").write_bytes(b"partial")
    (some_dir / "not-hex").write_bytes(b"x")
    assert set(store.iter_ids()) == set(blobs)
    assert store.total_size() == sum(len(d) for d in blobs.values())
    victim = next(iter(blobs))
    assert store.delete(victim) is True
    assert not store.has(victim)
    assert set(store.iter_ids()) == set(blobs) - {victim}
    reopened = BlobFiles(tmp_path)
    assert set(reopened.iter_ids()) == set(blobs) - {victim}


def test_a_full_disk_refusing_a_new_blob_directory_is_disk_full(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On ext4 a new directory takes a block: the mkdir of a blob's shard directory is what a full disk refuses
    first. That is "disk full" (ENOSPC for the writer), not an I/O error (found by tests/fuse/test_5_faults.py on
    ext4: the writer got EIO)."""
    from anysyncfs.fs.errnos import errno_of

    store = BlobFiles(tmp_path / "blobs")
    blob_id, data = blob_of(100)
    real_mkdir = Path.mkdir

    def full_mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == tmp_path / "blobs":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", full_mkdir)
    with pytest.raises(StoreError, match="disk full") as refused:
        store.put(blob_id, data)
    assert errno_of(refused.value, resolved=True) == errno.ENOSPC
    monkeypatch.undo()
    store.put(blob_id, data)  # space again
    assert store.get(blob_id) == data
