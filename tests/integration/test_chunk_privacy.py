"""Issue 10 item 5: a provider cannot confirm a guessed file from the sizes of the blobs it stores.

The attack: the provider (no keys) holds the cleartext space header (chunk sizes) and the blob files. It cuts a
file it guesses the user stores with FastCDC's public gear table, predicts each chunk's blob length from the
public envelope format, and counts how many of the predicted lengths it finds among the stored ones. Before the
fix that matched every chunk of the right file (20/20 in the review) and none of another file (0/18). Now the
gear table is a secret of the space (only members can cut as the space does) and blob lengths are Padmé buckets.

The data goes through the real path: a device commits a file and uploads it to a real node over loopback TCP;
the attacker reads what the node wrote to disk."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from anysyncfs.core import acl, blob, crypto, padding, space
from anysyncfs.core.change import NONCE_LEN, parse_change
from anysyncfs.core.chunking import ChunkParams, iter_chunks
from anysyncfs.net.share import remove_builder
from anysyncfs.replica import create_space
from anysyncfs.replica.files import put_file, resolve
from tests.integration.test_replicas import invite_and_join, new_home
from tests.integration.test_sync import engine, running_node

log = logging.getLogger(__name__)

KiB = 1024
SMALL_CHUNKS = space.Chunking(16 * KiB, 64 * KiB, 256 * KiB)  # ~90 chunks from 7 MiB (below the manifest threshold)
FILE_SIZE = 7 << 20
# Padmé buckets make chance coincidences common: two unrelated multisets of ~90 chunk lengths share about 54 % of
# their buckets (measured over 400 random files and keys: 99th percentile 67 %, maximum 69 %, sd ~5.6 %). A
# match rate of at most 85 % is therefore what chance gives (> 5 sd of margin), where a confirmed guess is 100 %.
CHANCE_BOUND = 0.85


def blob_file_sizes(root: Path) -> list[int]:
    """What a provider sees of the content: the length of every blob file it stores (outboards, ``….ob``, only
    repeat it: 64 bytes per 16 KiB group)."""
    return [p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".ob")]


def predicted_blob_len(chunk_length: int) -> int:
    """The blob length of an uncompressed chunk (random data does not compress), from the public format."""
    padded = padding.padded_length(chunk_length)
    return blob.HEADER_LEN + padded + blob.TAG_LEN * blob.segment_count(padded)


def padded_length_of_blob(size: int) -> int:
    """Invert the envelope's length formula: the padded length a blob file of ``size`` bytes declares."""
    for segments in range(1, blob.MAX_SEGMENTS + 1):
        padded = size - blob.HEADER_LEN - blob.TAG_LEN * segments
        if padded > 0 and blob.segment_count(padded) == segments:
            return padded
    raise AssertionError(f"{size} is not a blob length")


def matches(guess: list[int], stored: list[int]) -> int:
    """How many predicted lengths are found among the stored ones (multiset intersection)."""
    return sum((Counter(guess) & Counter(stored)).values())


def cut_lengths(data: bytes, params: ChunkParams) -> list[int]:
    return [predicted_blob_len(len(chunk)) for _, chunk in iter_chunks(data, params)]


