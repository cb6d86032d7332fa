"""The provider's keyless ledger (anysyncfs/replica/ledger.py) and the store additions sync needs (schema 2).

Spaces, members and changes are real: made by Replica objects in throwaway homes, signed and encrypted."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest

from anysyncfs.clock import now_us
from anysyncfs.core import acl, crypto, keys, ops
from anysyncfs.core.blob import MAX_BLOB_LEN
from anysyncfs.core.change import make_change, parse_change
from anysyncfs.errors import DecodeError, IdMismatch, IntegrityError, NotFound, StoreError
from anysyncfs.replica import IngestResult, Ledger, QuotaExceeded, Replica, SpaceData, Usage, adopt_space, create_space
from anysyncfs.replica.files import list_dir, put_file
from anysyncfs.replica.ledger import load_quota_book, measure_usage
from anysyncfs.replica.quota import QuotaBook, QuotaPolicy
from anysyncfs.replica.home import Home, Unlocked
from anysyncfs.store import schema
from anysyncfs.store.blobfiles import BlobFiles
from anysyncfs.store.db import IN_BATCH, Store
from tests.conftest import PASSPHRASE, TEST_LOG2N


# ---------------------------------------------------------------------------------------------------- helpers
def new_home(root: Path, name: str) -> Unlocked:
    return Home(root / name, scrypt_log2_n=TEST_LOG2N).create_identity(keys.generate_phrase(), name, PASSPHRASE)


def join(owner: Replica, joiner: Unlocked, role: acl.Role) -> Replica:
    """Owner invites; the joiner adopts the space and joins with the invite key; the owner learns the join."""
    epoch, key = owner.current_epoch_key()
    invite_raw, invite_key = acl.make_invite(owner.identity.account, owner.acl, role, 0, key, now_us())
    owner.add_acl_record(invite_raw)
    replica = adopt_space(joiner, "shared", owner.header_raw, [raw for _rid, raw in owner.acl_raws()])
    epoch_keys = acl.epoch_keys(replica.acl, joiner.identity.account, [invite_key])
    join_raw = acl.make_join(joiner.identity.account, invite_key, replica.acl, acl.parse_record(invite_raw).id,
                             epoch_keys[epoch], now_us())
    replica.add_acl_record(join_raw)
    owner.add_acl_record(join_raw)
    return replica


class Node:
    """A provider's store and blob files (one per test), holding any number of spaces."""

    def __init__(self, root: Path) -> None:
        self.store = Store(str(root / "node.db"))
        self.blobs = BlobFiles(root / "node-blobs")

    def adopt(self, source: Replica, *, quota: int | None = None, acl_raws: list[bytes] | None = None) -> Ledger:
        records = acl_raws if acl_raws is not None else [raw for _rid, raw in source.acl_raws()]
        return Ledger.adopt(self.store, self.blobs, source.header_raw, records, quota_bytes=quota)


def raws_of(r: Replica) -> list[bytes]:
    return [raw for _cid, raw in r.store.iter_change_raws(r.space_id)]


def feed(target: Ledger | Replica, raws: list[bytes], rng: random.Random, *, batch: int = 7) -> list[IngestResult]:
    """Deliver in shuffled batches, re-sending what waited for parents until everything settles."""
    waiting = raws[:]
    results: list[IngestResult] = []
    while waiting:
        rng.shuffle(waiting)
        later = []
        progress = False
        for i in range(0, len(waiting), batch):
            part = waiting[i : i + batch]
            for raw, res in zip(part, target.ingest_batch(part)):
                if res.status == "missing-parents":
                    later.append(raw)
                else:
                    progress = True
                    results.append(res)
        assert progress or not later, "changes whose parents never arrive"
        waiting = later
    return results


def forged_change(source: Replica, author: crypto.SigningKey, *, parents: tuple[bytes, ...] | None = None,
                  acl_head: bytes | None = None) -> bytes:
    """A well-formed change signed by ``author`` on top of ``source``'s heads (the epoch key is the real one)."""
    epoch, key = source.current_epoch_key()
    parents = source.heads if parents is None else parents
    lamport = source.dag.next_lamport(parents)
    change = make_change(author, author.public, source.space_id, parents, lamport, now_us(),
                         acl_head or source.acl.head, epoch, key, ops.encode_payload([]))
    return change.raw


def acl_usage(r: Replica) -> tuple[int, int]:
    """(records, bytes) of a replica's ACL records: what they occupy on a provider holding the space."""
    raws = [raw for _rid, raw in r.acl_raws()]
    return len(raws), sum(map(len, raws))


def blob(n: int = 1000) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    return crypto.blake3(data), data


