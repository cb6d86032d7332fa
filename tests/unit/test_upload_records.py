"""Upload records per provider (store/db_uploads.py): a blob leaves the queue only when every provider of the
space confirmed it; removing a provider releases what only it held back; backlogs per provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from anysyncfs.store import schema as S
from anysyncfs.store.db import Store

SPACE = b"S" * 32
P1, P2, P3 = b"1" * 32, b"2" * 32, b"3" * 32
BLOBS = [bytes([0x40 + i]) * 32 for i in range(4)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "q.db"))
    s.add_space(SPACE, "s", b"h")
    for i, b in enumerate(BLOBS):
        s.index_blob(b, 100 + i)
        s.queue_upload(SPACE, [b])
    yield s
    s.close()


def test_a_blob_stays_queued_until_every_provider_confirmed_it(store: Store) -> None:
    store.add_peer(SPACE, "anysync://one", P1)
    store.add_peer(SPACE, "anysync://two", P2)
    assert store.confirm_uploads(SPACE, P1, BLOBS[:3]) == []  # P2 has nothing yet
    assert store.pending_uploads_for(SPACE, P1, 10) == BLOBS[3:]
    assert store.pending_uploads_for(SPACE, P2, 10) == BLOBS
    assert store.pending_uploads_for(SPACE, P2, 2, offset=1) == BLOBS[1:3]
    assert store.upload_backlog(SPACE, P1) == (1, 103) and store.upload_backlog(SPACE, P2) == (4, 406)
    assert not any(store.is_remote_confirmed(b) for b in BLOBS)  # so the cache keeps them
    assert store.confirm_uploads(SPACE, P2, BLOBS[1:]) == BLOBS[1:3]  # confirmed by both
    assert store.pending_uploads(SPACE, 10) == [BLOBS[0], BLOBS[3]]
    assert [store.is_remote_confirmed(b) for b in BLOBS] == [False, True, True, False]
    # a provider added later is owed everything still queued
    store.add_peer(SPACE, "anysync://three", P3)
    assert store.pending_uploads_for(SPACE, P3, 10) == [BLOBS[0], BLOBS[3]]
    assert store.confirm_uploads(SPACE, P3, [BLOBS[0]]) == []  # P2 still lacks it
    # removing P2 (its only address) releases what only it held back: BLOBS[0] is on P1 and P3
    assert store.remove_peer(SPACE, "anysync://two")
    assert store.pending_uploads(SPACE, 10) == [BLOBS[3]]
    assert store.is_remote_confirmed(BLOBS[0])
    rows = store._run(S.upload_confirmations.select()).fetchall()
    assert rows == []  # the rows of unqueued blobs went with them; P2's (on BLOBS[3]) with P2


def test_a_provider_with_two_addresses_keeps_its_confirmations_until_both_are_removed(store: Store) -> None:
    store.add_peer(SPACE, "anysync://one", P1)
    store.add_peer(SPACE, "anysync://one-again", P1)
    store.add_peer(SPACE, "anysync://two", P2)
    store.confirm_uploads(SPACE, P1, BLOBS)
    assert store.remove_peer(SPACE, "anysync://one-again")
    assert store.upload_backlog(SPACE, P1) == (0, 0)
    assert store.remove_peer(SPACE, "anysync://one")
    assert store.pending_uploads(SPACE, 10) == BLOBS  # P2 never confirmed: nothing left the queue


def test_with_no_provider_recorded_the_first_confirmation_is_enough(store: Store) -> None:
    assert store.confirm_uploads(SPACE, P1, BLOBS[:2]) == BLOBS[:2]
    assert store.pending_uploads(SPACE, 10) == BLOBS[2:]
    assert store.confirm_uploads(SPACE, P1, [b"?" * 32]) == []  # not queued: no record


def test_change_backlog_counts_changes_stored_from_the_last_round_on(store: Store) -> None:
    for i, when in enumerate((10, 20, 30)):
        store.add_change(SPACE, bytes([i]) * 32, b"x" * (10 + i), [], i + 1, b"a" * 32, 0)
        store._run(S.changes.update().where(S.changes.c.id == bytes([i]) * 32).values(received_us=when))
    assert store.change_backlog(SPACE, None) == (3, 33)
    assert store.change_backlog(SPACE, 20) == (2, 23)  # a round that started at 20 may have missed the one at 20
    assert store.change_backlog(SPACE, 31) == (0, 0)


def test_a_recorded_peer_judged_a_members_device_does_not_hold_the_queue_back(store: Store) -> None:
    """A device added with space add-peer is never asked to store uploads: once the engine judged it a member's
    device (peers_seen), the provider's confirmations alone take blobs off the queue."""
    store.add_peer(SPACE, "anysync://provider", P1)
    store.add_peer(SPACE, "anysync://device", P2)
    assert store.confirm_uploads(SPACE, P1, BLOBS) == []  # not judged yet: it may be a provider
    store.note_peer_seen(SPACE, "anysync://provider", P1, "manual", "provider")
    assert store.pending_uploads(SPACE, 10) == BLOBS
    store.note_peer_seen(SPACE, "anysync://device", P2, "manual", "device")  # settles at once
    assert store.pending_uploads(SPACE, 10) == []
    assert all(store.is_remote_confirmed(b) for b in BLOBS)


def test_peers_seen_is_bounded_follows_remove_peer_and_keeps_the_last_sync(store: Store) -> None:
    store.add_peer(SPACE, "anysync://provider", P1)
    store.note_peer_seen(SPACE, "anysync://provider", P1, "manual", "provider")
    store.note_peer_sync(SPACE, "anysync://provider", True, synced_us=5)
    for i in range(S.MAX_PEERS_SEEN + 5):
        store.note_peer_seen(SPACE, f"anysync://found-{i}", P2, "mdns", "device")
    store.note_peer_sync(SPACE, f"anysync://found-{S.MAX_PEERS_SEEN}", True, synced_us=7)
    seen = store.peers_seen(SPACE)
    assert len(seen) == S.MAX_PEERS_SEEN + 1  # the least recently judged found ones went; the recorded one stays
    assert seen[0].address == f"anysync://found-{S.MAX_PEERS_SEEN + 4}" and seen[0].via == "mdns"
    assert {s.address: s.last_sync_us for s in seen}[f"anysync://found-{S.MAX_PEERS_SEEN}"] == 7
    assert {s.address: s.last_sync_us for s in seen}["anysync://provider"] == 5
    assert "anysync://found-0" not in {s.address for s in seen}
    store.note_peer_seen(SPACE, "anysync://provider", P1, "manual", "provider")
    assert store.peers_seen(SPACE)[0].last_sync_us == 5  # judged again: its last sync stays
    assert store.remove_peer(SPACE, "anysync://provider")
    assert "anysync://provider" not in {s.address for s in store.peers_seen(SPACE)}
    with pytest.raises(ValueError):
        store.note_peer_seen(SPACE, "anysync://x", P1, "guessed", "device")
    store.forget_space(SPACE, [])
    assert store.peers_seen(SPACE) == []