@pytest.mark.trio
async def test_provider_cannot_confirm_a_guessed_file_from_blob_sizes(tmp_path: Path, make_home) -> None:
    device = create_space(make_home("device"), "private", chunking=SMALL_CHUNKS)
    secret = os.urandom(FILE_SIZE)
    put_file(device, "/taxes-2026.pdf", secret)
    async with running_node(tmp_path / "node") as (node, addr):
        device.store.add_peer(device.space_id, str(addr), addr.device)
        report = await engine(device).sync_once()
        assert report.errors == [] and report.reached == 1
        header_raw = node.store.space(device.space_id).header
        node_changes = [raw for _id, raw in node.store.iter_change_raws(device.space_id)]

    # --- the provider's side: the cleartext header and the files on its disk, no key
    stored = blob_file_sizes(tmp_path / "node" / "blobs")
    chunking = space.parse_space_header(header_raw).chunking
    public = ChunkParams(chunking.min_size, chunking.avg_size, chunking.max_size)  # FastCDC's public gear table
    right_guess = cut_lengths(secret, public)
    wrong_guess = cut_lengths(os.urandom(FILE_SIZE), public)
    right, wrong = matches(right_guess, stored), matches(wrong_guess, stored)
    log.info("blobs stored %d; public-table guess matches: right file %d/%d, another file %d/%d",
             len(stored), right, len(right_guess), wrong, len(wrong_guess))

    # The harness is sound: whoever can cut as the space does (a member) predicts every stored length, which is
    # what the public table achieved before the fix.
    member_view = cut_lengths(secret, device.chunk_params)
    assert len(stored) == len(member_view) > 60
    assert matches(member_view, stored) == len(stored)
    # Without the chunker key, the right file matches no better than chance: bucket coincidences only, as for a
    # file the user never stored. (Before the fix: every one of its chunks, like member_view above.)
    assert right <= CHANCE_BOUND * len(right_guess)
    assert wrong <= CHANCE_BOUND * len(wrong_guess)
    # Cut-point knowledge is what is missing: with the public table, the right file's chunks are not the stored ones.
    assert matches([len(c) for _, c in iter_chunks(secret, public)],
                   [len(c) for _, c in iter_chunks(secret, device.chunk_params)]) <= 2  # fmt: skip

    # Every length the provider sees is a bucket: blob files, and the ciphertexts of the changes.
    for size in stored:
        assert padding.is_bucket(padded_length_of_blob(size)), size
    assert node_changes
    for raw in node_changes:
        sealed = len(parse_change(raw).ciphertext) - NONCE_LEN - crypto.TAG_LEN
        assert padding.is_bucket(sealed), sealed


def test_cuts_are_shared_by_every_member_across_epochs_and_dedup_within_a_space(tmp_path: Path) -> None:
    """The chunker key comes from the epoch-0 key: a member who joins after a removal (epoch 1) opens epoch 0
    through the removal's prev_key and cuts exactly as the owner does. Within an epoch equal content gives
    equal blobs (convergent dedup); another space cuts differently."""
    owner = create_space(new_home(tmp_path, "owner"), "shared", chunking=SMALL_CHUNKS)
    early = invite_and_join(owner, new_home(tmp_path, "early"), acl.Role.WRITER)
    owner.add_acl_record(remove_builder(early.identity.account_id)(owner))
    assert owner.acl.current.epoch == 1
    late = invite_and_join(owner, new_home(tmp_path, "late"), acl.Role.WRITER)
    assert late.acl.current.epoch == 1 and 0 in late.keys  # through the removal's prev_key
    assert late.chunk_params == owner.chunk_params and late.chunk_params.key is not None

    data = os.urandom(2 << 20)
    put_file(owner, "/a.bin", data)
    blobs_after_one = set(owner.blobs.iter_ids())
    put_file(owner, "/copy-of-a.bin", data)  # same space, same epoch: no new blob
    assert set(owner.blobs.iter_ids()) == blobs_after_one
    put_file(late, "/a-by-late.bin", data)  # another member, same epoch: the very same blobs
    owner_extents = resolve(owner.tree, "/a.bin").content.extents
    late_extents = resolve(late.tree, "/a-by-late.bin").content.extents
    assert [(e.offset, e.chunk) for e in late_extents] == [(e.offset, e.chunk) for e in owner_extents]

    other = create_space(new_home(tmp_path, "stranger"), "other", chunking=SMALL_CHUNKS)
    put_file(other, "/a.bin", data)
    other_cuts = {e.offset for e in resolve(other.tree, "/a.bin").content.extents}
    assert len(other_cuts & {e.offset for e in owner_extents}) <= 2  # offset 0, and chance
