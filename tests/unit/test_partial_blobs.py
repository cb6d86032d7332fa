"""Partial blobs as the read path uses them (protocol.md 50.9, 50.3 "Reads of a chunk this device lacks"): the
verified groups held are read like a blob file, the groups a read lacks are named, and the disk they take is
bounded (least recently recorded dropped first)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from anysyncfs.core import bao
from anysyncfs.net import range_fetch
from anysyncfs.store.partial import PartialBlobs

G = bao.GROUP_LEN


def record(partials: PartialBlobs, data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    root, nodes = bao.outboard_nodes(data)
    want = bao.wanted(len(data), ranges)
    slice_ = bao.encode_slice(lambda o, n: data[o:o + n], nodes, len(data), want)
    length, items = range_fetch.verify_slice(root, ranges, slice_, None, 1 << 24)
    partials.record(root, length, items)
    return root


def test_the_groups_held_are_read_like_a_file_and_the_missing_ones_named(tmp_path: Path) -> None:
    partials = PartialBlobs(tmp_path / "partial", max_blob_len=1 << 24)
    data = os.urandom(10 * G + 300)
    unknown = bao.root_hash(data)
    assert partials.read_ranges(unknown, [(0, 10)]) is None
    assert partials.missing_groups(unknown, [(G + 5, 2 * G)]) == (None, [1, 2, 3])
    root = record(partials, data, [(2 * G + 100, 2 * G)])  # groups 2, 3, 4 and the last (10)
    assert partials.missing_groups(root, [(G, 3 * G), (len(data) - 5, 100)]) == (len(data), [1])
    got = partials.read_ranges(root, [(2 * G + 7, 100), (4 * G, G), (len(data) - 5, 100), (len(data) + 3, 10)])
    assert got == (len(data), [data[2 * G + 7:][:100], data[4 * G:5 * G], data[-5:], b""])  # short at the end
    assert partials.read_ranges(root, [(G, 10)]) is None  # group 1 is not held


def test_prune_drops_the_least_recently_recorded_first(tmp_path: Path) -> None:
    partials = PartialBlobs(tmp_path / "partial", max_blob_len=1 << 24)
    roots = []
    for i in range(3):
        roots.append(record(partials, os.urandom(20 * G), [(0, 8 * G)]))
        past = time.time() - 100 + i  # oldest first
        os.utime(partials.root / f"{roots[-1].hex()}.have", (past, past))
    assert partials.prune(1 << 30) == 0
    assert all(partials.state(r) is not None for r in roots)
    one = sum(p.stat().st_blocks * 512 for p in partials.root.glob(f"{roots[2].hex()}*"))
    assert partials.prune(one) == 2
    assert [partials.state(r) is not None for r in roots] == [False, False, True]
    assert partials.prune(0) == 1 and not any(partials.root.iterdir())