@pytest.fixture
def owner(tmp_path: Path) -> Replica:
    return create_space(new_home(tmp_path, "alice"), "shared")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(tmp_path)
    yield n
    n.store.close()


# ---------------------------------------------------------------------------------------------------- ledger
def test_ledger_takes_a_replicas_changes_in_any_order(tmp_path: Path, owner: Replica, node: Node) -> None:
    for i in range(40):
        put_file(owner, f"/d{i % 4}/f{i}.txt", os.urandom(50 + i))
    raws = raws_of(owner)
    ledger = node.adopt(owner)
    assert isinstance(ledger, SpaceData) and isinstance(owner, SpaceData)
    assert ledger.heads == () and ledger.change_ids() == []
    results = feed(ledger, raws, random.Random(7))
    assert {r.status for r in results} == {"applied"} and len(results) == len(raws)
    assert ledger.heads == owner.heads
    assert ledger.change_ids() == owner.change_ids() == sorted(parse_change(r).id for r in raws)
    assert ledger.rejected_ids() == set()
    assert ledger.usage() == Usage(len(raws), sum(map(len, raws)), 0, 0, *acl_usage(owner))
    # sending everything again changes nothing
    assert {r.status for r in ledger.ingest_batch(raws)} == {"known"}
    # a fresh Ledger over the same store sees the same state (nothing lived only in memory)
    again = Ledger(ledger.store, ledger.blobs, owner.space_id)
    assert again.heads == owner.heads and again.usage() == ledger.usage()
    assert again.header_raw == owner.header_raw and again.space_id == owner.space_id
    assert again.role_of(owner.identity.account_id) == acl.Role.OWNER
    assert again.role_of(os.urandom(32)) is None


def test_batch_results_follow_the_input_order(tmp_path: Path, owner: Replica, node: Node) -> None:
    for i in range(3):
        put_file(owner, f"/f{i}", b"x")
    a, b, c = raws_of(owner)
    ledger = node.adopt(owner)
    assert [r.status for r in ledger.ingest_batch([c, a, c])] == ["missing-parents", "applied", "missing-parents"]
    assert ledger.ingest_batch([c])[0].missing == (parse_change(b).id,)
    assert [r.status for r in ledger.ingest_batch([b, b])] == ["applied", "known"]  # stored once
    assert [r.status for r in ledger.ingest_batch([c, b, a])] == ["applied", "known", "known"]


def test_missing_parents_name_what_to_fetch_through_the_batch(tmp_path: Path, owner: Replica, node: Node) -> None:
    for i in range(4):
        put_file(owner, f"/f{i}", b"x")
    _a, b, c, d = raws_of(owner)
    ledger = node.adopt(owner)
    # c and d arrive without a and b: both wait for b (d through c, which is in the batch)
    res = ledger.ingest_batch([d, c])
    assert [r.status for r in res] == ["missing-parents", "missing-parents"]
    assert res[0].missing == res[1].missing == (parse_change(b).id,)
    assert ledger.change_ids() == []


