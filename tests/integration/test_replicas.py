"""Several replicas of one space, each with its own home (store + blob files), exchanging real signed,
encrypted changes through Replica.ingest — the path sync will use. Members join through ACL invites."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anysyncfs.clock import now_us
from anysyncfs.core import acl, keys, ops
from anysyncfs.errors import BlobMissing, IdMismatch, IntegrityError, PermissionDenied
from anysyncfs.replica import Replica, SpaceData, adopt_space, create_space, fsck
from anysyncfs.replica.files import list_dir, put_file, read_file, resolve
from anysyncfs.replica.home import Home, Unlocked
from tests.conftest import PASSPHRASE, TEST_LOG2N


def new_home(root: Path, name: str) -> Unlocked:
    return Home(root / name, scrypt_log2_n=TEST_LOG2N).create_identity(keys.generate_phrase(), name, PASSPHRASE)


def invite_and_join(owner: Replica, joiner: Unlocked, role: acl.Role, name: str = "shared") -> Replica:
    """Owner invites; the joiner adopts the space from its header + ACL and joins with the invite key."""
    epoch, key = owner.current_epoch_key()
    invite_raw, invite_key = acl.make_invite(owner.identity.account, owner.acl, role, 0, key, now_us())
    owner.add_acl_record(invite_raw)
    records = [raw for _rid, raw in owner.store.acl_records(owner.space_id)]
    header = owner.store.space(owner.space_id).header
    replica = adopt_space(joiner, name, header, records)
    invite_id = acl.parse_record(invite_raw).id
    keys_from_invite = acl.epoch_keys(replica.acl, joiner.identity.account, [invite_key])
    join_raw = acl.make_join(joiner.identity.account, invite_key, replica.acl, invite_id,
                             keys_from_invite[epoch], now_us())
    replica.add_acl_record(join_raw)
    owner.add_acl_record(join_raw)
    assert replica.role == role
    return replica


def share_blobs(src: Replica, dst: Replica) -> None:
    """Stand-in for blob fetching (issue 4): copy every blob file src has into dst (verified by put)."""
    for blob_id in src.blobs.iter_ids():
        if not dst.blobs.has(blob_id):
            dst.blobs.put(blob_id, src.blobs.get(blob_id))


def deliver(dst: Replica, raws: list[bytes]) -> None:
    """Ingest changes in the given order, retrying those whose parents have not arrived yet."""
    waiting = list(raws)
    while waiting:
        progress = False
        later = []
        for raw in waiting:
            result = dst.ingest(raw)
            assert result.status != "rejected", result.reason
            if result.status == "missing-parents":
                later.append(raw)
            else:
                progress = True
        waiting = later
        assert progress or not waiting, "changes whose parents never arrive"


def all_changes(r: Replica) -> list[bytes]:
    return [raw for _cid, raw in r.store.iter_change_raws(r.space_id)]


def three_members(root: Path) -> list[Replica]:
    a = new_home(root, "alice")
    owner = create_space(a, "shared")
    b = invite_and_join(owner, new_home(root, "bob"), acl.Role.WRITER)
    c = invite_and_join(owner, new_home(root, "carol"), acl.Role.WRITER)
    # bob and carol learn of each other's joins
    for r in (b, c):
        for _rid, raw in owner.store.acl_records(owner.space_id):
            r.add_acl_record(raw)
    assert owner.acl.head == b.acl.head == c.acl.head
    return [owner, b, c]


def test_two_devices_exchange_files_and_verify(tmp_path: Path) -> None:
    a_home = new_home(tmp_path, "a")
    a = create_space(a_home, "s")
    put_file(a, "/docs/x.txt", b"hello")
    big = os.urandom(1_500_000)
    put_file(a, "/big.bin", big)
    b = invite_and_join(a, new_home(tmp_path, "b"), acl.Role.WRITER)
    deliver(b, all_changes(a))
    share_blobs(a, b)
    assert b"".join(read_file(b, resolve(b.tree, "/big.bin"))) == big
    assert b"".join(read_file(b, resolve(b.tree, "/docs/x.txt"))) == b"hello"
    assert a.tree.canonical() == b.tree.canonical()
    for r in (a, b):
        report = fsck(r.unlocked, r.space_id)
        assert report.problems == [], report.problems


def test_concurrent_writes_leave_the_same_winner_and_conflict_copy(tmp_path: Path) -> None:
    a, b, c = three_members(tmp_path)
    put_file(a, "/notes.txt", b"base")
    deliver(b, all_changes(a))
    put_file(a, "/notes.txt", b"from alice")
    put_file(b, "/notes.txt", b"from bob")
    for r in (a, b):
        deliver(r, all_changes(a) + all_changes(b))
        share_blobs(a, r)
        share_blobs(b, r)
    assert a.tree.canonical() == b.tree.canonical()
    names = [item.name for item in list_dir(a.tree, "/")]
    assert "notes.txt" in names
    copies = [n for n in names if ".sync-conflict-" in n]
    assert len(copies) == 1 and copies[0].startswith("notes.sync-conflict-") and copies[0].endswith(".txt")
    contents = {b"".join(read_file(a, resolve(a.tree, n))) for n in ("notes.txt", copies[0])}
    assert contents == {b"from alice", b"from bob"}


def test_reader_cannot_write_and_forged_changes_are_rejected(tmp_path: Path) -> None:
    a = create_space(new_home(tmp_path, "a"), "s")
    r = invite_and_join(a, new_home(tmp_path, "r"), acl.Role.READER)
    try:
        put_file(r, "/x", b"no")
    except PermissionDenied as e:
        assert "reader" in str(e)
    else:
        raise AssertionError("a reader wrote")
    put_file(a, "/ok", b"fine")
    raw = all_changes(a)[0]
    for i in (10, len(raw) // 2, len(raw) - 3):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        try:
            r.ingest(bytes(bad))
        except IntegrityError:
            pass
        else:
            raise AssertionError("a corrupted change was accepted")
    assert r.ingest(raw).status == "applied"


OPS = st.lists(
    st.tuples(
        st.integers(0, 2),  # which replica acts
        st.sampled_from(["put", "put", "rm", "mv"]),
        st.sampled_from(["a.txt", "b.txt", "d/c.txt"]),
        st.sampled_from(["a.txt", "b.txt", "d/c.txt"]),
        st.binary(min_size=0, max_size=64),
        st.booleans(),  # deliver everything pending to a random replica afterwards
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=OPS, seed=st.integers(0, 2**32 - 1))
def test_three_replicas_converge_in_any_delivery_order(steps: list, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        replicas = three_members(Path(tmp))
        written: list[bytes] = []
        for who, action, path, other, data, sync in steps:
            r = replicas[who]
            try:
                if action == "put":
                    payload = data + os.urandom(4)  # every write is distinguishable
                    put_file(r, path, payload)
                    written.append(payload)
                else:
                    node = resolve(r.tree, path)
                    entry = r.tree.live_entries(node.id)[0]
                    if action == "rm":
                        r.commit([ops.Unlink(entry.id)])
                    else:
                        parent = resolve(r.tree, os.path.dirname(other) or "/")
                        r.commit([ops.Rename(entry.id, parent.id, os.path.basename(other).encode())])
            except Exception as e:  # noqa: BLE001 - a path that does not exist on this replica is fine
                if type(e).__name__ not in ("NotFound", "NotADirectory", "IsADirectory", "NotARegularFile"):
                    raise
            if sync:
                dst = rng.choice(replicas)
                pool = [raw for src in replicas for raw in all_changes(src)]
                rng.shuffle(pool)
                deliver(dst, pool + pool[: len(pool) // 2])  # with duplicates
        pool = [raw for src in replicas for raw in all_changes(src)]
        for dst in replicas:
            order = pool[:]
            rng.shuffle(order)
            deliver(dst, order)
            for src in replicas:
                share_blobs(src, dst)
        canon = {r.tree.canonical() for r in replicas}
        assert len(canon) == 1
        assert replicas[0].fresh_fold().canonical() == replicas[0].tree.canonical()
        # every write that was not overwritten causally is retrievable somewhere
        visible = set()
        for r in replicas[:1]:
            for node in r.tree.nodes.values():
                if node.kind == ops.KIND_FILE and r.tree.visible(node.id):
                    visible.add(b"".join(read_file(r, node)))
        assert visible <= set(written)


def test_reopen_uses_the_cached_tree_without_replaying(tmp_path: Path, monkeypatch) -> None:
    unlocked = new_home(tmp_path, "a")
    r = create_space(unlocked, "s")
    for i in range(20):
        put_file(r, f"/d{i % 3}/f{i}.txt", b"x" * i)
    r.commit([ops.SetAttr(resolve(r.tree, "/d0/f0.txt").id, mode=0o600, xattrs_set={b"user.k": b"v"})])
    before = r.tree.canonical()
    space_id = r.space_id

    def no_replay(*_a, **_k):
        raise AssertionError("the DAG was replayed on reopen")

    monkeypatch.setattr(Replica, "fresh_fold", no_replay)
    again = Replica(unlocked, unlocked.home.store(), unlocked.home.blobs(), space_id)
    assert again.tree.canonical() == before
    node = resolve(again.tree, "/d0/f0.txt")
    assert node.mode == 0o600 and node.xattrs == {b"user.k": b"v"}


# ---------------------------------------------------------------------------------------------------- ingest_batch
def busy_writer(r: Replica, n: int) -> None:
    """``n`` changes of every kind: directories, files, renames and unlinks."""
    rng = random.Random(n)
    for i in range(n):
        live = [item.name for item in list_dir(r.tree, "/d")] if i else []
        if i == 0:
            put_file(r, "/d/first.txt", b"first")
        elif i % 7 == 3 and live:
            entry = r.tree.live_entries(resolve(r.tree, f"/d/{rng.choice(live)}").id)[0]
            r.commit([ops.Unlink(entry.id)])
        elif i % 5 == 2 and live:
            entry = r.tree.live_entries(resolve(r.tree, f"/d/{rng.choice(live)}").id)[0]
            r.commit([ops.Rename(entry.id, resolve(r.tree, "/d").id, f"renamed{i}.txt".encode())])
        else:
            put_file(r, f"/d/f{i % 40}.txt", os.urandom(8 + i % 50))


def count_refolds(monkeypatch) -> list[int]:
    calls = [0]
    real = Replica.fresh_fold

    def counting(self, heads=None):
        calls[0] += 1
        return real(self, heads)

    monkeypatch.setattr(Replica, "fresh_fold", counting)
    return calls


def test_ingest_batch_of_300_shuffled_changes_applies_without_refolding(tmp_path: Path, monkeypatch) -> None:
    a = create_space(new_home(tmp_path, "a"), "s")
    b = invite_and_join(a, new_home(tmp_path, "b"), acl.Role.WRITER)
    busy_writer(a, 300)
    raws = all_changes(a)
    assert len(raws) == 300
    random.Random(1).shuffle(raws)
    refolds = count_refolds(monkeypatch)
    results = b.ingest_batch(raws)
    assert [r.status for r in results] == ["applied"] * 300
    assert refolds[0] == 0  # b had no changes: everything sorts after its (empty) history
    assert b.heads == a.heads and b.change_ids() == a.change_ids()
    share_blobs(a, b)
    assert b.tree.canonical() == a.tree.canonical() == b.fresh_fold().canonical()
    assert {r.status for r in b.ingest_batch(raws)} == {"known"}
    report = fsck(b.unlocked, b.space_id)
    assert report.problems == [], report.problems


def test_ingest_batch_that_lands_inside_the_history_refolds_once(tmp_path: Path, monkeypatch) -> None:
    a = create_space(new_home(tmp_path, "a"), "s")
    b = invite_and_join(a, new_home(tmp_path, "b"), acl.Role.WRITER)
    put_file(b, "/from-b.txt", b"b")
    put_file(b, "/from-b.txt", b"bb")  # lamport 2: a's first change (lamport 1) sorts before it
    busy_writer(a, 300)
    raws = all_changes(a)
    random.Random(2).shuffle(raws)
    refolds = count_refolds(monkeypatch)
    assert {r.status for r in b.ingest_batch(raws)} == {"applied"}
    assert refolds[0] == 1
    monkeypatch.undo()
    statuses = [r.status for r in a.ingest_batch(all_changes(b))]
    assert statuses.count("applied") == 2 and statuses.count("known") == 300
    share_blobs(a, b)
    share_blobs(b, a)
    assert a.heads == b.heads and a.tree.canonical() == b.tree.canonical() == b.fresh_fold().canonical()
    # reopening finds the cached tree up to date
    again = Replica(b.unlocked, b.store, b.blobs, b.space_id)
    assert again.tree.canonical() == b.tree.canonical()


def test_ingest_batch_with_forged_bytes_stores_nothing(tmp_path: Path) -> None:
    a = create_space(new_home(tmp_path, "a"), "s")
    b = invite_and_join(a, new_home(tmp_path, "b"), acl.Role.WRITER)
    for i in range(5):
        put_file(a, f"/f{i}", b"x")
    raws = all_changes(a)
    bad = bytearray(raws[3])
    bad[len(bad) // 2] ^= 0x10
    before = (b.heads, b.tree.canonical(), b.store.count_changes(b.space_id))
    try:
        b.ingest_batch(raws[:3] + [bytes(bad)] + raws[4:])
    except IntegrityError:
        pass
    else:
        raise AssertionError("a forged change was accepted")
    assert (b.heads, b.tree.canonical(), b.store.count_changes(b.space_id)) == before
    assert b.rejected_ids() == set()
    assert [r.status for r in b.ingest_batch(raws)] == ["applied"] * 5
    assert b.ingest(raws[0]).status == "known"


def test_sync_interface_of_a_replica(tmp_path: Path) -> None:
    a = create_space(new_home(tmp_path, "a"), "s")
    b = invite_and_join(a, new_home(tmp_path, "b"), acl.Role.WRITER)
    big = os.urandom(300_000)
    put_file(a, "/big.bin", big)
    put_file(a, "/small.txt", b"small")
    assert isinstance(b, SpaceData)
    assert b.header_raw == a.header_raw == a.store.space(a.space_id).header
    assert b.acl_raws() == a.acl_raws() and b.acl_ids() == [rid for rid, _raw in a.acl_raws()]
    assert b.role_of(a.identity.account_id) == acl.Role.OWNER and b.role_of(b.identity.account_id) == acl.Role.WRITER
    got = b.ingest_batch(a.get_changes(a.change_ids(), 1 << 20))
    assert [r.status for r in got] == ["applied", "applied"] and b.change_ids() == a.change_ids()
    # the blobs are not here yet: reads name the blob they wait for
    node = resolve(b.tree, "/big.bin")
    try:
        b"".join(read_file(b, node))
    except BlobMissing as e:
        missing = e.blob_id
        assert a.has_blob(missing) and not b.has_blob(missing)
    else:
        raise AssertionError("read a blob that is not here")
    assert set(a.blob_ids()) == set(a.blobs.iter_ids()) and b.blob_ids() == []
    queued = b.store.count_pending_uploads(b.space_id)
    data = a.get_blob(missing)
    try:
        b.put_fetched_blob(missing, data[:-1] + bytes([data[-1] ^ 1]))
    except IdMismatch:
        pass
    else:
        raise AssertionError("stored a blob that does not match its ID")
    assert not b.has_blob(missing)
    assert b.put_fetched_blob(missing, data, remote_confirmed=True) is True
    assert b.put_blob(missing, data) is False
    assert b.store.is_remote_confirmed(missing) and b.blob_ids() == [missing]
    assert b.store.count_pending_uploads(b.space_id) == queued  # fetched blobs are not uploaded again
    for blob_id in a.blob_ids():
        b.put_blob(blob_id, a.get_blob(blob_id))
    assert b"".join(read_file(b, node)) == big
    # add_acl_records: a batch, verified first
    _epoch, key = a.current_epoch_key()
    invite1, _ = acl.make_invite(a.identity.account, a.acl, acl.Role.READER, 0, key, now_us())
    a.add_acl_record(invite1)
    invite2, _ = acl.make_invite(a.identity.account, a.acl, acl.Role.READER, 0, key, now_us())
    a.add_acl_record(invite2)
    forged = bytearray(invite2)
    forged[-1] ^= 1
    try:
        b.add_acl_records([invite1, bytes(forged)])
    except IntegrityError:
        pass
    else:
        raise AssertionError("a forged ACL record was accepted")
    assert b.acl_ids() == [rid for rid, _raw in a.acl_raws() if rid not in {acl.parse_record(invite1).id,
                                                                             acl.parse_record(invite2).id}]
    assert b.add_acl_records([invite2, invite1]) == 2 and b.acl.head == a.acl.head
    assert b.add_acl_records([invite1]) == 0
