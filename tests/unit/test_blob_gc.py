"""Cleartext blob refs of changes (core/blob_refs.py) and their collection on a provider (replica/blob_gc.py).

The path through a real node over TCP is in tests/integration/test_node_gc.py; these pin the rules one by one."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from anysyncfs.core import acl, blob_refs, crypto, ops
from anysyncfs.core import content as content_mod
from anysyncfs.core.change import make_change, open_payload, parse_change
from anysyncfs.core.chunking import ChunkParams
from anysyncfs.errors import TooLarge
from anysyncfs.fs.errnos import errno_of
from anysyncfs.replica import Replica, blob_gc, create_space
from anysyncfs.replica.files import put_file, resolve
from anysyncfs.clock import now_us
from tests.unit.test_ledger import Node, _removal_setup, feed, new_home, raws_of



@pytest.fixture
def node(tmp_path: Path) -> Node:
    """A provider's store and blob files (the helper of test_ledger)."""
    n = Node(tmp_path)
    yield n
    n.store.close()

SMALL = ChunkParams(4096, 4096, 8192)
KEY_BASE = bytes(range(32))


def ref(n: int) -> ops.ChunkRef:
    return ops.ChunkRef(crypto.blake3(b"blob %d" % n), bytes(32), 100)


def write(content: ops.Content) -> ops.Write:
    return ops.Write(b"\x01" * 16, content, 0)


EXTENTS = ops.Content(size=1000, extents=[ops.Extent(0, ref(1)), ops.Extent(100, ref(2)), ops.Extent(200, ref(1))])
MANIFEST = ops.Content(size=10**6, manifest=ref(9))
UNLINK = ops.Unlink(b"\x02" * 16)


@pytest.mark.parametrize(
    ("payload", "listed", "ok"),
    [
        pytest.param([UNLINK], [], True, id="no-write-nothing-listed"),
        pytest.param([UNLINK], [ref(1).blob], False, id="no-write-something-listed"),
        pytest.param([write(ops.Content(size=5, inline=b"hello"))], [], True, id="inline"),
        pytest.param([write(EXTENTS)], [ref(1).blob, ref(2).blob], True, id="extents-exact"),
        pytest.param([write(EXTENTS)], [ref(1).blob], False, id="extents-one-missing"),
        pytest.param([write(EXTENTS)], [ref(1).blob, ref(2).blob, ref(3).blob], False, id="extents-one-extra"),
        pytest.param([write(MANIFEST)], [ref(9).blob], True, id="manifest-alone"),
        pytest.param([write(MANIFEST)], [ref(9).blob, ref(4).blob, ref(5).blob], True, id="manifest-and-chunks"),
        pytest.param([write(MANIFEST)], [ref(4).blob], False, id="manifest-unlisted"),
        pytest.param([write(MANIFEST), write(EXTENTS)], [ref(9).blob, ref(2).blob], False, id="two-writes-missing"),
        pytest.param([write(MANIFEST), write(EXTENTS)], [ref(9).blob, ref(1).blob, ref(2).blob], True,
                     id="two-writes"),
    ],
)
def test_check_refs_against_the_payload(payload: list[ops.Op], listed: list[bytes], ok: bool) -> None:
    assert (blob_refs.check_refs(sorted(listed), payload) is None) is ok


def test_writer_refs_open_the_manifest_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    stored: dict[bytes, bytes] = {}
    data = os.urandom(1_200_000)
    content = content_mod.build_content(data, KEY_BASE, stored.__setitem__, SMALL)
    assert content.manifest is not None
    extents = content_mod.load_extents(content, stored.__getitem__)
    expected = sorted({content.manifest.blob} | {e.chunk.blob for e in extents})
    assert blob_refs.writer_refs([write(content), UNLINK], stored.__getitem__) == expected
    assert set(expected) == set(stored)
    assert blob_refs.check_refs(expected, [write(content)]) is None
    monkeypatch.setattr(blob_refs, "MAX_BLOB_REFS", len(expected) - 1)
    with pytest.raises(TooLarge) as e:
        blob_refs.writer_refs([write(content)], stored.__getitem__)
    assert errno_of(e.value) == errno.EFBIG