def test_forged_bytes_store_nothing(tmp_path: Path, owner: Replica, node: Node) -> None:
    for i in range(3):
        put_file(owner, f"/f{i}", b"x")
    raws = raws_of(owner)
    ledger = node.adopt(owner)
    for i in (5, len(raws[1]) // 2, len(raws[1]) - 2):
        bad = bytearray(raws[1])
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            ledger.ingest_batch([raws[0], bytes(bad), raws[2]])
        assert ledger.change_ids() == [] and ledger.heads == () and ledger.usage().changes == 0
    assert {r.status for r in ledger.ingest_batch(raws)} == {"applied"}


def test_changes_by_non_members_and_readers_are_rejected_and_kept(
    tmp_path: Path, owner: Replica, node: Node
) -> None:
    reader = join(owner, new_home(tmp_path, "rita"), acl.Role.READER)
    put_file(owner, "/ok", b"fine")
    ledger = node.adopt(owner)
    assert ledger.role_of(reader.identity.account_id) == acl.Role.READER
    assert {r.status for r in ledger.ingest_batch(raws_of(owner))} == {"applied"}
    stranger = crypto.SigningKey(os.urandom(32))
    by_stranger = forged_change(owner, stranger)
    by_reader = forged_change(owner, reader.identity.account)
    child = make_change(stranger, stranger.public, owner.space_id, [parse_change(by_stranger).id], 3, now_us(),
                        owner.acl.head, 0, owner.current_epoch_key()[1], ops.encode_payload([])).raw
    size_before = ledger.usage().change_bytes
    res = ledger.ingest_batch([child, by_stranger, by_reader])
    assert [r.status for r in res] == ["rejected"] * 3
    assert res[1].reason == "not a member" and res[2].reason == "reader may not write"
    assert res[0].reason == "built on a rejected change"
    rejected = {parse_change(r).id for r in (child, by_stranger, by_reader)}
    assert ledger.rejected_ids() == rejected and not rejected & set(ledger.change_ids())
    assert ledger.heads == owner.heads
    assert ledger.usage().change_bytes == size_before + len(child) + len(by_stranger) + len(by_reader)
    assert [r.status for r in ledger.ingest_batch([by_stranger])] == ["known"]
    # the replica judges the same bytes the same way
    assert [r.status for r in owner.ingest_batch([by_reader, by_stranger])] == ["rejected", "rejected"]
    assert owner.rejected_ids() == {parse_change(by_reader).id, parse_change(by_stranger).id}


def test_a_change_citing_an_unseen_acl_record_waits_for_it(tmp_path: Path, owner: Replica, node: Node) -> None:
    before_join = [raw for _rid, raw in owner.acl_raws()]
    writer = join(owner, new_home(tmp_path, "bob"), acl.Role.WRITER)
    put_file(writer, "/from-bob", b"hi")
    ledger = node.adopt(owner, acl_raws=before_join)  # knows neither the invite nor the join
    res = ledger.ingest_batch(raws_of(writer))
    assert [r.status for r in res] == ["missing-acl"] and res[0].missing == (writer.acl.head,)
    assert ledger.change_ids() == [] and ledger.rejected_ids() == set()
    assert ledger.add_acl_records([raw for _rid, raw in owner.acl_raws()]) == 2
    assert ledger.add_acl_records([raw for _rid, raw in owner.acl_raws()]) == 0
    assert ledger.acl_ids() == owner.acl_ids() and ledger.acl_raws() == owner.acl_raws()
    assert [r.status for r in ledger.ingest_batch(raws_of(writer))] == ["applied"]


def test_adopt_verifies_and_is_repeatable(tmp_path: Path, owner: Replica, node: Node) -> None:
    records = [raw for _rid, raw in owner.acl_raws()]
    genesis_only = node.adopt(owner)
    assert genesis_only.acl_ids() == owner.acl_ids()
    join(owner, new_home(tmp_path, "bob"), acl.Role.WRITER)
    again = node.adopt(owner)  # the space is there already: only the new records are added
    assert again.acl_ids() == owner.acl_ids() and len(again.acl_ids()) == len(records) + 2
    assert again.acl.head == owner.acl.head
    with pytest.raises(NotFound):  # no genesis among the records
        Ledger.adopt(node.store, node.blobs, owner.header_raw, records[1:])
    bad = bytearray(owner.header_raw)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError):
        Ledger.adopt(node.store, node.blobs, bytes(bad), records)
    forged_record = bytearray(records[0])
    forged_record[-1] ^= 1
    with pytest.raises(IntegrityError):
        again.add_acl_records([bytes(forged_record)])


def test_quota_refuses_a_batch_whole(tmp_path: Path, owner: Replica, node: Node) -> None:
    for i in range(5):
        put_file(owner, f"/f{i}", b"y" * 100)
    raws = raws_of(owner)
    acl_bytes = acl_usage(owner)[1]
    total = acl_bytes + sum(map(len, raws))
    ledger = node.adopt(owner, quota=total - 1)
    with pytest.raises(QuotaExceeded, match=r"^space sp-\S+ is over its quota of \d+ bytes$"):
        ledger.ingest_batch(raws)
    assert ledger.change_ids() == [] and ledger.heads == () and ledger.usage() == Usage(0, 0, 0, 0, *acl_usage(owner))
    assert ledger.dag.heads() == ()  # the DAG forgot what planning had added
    assert {r.status for r in ledger.ingest_batch(raws[:-1])} == {"applied"}
    with pytest.raises(QuotaExceeded):
        ledger.put_blob(*blob(len(raws[-1])))
    ledger.quota_bytes = total
    assert [r.status for r in ledger.ingest_batch(raws)] == ["known"] * 4 + ["applied"]
    assert ledger.heads == owner.heads
    # full: anything new is refused before planning; what is known is still answered
    with pytest.raises(QuotaExceeded):
        ledger.ingest_batch([forged_change(owner, owner.identity.account)])
    assert {r.status for r in ledger.ingest_batch(raws)} == {"known"}


