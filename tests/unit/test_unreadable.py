"""Issue 10, item 3, at the replica level: accepted changes whose payload does not open or decode are skipped.

A batch with such changes in the middle applies everything else (incrementally and through a refold), marks them
in the store in the same transaction, logs each once, and every later fold (reopen, refold, past versions,
history, fsck) skips them. Ops that decode but that the tree refuses are skipped one by one (hypothesis).
"""

from __future__ import annotations

import logging
import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import ids, keys, ops, tree
from anysyncfs.core.change import Change, make_change
from anysyncfs.replica import Replica, adopt_space, create_space
from anysyncfs.replica.files import history, list_dir, new_id, put_file
from anysyncfs.replica.fsck import fsck
from anysyncfs.clock import now_us
from anysyncfs.replica.treecache import TreeCodec
from anysyncfs.replica.unreadable import UNDECODABLE, UNOPENABLE


def sign(author: Replica, payload: bytes, parents: tuple[bytes, ...], lamport: int, key: bytes | None = None
         ) -> Change:
    epoch, real_key = author.current_epoch_key()
    return make_change(author.identity.account, author.identity.device_id, author.space_id, parents, lamport,
                       now_us(), author.acl.head, epoch, key or real_key, payload)


def create(name: bytes) -> bytes:
    return ops.encode_payload([ops.Create(new_id(), new_id(), ids.ROOT_NODE, name, ops.KIND_FILE, 0o644, 0, 0,
                                          time.time_ns())])


def chain(author: Replica, payloads: list[tuple[bytes, bytes | None]], parents: tuple[bytes, ...]) -> list[Change]:
    """Changes each on top of the previous one: (payload, key or None for the real one)."""
    out = []
    lamport = author.dag.next_lamport(parents)
    for payload, key in payloads:
        change = sign(author, payload, parents, lamport, key)
        out.append(change)
        parents, lamport = (change.id,), lamport + 1
    return out


def names(replica: Replica) -> set[str]:
    return {item.name for item in list_dir(replica.tree, "/")}


def copy_of(a: Replica, home) -> Replica:  # type: ignore[no-untyped-def]
    b = adopt_space(home, "docs", a.header_raw, [raw for _rid, raw in a.acl_raws()])
    b.ingest_batch(a.get_changes(a.change_ids(), 1 << 40))
    return b


def test_poison_in_the_middle_of_a_batch_is_skipped_and_the_rest_applied(make_home, caplog) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    put_file(a, "/base.txt", b"base")
    b = copy_of(a, make_home("b", phrase))  # the owner's second device (a second account: tests/integration)
    base = a.heads
    batch = chain(a, [(create(b"one"), None), (create(b"unopenable"), os.urandom(32)),
                      (b"\x93garbage", None), (create(b"two"), None)], base)
    unopenable, undecodable = batch[1].id, batch[2].id
    caplog.set_level(logging.WARNING)
    results = b.ingest_batch([c.raw for c in batch])
    assert [r.status for r in results] == ["applied"] * 4
    assert {"base.txt", "one", "two"} <= names(b) and "unopenable" not in names(b)
    assert b.unreadable_changes() == {unopenable: UNOPENABLE, undecodable: UNDECODABLE}
    assert b.heads == (batch[-1].id,) and set(c.id for c in batch) <= set(b.change_ids())
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len([w for w in warned if "unreadable" in w]) == 2
    assert all("garbage" not in w for w in warned)  # the reason is fixed text: no plaintext

    # Marks are in the store: a reopened replica knows them and logs nothing again; every fold skips them.
    caplog.clear()
    again = Replica(b.unlocked, b.store, b.blobs, b.space_id)
    assert again.unreadable_changes() == b.unreadable_changes()
    again.refold(revalidate=True)
    assert again.fresh_fold().canonical() == again.tree.canonical() == b.tree.canonical()
    past = again.materialise([undecodable])
    assert {e.name for e in past.entries.values() if e.live} == {b"base.txt", b"one"}
    assert [v.change for v in history(again, "/two")] == [batch[3].id]
    assert not [r for r in caplog.records if "unreadable" in r.getMessage()]

    # fsck: a warning per change, no problem (exit 0); a stale mark either way is a problem --repair fixes.
    report = fsck(b.unlocked, b.space_id)
    assert report.problems == [] and report.unreadable == 2 and len(report.warnings) == 2, report
    b.store.set_unreadable({unopenable: None, batch[0].id: "bogus"})
    report = fsck(b.unlocked, b.space_id)
    assert len(report.problems) == 2 and all("stale" in p for p in report.problems), report.problems
    report = fsck(b.unlocked, b.space_id, repair=True)
    assert report.repaired
    assert fsck(b.unlocked, b.space_id).problems == []
    assert b.store.unreadable_changes(b.space_id) == {unopenable: UNOPENABLE, undecodable: UNDECODABLE}