def test_commit_lists_exactly_the_blobs_of_the_content(tmp_path: Path) -> None:
    r = create_space(new_home(tmp_path, "alice"), "s")
    change = put_file(r, "/f", os.urandom(4_500_000))  # > max chunk (4 MiB): always two chunks or more
    extents = resolve(r.tree, "/f").content.extents
    assert len(extents) >= 2 and list(change.header.blob_refs) == sorted({e.chunk.blob for e in extents})
    assert parse_change(change.raw).header.blob_refs == change.header.blob_refs
    assert put_file(r, "/small", b"tiny").header.blob_refs == ()


def test_a_blob_only_a_rejected_change_listed_is_collected(tmp_path: Path, node: Node) -> None:
    owner = create_space(new_home(tmp_path, "alice"), "shared")
    w, c, removal = _removal_setup(tmp_path, owner)
    w2 = put_file(w, "/w2", os.urandom(20_000))  # backdated: W has not heard of its removal
    assert w2.header.blob_refs
    c.ingest_batch(raws_of(w))
    before_removal = [raw for rid, raw in owner.acl_raws() if rid != acl.parse_record(removal).id]
    ledger = node.adopt(owner, acl_raws=before_removal)
    feed(ledger, raws_of(c), random.Random(1))
    for blob_id in w2.header.blob_refs:
        ledger.put_blob(blob_id, w.blobs.get(blob_id))
    assert ledger.collect_unreferenced(now_us() + 1).unlinked == 0  # w2 is accepted: its blobs are referenced
    assert ledger.add_acl_records([removal]) == 1 and w2.id in ledger.rejected_ids()
    kept = put_file(owner, "/kept", os.urandom(20_000))
    assert ledger.ingest_batch([kept.raw])[0].status == "applied"
    for blob_id in kept.header.blob_refs:
        ledger.put_blob(blob_id, owner.blobs.get(blob_id))
    later = now_us() + 1
    usage = ledger.usage()
    collected = ledger.collect_unreferenced(later)
    assert collected.unlinked == len(w2.header.blob_refs) == collected.files_deleted
    assert ledger.usage().blob_bytes == usage.blob_bytes - collected.unlinked_bytes
    assert not any(ledger.has_blob(b) or node.blobs.has(b) for b in w2.header.blob_refs)
    assert all(ledger.has_blob(b) for b in kept.header.blob_refs)


def test_files_shared_by_spaces_and_orphan_files(tmp_path: Path, node: Node) -> None:
    one = node.adopt(create_space(new_home(tmp_path, "a"), "one"))
    two = node.adopt(create_space(new_home(tmp_path, "b"), "two"))
    shared, data = crypto.blake3(b"shared" * 100), b"shared" * 100
    for ledger in (one, two):
        ledger.put_blob(shared, data)
    later = now_us() + 1
    assert one.collect_unreferenced(later) == blob_gc.Collected(1, len(data), 0, 0)  # two still links the file
    assert node.blobs.has(shared) and two.has_blob(shared) and not one.has_blob(shared)
    assert two.collect_unreferenced(later) == blob_gc.Collected(1, len(data), 1, len(data))
    assert not node.blobs.has(shared) and node.store.blob_size(shared) is None
    # A file written but never linked (a crash in between) goes once it is older than the grace period.
    orphan = b"orphan" * 10
    node.blobs.put(crypto.blake3(orphan), orphan)
    assert two.put_blob(crypto.blake3(b"linked" * 10), b"linked" * 10)
    assert blob_gc.sweep_orphan_files(node.store, node.blobs, now_us() - 60_000_000) == blob_gc.Collected()
    assert blob_gc.sweep_orphan_files(node.store, node.blobs, now_us() + 1) == blob_gc.Collected(0, 0, 1, 60)
    assert not node.blobs.has(crypto.blake3(orphan)) and node.blobs.has(crypto.blake3(b"linked" * 10))


def test_replica_refuses_to_show_a_lying_change(tmp_path: Path) -> None:
    r: Replica = create_space(new_home(tmp_path, "alice"), "s")
    honest = put_file(r, "/f", os.urandom(10_000))
    # The same payload under a header that leaves one blob out is stored but not applied.
    epoch, key = r.current_epoch_key()
    payload = open_payload(honest, key)
    lie = make_change(r.identity.account, r.identity.device_id, r.space_id, r.heads, r.dag.next_lamport(r.heads),
                      now_us(), r.acl.head, epoch, key, payload, blob_refs=honest.header.blob_refs[1:])
    canonical = r.tree.canonical()
    assert [x.status for x in r.ingest_batch([lie.raw])] == ["applied"]
    assert lie.id in r.dag and r.tree.canonical() == canonical == r.fresh_fold().canonical()