def test_blobs_are_verified_counted_and_kept_per_space(tmp_path: Path, owner: Replica, node: Node) -> None:
    acl_bytes = acl_usage(owner)[1]
    ledger = node.adopt(owner, quota=10_000 + acl_bytes)
    blob_id, data = blob(3000)
    with pytest.raises(IdMismatch):
        ledger.put_blob(blob_id, data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IdMismatch):
        ledger.put_blob(os.urandom(32), data)
    assert not ledger.has_blob(blob_id) and ledger.blob_ids() == [] and not ledger.blobs.has(blob_id)
    too_big = bytes(MAX_BLOB_LEN + 1)
    with pytest.raises(DecodeError):
        ledger.put_blob(crypto.blake3(too_big), too_big)
    assert ledger.put_blob(blob_id, data) is True
    assert ledger.put_blob(blob_id, data) is False
    assert ledger.has_blob(blob_id) and ledger.get_blob(blob_id) == data
    assert ledger.blob_ids() == [blob_id] and ledger.usage() == Usage(0, 0, 1, 3000, *acl_usage(owner))
    assert ledger.store.blob_size(blob_id) == 3000
    # another space on the same provider: the file exists, but it is not that space's blob
    other_owner = create_space(new_home(tmp_path, "olga"), "other")
    other = node.adopt(other_owner)
    assert not other.has_blob(blob_id)
    with pytest.raises(NotFound):
        other.get_blob(blob_id)
    assert other.put_blob(blob_id, data) is True and other.usage().blob_bytes == 3000
    # the file went missing: put restores it, the quota is not charged twice
    ledger.blobs.delete(blob_id)
    assert not ledger.has_blob(blob_id)
    with pytest.raises(NotFound):
        ledger.get_blob(blob_id)
    assert ledger.put_blob(blob_id, data) is True and ledger.usage().blob_bytes == 3000
    with pytest.raises(QuotaExceeded):
        ledger.put_blob(*blob(7001))
    assert Ledger(ledger.store, ledger.blobs, owner.space_id).usage() == Usage(0, 0, 1, 3000, *acl_usage(owner))


def invites(owner: Replica, count: int) -> list[bytes]:
    """``count`` invite records the owner signs, each on the last: the cheapest ACL records a member can make."""
    out = []
    for _ in range(count):
        _epoch, key = owner.current_epoch_key()
        raw, _secret = acl.make_invite(owner.identity.account, owner.acl, acl.Role.READER, 0, key, now_us())
        owner.add_acl_record(raw)
        out.append(raw)
    return out


def test_acl_records_count_toward_the_quota(tmp_path: Path, owner: Replica, node: Node) -> None:
    """A member flooding a provider with ACL records (here: invites) runs into the space's quota; the batch that
    goes over is refused whole."""
    ledger = node.adopt(owner, quota=acl_usage(owner)[1] + 2_000)
    flood = invites(owner, 40)
    per_record = max(map(len, flood))
    stored = 0
    with pytest.raises(QuotaExceeded, match=r"^space sp-\S+ is over its quota of \d+ bytes$"):
        for i in range(0, len(flood), 4):
            assert ledger.add_acl_records(flood[i:i + 4]) == 4
            stored += 4
    assert 0 < stored < 40 and stored * per_record <= 2_000
    assert ledger.usage().acl_records == 1 + stored and len(ledger.acl_ids()) == 1 + stored
    assert ledger.usage().total_bytes <= ledger.quota_bytes
    assert ledger.add_acl_records(flood[:stored]) == 0  # known records are still fine when full
    assert measure_usage(ledger.store, owner.space_id) == ledger.usage()