def test_poison_that_sorts_before_known_changes_goes_through_a_refold(make_home) -> None:
    phrase = keys.generate_phrase()
    a = create_space(make_home("a", phrase), "docs")
    put_file(a, "/base.txt", b"base")
    b = copy_of(a, make_home("b", phrase))
    base = a.heads
    # b first gets a long concurrent branch, so the poison batch sorts before it: the tree is refolded
    later = chain(a, [(create(b"later-%d" % i), None) for i in range(5)], base)
    assert [r.status for r in b.ingest_batch([c.raw for c in later])] == ["applied"] * 5
    poison = chain(a, [(b"", None), (create(b"after"), None), (create(b"x"), os.urandom(32))], base)
    assert [r.status for r in b.ingest_batch([c.raw for c in poison])] == ["applied"] * 3
    assert {"after", "later-4"} <= names(b) and "x" not in names(b)
    assert set(b.unreadable_changes()) == {poison[0].id, poison[2].id}
    assert b.fresh_fold().canonical() == b.tree.canonical()
    # and the author keeps committing on top of all of it
    a.ingest_batch([c.raw for c in later + poison])
    put_file(a, "/on-top.txt", b"fine")
    assert b.ingest_batch(a.get_changes([a.heads[0]], 1 << 20))[0].status == "applied"
    assert "on-top.txt" in names(b)


# ---------------------------------------------------------------------------------------------------- hostile ops
POOL = [ids.ROOT_NODE] + [bytes([i]) * 16 for i in range(1, 6)]  # few IDs: ops hit existing nodes and entries
ids_ = st.sampled_from(POOL)
names_ = st.sampled_from([b"a", b"b", b".", b"..", b"x/y", b"n\0ul", b"\xff\xfe", b"c" * 255, b"d.e" * 85])
times = st.integers(-(2**63), 2**63 - 1)
u32 = st.integers(0, 0xFFFFFFFF)
ref = st.builds(ops.ChunkRef, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32), u32)
contents = st.builds(
    ops.Content, st.integers(0, 2**63 - 1), st.binary(max_size=64),
    st.lists(st.builds(ops.Extent, st.integers(0, 2**63 - 1), ref), max_size=3), st.none() | ref)
op = st.one_of(
    st.builds(ops.Create, ids_, ids_, ids_, names_, st.integers(1, 7), st.integers(0, 0o7777), u32, u32, times,
              st.binary(max_size=16)),
    st.builds(ops.Link, ids_, ids_, ids_, names_),
    st.builds(ops.Write, ids_, contents, times),
    st.builds(ops.SetAttr, ids_, st.none() | st.integers(0, 0o7777), st.none() | u32, st.none() | u32,
              st.none() | times, st.none() | times,
              st.dictionaries(st.binary(min_size=1, max_size=8), st.binary(max_size=8), max_size=2),
              st.lists(st.binary(min_size=1, max_size=8), max_size=2)),
    st.builds(ops.Rename, ids_, ids_, names_),
    st.builds(ops.Unlink, ids_),
)


@settings(max_examples=300)
@given(st.lists(st.lists(op, max_size=8), min_size=1, max_size=8), st.integers(0, 2**62))
def test_ops_that_decode_never_break_the_fold(changes: list[list[ops.Op]], wall: int) -> None:
    """Whatever decodes (ops as they come out of a payload), the fold skips what it refuses and never raises; the
    result serialises into cache rows and back."""
    order: list[bytes] = []
    folded = []
    for i, op_list in enumerate(changes):
        decoded = ops.decode_payload(ops.encode_payload(op_list))
        cid = bytes([i + 1]) * 32
        folded.append((tree.ChangeInfo(cid, i + 1, b"\xaa" * 32, wall), decoded))
        order.append(cid)
    state = tree.fold(folded, lambda x, y: order.index(x) < order.index(y))
    state.canonical()
    for node in list(state.nodes.values()):
        if node.kind == ops.KIND_DIR:
            state.children(node.id)  # the names a listing shows (conflict names included)
    codec = TreeCodec(b"\x01" * 32, b"\x02" * 32)
    back, _rows = codec.decode_tree([(n.id, codec.encode_node(n)) for n in state.nodes.values()],
                                    [(e.id, codec.encode_entry(e)) for e in state.entries.values()])
    assert back.canonical() == state.canonical()
