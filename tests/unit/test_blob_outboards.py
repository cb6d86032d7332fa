"""Outboards stored with blob files (store/blobfiles.py, protocol.md 50.8): written with the blob, rebuilt when
missing or damaged, removed with it, and the verified slices served from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anysyncfs.core import bao, crypto
from anysyncfs.errors import IdMismatch
from anysyncfs.store.blobfiles import BlobFiles


def _put(files: BlobFiles, size: int) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    blob_id = crypto.blake3(data)
    files.put(blob_id, data)
    return blob_id, data


def test_outboard_written_with_the_blob_and_removed_with_it(tmp_path: Path) -> None:
    files = BlobFiles(tmp_path)
    small, _ = _put(files, bao.GROUP_LEN)
    big, data = _put(files, 100_000)
    assert not Path(str(files.path_of(small)) + ".ob").exists()  # one group: the outboard is only the length
    ob = Path(str(files.path_of(big)) + ".ob")
    assert ob.read_bytes() == bao.outboard_nodes(data)[1]
    assert ob.stat().st_size == 6 * 64 <= len(data) / 256
    assert sorted(files.iter_ids()) == sorted([small, big])  # outboard files are not blobs
    assert files.outboard(big) == (len(data), ob.read_bytes())
    assert files.delete(big) and not ob.exists()


def test_missing_or_damaged_outboard_is_rebuilt_and_fsck_sees_it(tmp_path: Path) -> None:
    files = BlobFiles(tmp_path)
    blob_id, data = _put(files, 70_000)
    ob = Path(str(files.path_of(blob_id)) + ".ob")
    good = ob.read_bytes()
    assert files.check_outboard(blob_id) is None
    ob.write_bytes(good[:-1] + bytes([good[-1] ^ 0x80]))
    assert "damaged" in (files.check_outboard(blob_id) or "")
    assert files.outboard(blob_id)[1] == good and ob.read_bytes() == good  # rebuilt on use
    ob.unlink()
    assert files.check_outboard(blob_id) == "has no outboard file"
    assert files.check_outboard(blob_id, repair=True) == "has no outboard file"
    assert ob.read_bytes() == good and files.check_outboard(blob_id) is None
    ob.unlink()
    files.put(blob_id, data)  # a blob stored again gets its missing outboard back
    assert ob.read_bytes() == good


def test_read_slice_serves_verified_groups_and_refuses_a_damaged_file(tmp_path: Path) -> None:
    files = BlobFiles(tmp_path)
    blob_id, data = _put(files, 5 * bao.GROUP_LEN + 100)
    ranges = [(2 * bao.GROUP_LEN + 5, 4096)]
    sl = files.read_slice(blob_id, ranges)
    assert bao.decode_slice(blob_id, sl, ranges, expected_length=len(data)) == data[ranges[0][0]:][:4096]
    # groups 2 and 5 (the last); parent nodes: the root, [0,4), [2,4), [4,6)
    assert len(sl) == 8 + 4 * 64 + bao.GROUP_LEN + 100
    with pytest.raises(bao.RangeOutside):
        files.read_slice(blob_id, [(len(data), 1)])
    path = files.path_of(blob_id)
    raw = bytearray(path.read_bytes())
    raw[2 * bao.GROUP_LEN + 9] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IdMismatch):
        files.read_slice(blob_id, ranges)
    assert files.read_slice(blob_id, [(0, 10)])  # the groups that are intact are still served


def test_nodes_given_with_a_blob_are_checked_not_trusted(tmp_path: Path) -> None:
    files = BlobFiles(tmp_path)
    data = os.urandom(3 * bao.GROUP_LEN + 1)
    blob_id = crypto.blake3(data)
    _, nodes = bao.outboard_nodes(data)
    files.put(blob_id, data, nodes=nodes)
    assert Path(str(files.path_of(blob_id)) + ".ob").read_bytes() == nodes
    files.delete(blob_id)
    forged = nodes[:-1] + bytes([nodes[-1] ^ 1])
    files.put(blob_id, data, nodes=forged)  # a wrong outboard is replaced by the computed one
    assert Path(str(files.path_of(blob_id)) + ".ob").read_bytes() == nodes


def test_outboard_left_out_by_put_is_written_by_make_durable(tmp_path: Path) -> None:
    """The mount's write path: put without the outboard, make_durable writes it (from the file, checked)."""
    files = BlobFiles(tmp_path)
    blobs = [os.urandom(n) for n in (bao.GROUP_LEN, 70_000, 300_000, 1 << 20)]
    ids = [crypto.blake3(b) for b in blobs]
    for blob_id, data in zip(ids, blobs):
        files.put(blob_id, data, verified=True, durable=False, outboard=False)
    obs = [Path(str(files.path_of(b)) + ".ob") for b in ids]
    assert not any(ob.exists() for ob in obs)
    with pytest.raises(ValueError):
        files.put(ids[1], blobs[1], outboard=False)  # durable puts always carry their outboard
    files.make_durable(ids)
    assert not obs[0].exists()  # one group: no outboard
    for blob_id, data, ob in zip(ids[1:], blobs[1:], obs[1:]):
        assert ob.read_bytes() == bao.outboard_nodes(data)[1]
        assert files.check_outboard(blob_id) is None


def test_make_durable_refuses_a_damaged_blob_without_outboard(tmp_path: Path) -> None:
    files = BlobFiles(tmp_path)
    data = os.urandom(100_000)
    blob_id = crypto.blake3(data)
    files.put(blob_id, data, verified=True, durable=False, outboard=False)
    path = files.path_of(blob_id)
    damaged = bytearray(path.read_bytes())
    damaged[5] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(IdMismatch):
        files.make_durable([blob_id])
    assert not Path(str(path) + ".ob").exists()