def test_an_accounts_spaces_share_its_quota_and_its_space_count(tmp_path: Path, node: Node) -> None:
    home = new_home(tmp_path, "mallory")
    spaces = [create_space(home, f"s{i}") for i in range(3)]
    book = QuotaBook(QuotaPolicy(per_account=20_000, spaces_per_account=2))
    first, second = (Ledger.adopt(node.store, node.blobs, r.header_raw, [raw for _id, raw in r.acl_raws()],
                                  book=book) for r in spaces[:2])
    with pytest.raises(QuotaExceeded, match=r"^account ac-\S+ already owns 2 spaces on this node, its limit$"):
        Ledger.adopt(node.store, node.blobs, spaces[2].header_raw, [raw for _id, raw in spaces[2].acl_raws()],
                     book=book)
    with pytest.raises(NotFound):
        node.store.space(spaces[2].space_id)  # nothing of it was stored
    used = book.used_by(home.identity.account_id)
    assert used == first.usage().total_bytes + second.usage().total_bytes
    assert first.put_blob(*blob(12_000)) is True
    with pytest.raises(QuotaExceeded, match=r"^account ac-\S+ is over its quota of 20000 bytes$"):
        second.put_blob(*blob(20_000 - used - 12_000 + 1))
    assert second.put_blob(*blob(20_000 - used - 12_000)) is True  # exactly full is fine
    with pytest.raises(QuotaExceeded, match="account"):
        second.ingest_batch(raws_of(spaces[1]) or [forged_change(spaces[1], home.identity.account)])
    # another account is not charged for it; the total is
    other = create_space(new_home(tmp_path, "olga"), "other")
    book.policy = QuotaPolicy(per_account=20_000, spaces_per_account=2, total=book.total_used + 5_000)
    theirs = Ledger.adopt(node.store, node.blobs, other.header_raw, [raw for _id, raw in other.acl_raws()], book=book)
    with pytest.raises(QuotaExceeded, match=r"^this node is over its total quota of \d+ bytes$"):
        theirs.put_blob(*blob(5_000))
    # a restarted node charges the same
    again = load_quota_book(node.store, QuotaBook(book.policy))
    assert again.total_used == book.total_used and again.used_by(home.identity.account_id) == 20_000
    assert again.spaces_of(home.identity.account_id) == 2


def test_get_changes_bounds_the_reply(tmp_path: Path, owner: Replica, node: Node) -> None:
    for i in range(6):
        put_file(owner, f"/f{i}", b"z" * 10)
    raws = raws_of(owner)
    ledger = node.adopt(owner)
    ledger.ingest_batch(raws)
    wanted = [parse_change(r).id for r in reversed(raws)]
    assert ledger.get_changes(wanted, 10**9) == list(reversed(raws))
    assert ledger.get_changes(wanted, 1) == [raws[-1]]  # at least one, even over the bound
    budget = len(raws[-1]) + len(raws[-2]) + len(raws[-3]) - 1
    assert ledger.get_changes(wanted, budget) == [raws[-1], raws[-2]]
    assert ledger.get_changes([os.urandom(32), wanted[0], wanted[0]], 10**9) == [raws[-1]]
    assert owner.get_changes(wanted, budget) == ledger.get_changes(wanted, budget)
    # a change of another space is not served under this one
    other = create_space(new_home(tmp_path, "olga"), "other")
    put_file(other, "/x", b"x")
    other_ledger = node.adopt(other)
    other_ledger.ingest_batch(raws_of(other))
    assert ledger.get_changes(other_ledger.change_ids(), 10**9) == []


def _removal_setup(tmp_path: Path, owner: Replica) -> tuple[Replica, Replica, bytes]:
    """Writer W and member C; W writes w1; the owner removes W naming w1 (W and C have not heard of it).
    Returns (W, C, removal record)."""
    w = join(owner, new_home(tmp_path, "walt"), acl.Role.WRITER)
    c = join(owner, new_home(tmp_path, "cleo"), acl.Role.WRITER)
    for r in (w, c):
        r.add_acl_records([raw for _rid, raw in owner.acl_raws()])
    w1 = put_file(w, "/w1", b"w1")
    assert owner.ingest_batch(raws_of(w))[0].status == "applied"
    _epoch, key = owner.current_epoch_key()
    removal, _new_key = acl.make_remove(owner.identity.account, owner.acl, w.identity.account_id, key, [w1.id],
                                        now_us())
    owner.add_acl_record(removal)
    return w, c, removal


def test_removal_revalidates_backdated_changes_and_what_was_built_on_them(
    tmp_path: Path, owner: Replica, node: Node
) -> None:
    w, c, removal = _removal_setup(tmp_path, owner)
    before_removal = [raw for rid, raw in owner.acl_raws() if rid != acl.parse_record(removal).id]
    w2 = put_file(w, "/w2", b"backdated")  # W has not heard of its removal: cites the old ACL head
    assert [r.status for r in c.ingest_batch(raws_of(w))] == ["applied", "applied"]
    c3 = put_file(c, "/c3", b"built on w2")
    ledger = node.adopt(owner, acl_raws=before_removal)
    assert {r.status for r in feed(ledger, raws_of(c), random.Random(3))} == {"applied"}
    assert ledger.heads == (c3.id,)
    assert ledger.add_acl_records([removal]) == 1
    assert ledger.rejected_ids() == {w2.id, c3.id}
    assert set(ledger.change_ids()) == {parse_change(r).id for r in raws_of(owner)}
    assert ledger.heads == owner.heads == (ledger.dag.heads())
    assert Ledger(ledger.store, ledger.blobs, owner.space_id).heads == owner.heads
    # a member's replica does the same (and refolds its tree without them)
    assert c.add_acl_records([removal]) == 1
    assert c.rejected_ids() == {w2.id, c3.id} and c.heads == owner.heads
    assert c.tree.canonical() == c.fresh_fold().canonical()
    assert [item.name for item in list_dir(c.tree, "/")] == ["w1"]


def test_removal_rule_sees_last_changes_arriving_in_the_same_batch(
    tmp_path: Path, owner: Replica, node: Node
) -> None:
    w = join(owner, new_home(tmp_path, "walt"), acl.Role.WRITER)
    w.add_acl_records([raw for _rid, raw in owner.acl_raws()])
    put_file(w, "/a", b"a")
    last = put_file(w, "/b", b"b")
    owner.ingest_batch(raws_of(w))
    _epoch, key = owner.current_epoch_key()
    removal, _ = acl.make_remove(owner.identity.account, owner.acl, w.identity.account_id, key, [last.id], now_us())
    owner.add_acl_record(removal)
    late = put_file(w, "/late", b"after removal")
    ledger = node.adopt(owner)  # knows the removal before any change
    assert ledger.role_of(w.identity.account_id) is None
    first, second, third = raws_of(w)
    res = ledger.ingest_batch([second, third, first])
    assert [r.status for r in res] == ["applied", "rejected", "applied"]
    assert res[1].reason == "change by removed member" and ledger.rejected_ids() == {late.id}


def test_ingest_after_a_failed_write_starts_from_the_store(owner: Replica, node: Node, monkeypatch) -> None:
    for i in range(3):
        put_file(owner, f"/f{i}", b"x")
    raws = raws_of(owner)
    ledger = node.adopt(owner)

    def broken(*_a, **_k):
        raise StoreError("disk full")

    monkeypatch.setattr(ledger.store, "set_heads", broken)
    with pytest.raises(StoreError):
        ledger.ingest_batch(raws)
    monkeypatch.undo()
    assert ledger.change_ids() == [] and ledger.heads == ()
    assert {r.status for r in ledger.ingest_batch(raws)} == {"applied"}


# ---------------------------------------------------------------------------------------------------- store
# Schema 1 as the first release created it (SQLAlchemy's DDL of schema.py before version 2, reflowed).
SCHEMA_1 = """
CREATE TABLE meta ("key" TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE spaces (id BLOB NOT NULL, name TEXT NOT NULL, header BLOB NOT NULL, added_us BIGINT NOT NULL,
    PRIMARY KEY (id));
CREATE TABLE blobs (id BLOB NOT NULL, size BIGINT NOT NULL, location INTEGER NOT NULL, pinned INTEGER NOT NULL,
    last_access_us BIGINT NOT NULL, PRIMARY KEY (id));
CREATE TABLE peers (space BLOB NOT NULL, address TEXT NOT NULL, added_us BIGINT NOT NULL, last_sync_us BIGINT,
    PRIMARY KEY (space, address));
CREATE TABLE upload_queue (space BLOB NOT NULL, blob BLOB NOT NULL, queued_us BIGINT NOT NULL,
    PRIMARY KEY (space, blob));
CREATE TABLE acl_records (id BLOB NOT NULL, space BLOB NOT NULL, raw BLOB NOT NULL, received_us BIGINT NOT NULL,
    PRIMARY KEY (id), FOREIGN KEY(space) REFERENCES spaces (id));
CREATE INDEX acl_records_space ON acl_records (space);
CREATE TABLE changes (id BLOB NOT NULL, space BLOB NOT NULL, raw BLOB NOT NULL, parents BLOB NOT NULL,
    lamport BIGINT NOT NULL, author BLOB NOT NULL, wall_us BIGINT NOT NULL, status INTEGER NOT NULL, reason TEXT,
    received_us BIGINT NOT NULL, PRIMARY KEY (id), FOREIGN KEY(space) REFERENCES spaces (id));
CREATE INDEX changes_fold_order ON changes (space, lamport, id);
CREATE TABLE heads (space BLOB NOT NULL, change BLOB NOT NULL, PRIMARY KEY (space, change),
    FOREIGN KEY(space) REFERENCES spaces (id));
CREATE TABLE tree_meta (space BLOB NOT NULL, heads_digest BLOB NOT NULL, change_count BIGINT NOT NULL,
    fold_version INTEGER NOT NULL, PRIMARY KEY (space), FOREIGN KEY(space) REFERENCES spaces (id));
CREATE TABLE nodes (inode INTEGER NOT NULL, space BLOB NOT NULL, node BLOB NOT NULL, kind INTEGER NOT NULL,
    size BIGINT NOT NULL, version BLOB, state BLOB, PRIMARY KEY (inode), FOREIGN KEY(space) REFERENCES spaces (id));
CREATE UNIQUE INDEX nodes_by_id ON nodes (space, node);
CREATE TABLE entries (space BLOB NOT NULL, entry BLOB NOT NULL, parent BLOB NOT NULL, node BLOB NOT NULL,
    live INTEGER NOT NULL, state BLOB NOT NULL, PRIMARY KEY (space, entry), FOREIGN KEY(space) REFERENCES spaces (id));
CREATE INDEX entries_by_parent ON entries (space, parent);
CREATE INDEX entries_by_node ON entries (space, node);
INSERT INTO meta VALUES ('schema_version', '1');
"""
SPACE = b"S" * 32
BLOB = b"B" * 32


def make_v1(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_1)
    db.execute("INSERT INTO spaces VALUES (?, 'old', x'00', 1)", (SPACE,))
    db.execute("INSERT INTO blobs VALUES (?, 42, 1, 0, 5)", (BLOB,))
    db.execute("INSERT INTO upload_queue VALUES (?, ?, 7)", (SPACE, BLOB))
    db.commit()
    db.close()


def table_shapes(path: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {n: db.execute(f"PRAGMA table_info({n})").fetchall() for n in names}
    finally:
        db.close()


def version_of(path: Path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    finally:
        db.close()


def test_schema_1_is_upgraded_in_place_to_the_same_shape_as_a_new_store(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    make_v1(old)
    store = Store(str(old))
    store.close()
    fresh = tmp_path / "fresh.db"
    Store(str(fresh)).close()
    assert version_of(old) == str(schema.SCHEMA_VERSION)  # 1 -> 2 -> … in one transaction
    assert table_shapes(old) == table_shapes(fresh)
    assert "space_blobs" in table_shapes(old)
    store = Store(str(old))  # reopening an upgraded store is a no-op
    assert [s.name for s in store.spaces()] == ["old"]
    assert store.blob_size(BLOB) == 42 and not store.is_remote_confirmed(BLOB)
    assert store.pending_uploads(SPACE, 10) == [BLOB]
    assert store.peers(SPACE) == []


def test_a_failed_upgrade_leaves_schema_1_untouched(tmp_path: Path, monkeypatch) -> None:
    old = tmp_path / "old.db"
    make_v1(old)
    shapes = table_shapes(old)
    # the last column to add already exists: its ALTER fails after the others ran
    bogus = (*schema.COLUMNS_ADDED_AFTER[1], schema.blobs.c.size)
    monkeypatch.setitem(schema.COLUMNS_ADDED_AFTER, 1, bogus)
    with pytest.raises(StoreError, match="duplicate column"):
        Store(str(old))
    assert version_of(old) == "1" and table_shapes(old) == shapes
    monkeypatch.undo()
    Store(str(old)).close()
    assert version_of(old) == str(schema.SCHEMA_VERSION)


@pytest.mark.parametrize("version", ["0", "99", "x"])
def test_unknown_schema_versions_are_refused(tmp_path: Path, version: str) -> None:
    path = tmp_path / "s.db"
    make_v1(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=f"schema version {version}, this build needs {schema.SCHEMA_VERSION}"):
        Store(str(path))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(str(tmp_path / "q.db"))
    s.add_space(SPACE, "s", b"h")
    yield s
    s.close()


def test_peer_queries(store: Store) -> None:
    key1, key2 = b"1" * 32, b"2" * 32
    other = b"O" * 32
    store.add_peer(SPACE, "a.example:7000", key1)
    store.add_peer(SPACE, "a.example:7000", key1)  # idempotent
    store.add_peer(SPACE, "b.example:7000", key1)
    store.add_peer(other, "a.example:7000", key2)  # a space not held here
    rows = store.peers(SPACE)
    assert [(p.address, p.device_key) for p in rows] == [("a.example:7000", key1), ("b.example:7000", key1)]
    assert all(p.last_sync_us is None and p.last_attempt_us is None and p.last_error is None for p in rows)
    store.add_peer(SPACE, "b.example:7000", key2)  # a new ticket re-pins the key
    assert store.peers(SPACE)[1].device_key == key2
    assert [(p.space, p.address) for p in store.all_peers()] == sorted(
        [(SPACE, "a.example:7000"), (SPACE, "b.example:7000"), (other, "a.example:7000")])
    with pytest.raises(ValueError):
        store.add_peer(SPACE, "c:1", b"short")
    store.note_peer_sync(SPACE, "a.example:7000", False, "connection refused\nsecond line")
    failed = store.peers(SPACE)[0]
    assert failed.last_error == "connection refused" and failed.last_sync_us is None
    assert failed.last_attempt_us is not None
    store.note_peer_sync(SPACE, "a.example:7000", False, None)
    assert store.peers(SPACE)[0].last_error == "failed"
    store.note_peer_sync(SPACE, "a.example:7000", True, None)
    ok = store.peers(SPACE)[0]
    assert ok.last_error is None and ok.last_sync_us == ok.last_attempt_us and ok.last_sync_us is not None
    assert store.remove_peer(SPACE, "a.example:7000") is True
    assert store.remove_peer(SPACE, "a.example:7000") is False
    assert [p.address for p in store.peers(SPACE)] == ["b.example:7000"]
    assert len(store.all_peers()) == 2


def test_upload_queue_queries(store: Store) -> None:
    blob_ids = [bytes([i]) * 32 for i in range(5)]
    for b in blob_ids:
        store.index_blob(b, 10)
        store.queue_upload(SPACE, [b])
    store.queue_upload(SPACE, blob_ids)  # already queued: nothing changes
    store.queue_upload(b"O" * 32, blob_ids[:1])
    assert store.count_pending_uploads(SPACE) == 5
    assert store.pending_uploads(SPACE, 3) == blob_ids[:3]
    store.mark_uploaded(SPACE, blob_ids[:2])
    assert store.pending_uploads(SPACE, 10) == blob_ids[2:] and store.count_pending_uploads(SPACE) == 3
    assert [store.is_remote_confirmed(b) for b in blob_ids] == [True, True, False, False, False]
    assert store.count_pending_uploads(b"O" * 32) == 1  # another space's queue is its own
    store.index_blob(blob_ids[4], 10, remote_confirmed=True)
    store.index_blob(blob_ids[4], 10)  # re-indexing never forgets the confirmation
    assert store.is_remote_confirmed(blob_ids[4])
    assert store.local_blob_ids() == sorted(blob_ids)
    assert store.blob_size(blob_ids[0]) == 10 and store.blob_size(b"?" * 32) is None


def test_space_blob_queries_and_usage(store: Store) -> None:
    assert store.space_usage(SPACE) == (0, 0, 0, 0)
    assert store.add_space_blob(SPACE, b"b" * 32, 100) is True
    assert store.add_space_blob(SPACE, b"b" * 32, 100) is False
    assert store.add_space_blob(SPACE, b"a" * 32, 5) is True
    assert store.has_space_blob(SPACE, b"a" * 32) and not store.has_space_blob(SPACE, b"c" * 32)
    assert store.space_blob_ids(SPACE) == [b"a" * 32, b"b" * 32]
    store.add_change(SPACE, b"c" * 32, b"r" * 30, [], 1, b"u" * 32, 0)
    store.add_change(SPACE, b"d" * 32, b"r" * 12, [b"c" * 32], 2, b"u" * 32, 0, schema.CHANGE_REJECTED, "no")
    assert store.space_usage(SPACE) == (2, 42, 2, 105)


def test_change_queries_in_bounded_batches(store: Store) -> None:
    other = b"O" * 32
    store.add_space(other, "o", b"h")
    n = IN_BATCH * 2 + 7
    ids_ = [crypto.blake3(i.to_bytes(4, "big")) for i in range(n)]
    for i, cid in enumerate(ids_):
        status = schema.CHANGE_REJECTED if i % 10 == 0 else schema.CHANGE_ACCEPTED
        store.add_change(SPACE, cid, b"raw%d" % i, [], 1, b"u" * 32, 0, status, "bad" if i % 10 == 0 else None)
    foreign = crypto.blake3(b"foreign")
    store.add_change(other, foreign, b"f", [], 1, b"u" * 32, 0)
    accepted = sorted(c for i, c in enumerate(ids_) if i % 10)
    rejected = sorted(c for i, c in enumerate(ids_) if i % 10 == 0)
    assert store.accepted_change_ids(SPACE) == accepted and store.rejected_change_ids(SPACE) == rejected
    statuses = store.change_statuses(ids_ + [foreign, b"?" * 32])
    assert len(statuses) == n + 1 and statuses[ids_[0]] == schema.CHANGE_REJECTED
    assert statuses[ids_[1]] == schema.CHANGE_ACCEPTED
    raws = store.change_raws_by_ids(SPACE, ids_ + [foreign])
    assert set(raws) == set(accepted) and raws[ids_[1]] == b"raw1"
    every = store.change_raws_by_ids(SPACE, ids_, status=None)
    assert len(every) == n and every[ids_[0]] == b"raw0"
