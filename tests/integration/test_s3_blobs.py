"""S3Blobs, the node's S3 blob store, against a real S3 server (juicefs gateway: tests/backends)."""

from __future__ import annotations

import os
import time

import pytest

from anysyncfs.core import crypto
from anysyncfs.errors import IdMismatch, NotFound, StoreError
from anysyncfs.store import s3blobs
from anysyncfs.store.blobstore import BlobStore, BlobStoreUnavailable
from tests.backends.fixtures import PgS3


def test_put_get_has_size_delete_and_listing(pg_s3: PgS3) -> None:
    blobs = pg_s3.blob_store()
    assert isinstance(blobs, BlobStore)
    data = os.urandom(70_000)
    blob_id = crypto.blake3(data)
    assert not blobs.has(blob_id)
    with pytest.raises(NotFound):
        blobs.get(blob_id)
    blobs.put(blob_id, data)
    blobs.put(blob_id, data)  # idempotent
    assert blobs.has(blob_id) and blobs.size_of(blob_id) == len(data) and blobs.get(blob_id) == data
    assert blobs.ids_modified_before(int(time.time() * 1e6) + 60_000_000) == [blob_id]
    assert blobs.ids_modified_before(int(time.time() * 1e6) - 3_600_000_000) == []
    with pytest.raises(IdMismatch):
        blobs.put(crypto.blake3(b"other"), data)  # bytes that do not hash to the ID are refused
    assert blobs.delete(blob_id) and not blobs.delete(blob_id) and not blobs.has(blob_id)


def test_a_damaged_or_oversized_object_is_never_served(pg_s3: PgS3) -> None:
    blobs = pg_s3.blob_store()
    blob_id = crypto.blake3(b"the real bytes")
    blobs.client.put_object(Bucket=blobs.bucket, Key=blobs.key_of(blob_id), Body=b"the fake bytes")
    with pytest.raises(IdMismatch):
        blobs.get(blob_id)
    small = s3blobs.S3Blobs(blobs.bucket, blobs.prefix, blobs.client, max_blob_len=10)
    with pytest.raises(StoreError, match="more than the limit"):
        small.get(blob_id)  # refused from the object's length, before its bytes are read


def test_large_blobs_go_up_in_parts(pg_s3: PgS3, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3blobs, "PART_SIZE", 5 << 20)  # S3's smallest part size, to keep the test small
    blobs = pg_s3.blob_store()
    data = os.urandom(11 << 20)  # three parts
    blob_id = crypto.blake3(data)
    calls: list[str] = []
    real = blobs.client.upload_part
    monkeypatch.setattr(blobs.client, "upload_part", lambda **kw: calls.append("part") or real(**kw))
    blobs.put(blob_id, data)
    assert calls == ["part"] * 3 and blobs.get(blob_id) == data


def test_an_unreachable_server_is_a_retryable_error(pg_s3: PgS3) -> None:
    from tests.backends.servers import free_port

    env = pg_s3.env()
    down = s3blobs.S3Blobs.from_url(pg_s3.blobs_url, endpoint_url=f"http://127.0.0.1:{free_port()}",
                                    region=env["AWS_REGION"], access_key_id=env["AWS_ACCESS_KEY_ID"],
                                    secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    data = b"x" * 100
    with pytest.raises(BlobStoreUnavailable, match="S3: cannot store"):
        down.put(crypto.blake3(data), data)
    with pytest.raises(BlobStoreUnavailable):
        down.has(crypto.blake3(data))
    with pytest.raises(BlobStoreUnavailable):
        down.has_many([crypto.blake3(data), crypto.blake3(b"other")])


def test_has_many_answers_for_each_id_with_concurrent_requests(pg_s3: PgS3) -> None:
    blobs = pg_s3.blob_store()
    stored = [os.urandom(100 + n) for n in range(40)]
    for data in stored:
        blobs.put(crypto.blake3(data), data)
    held = [crypto.blake3(d) for d in stored]
    absent = [crypto.blake3(b"absent %d" % n) for n in range(40)]
    asked = [x for pair in zip(held, absent) for x in pair] + held[:3]  # interleaved, with repeats
    assert blobs.has_many(asked) == set(held)
    assert blobs.has_many([]) == set() and blobs.has_many(absent[:1]) == set() and blobs.has_many(held[:1]) == {held[0]}
    blobs.delete(held[5])
    assert blobs.has_many(held) == set(held) - {held[5]}


def test_a_small_slice_reads_only_its_groups_and_a_damaged_group_is_never_served(
        pg_s3: PgS3, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anysyncfs.core import bao
    from anysyncfs.store.blobfiles import BlobFiles

    blobs = pg_s3.blob_store()
    data = os.urandom(3 << 20)  # 192 groups
    blob_id = crypto.blake3(data)
    blobs.put(blob_id, data)
    reference = BlobFiles(tmp_path / "ref")
    reference.put(blob_id, data)
    ranges = [(100, 10), (2 << 20, 40_000), (len(data) - 5, 5)]
    asked: list[str] = []
    real = blobs.client.get_object
    monkeypatch.setattr(blobs.client, "get_object", lambda **kw: asked.append(kw.get("Range", "whole")) or real(**kw))
    got = blobs.read_slice(blob_id, ranges)
    assert got == reference.read_slice(blob_id, ranges)
    bao.decode_slice(blob_id, got, ranges)  # verifies against the ID (raises on a bad slice)
    ranged = [r for r in asked if r.startswith("bytes=")]
    assert ranged and "whole" not in asked[1:]  # the outboard object is read whole; the blob only in ranges
    assert sum(int(b) - int(a) + 1 for a, b in (r[6:].split("-") for r in ranged)) < 100_000

    # One byte flipped inside a group the slice needs: refused, not served.
    damaged = bytearray(data)
    damaged[(2 << 20) + 1] ^= 1
    blobs.client.put_object(Bucket=blobs.bucket, Key=blobs.key_of(blob_id), Body=bytes(damaged))
    with pytest.raises(IdMismatch):
        blobs.read_slice(blob_id, ranges)


def test_has_many_lists_a_crowded_directory_and_heads_what_a_short_page_did_not_reach(
        pg_s3: PgS3, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = pg_s3.blob_store()
    same_dir: list[bytes] = []  # blobs whose IDs share their first byte: one "ab/" directory
    n = 0
    while len(same_dir) < 12:
        data = b"blob %d" % n
        n += 1
        if crypto.blake3(data)[0] == 0x5A:
            same_dir.append(data)
    ids = sorted(crypto.blake3(d) for d in same_dir)
    for data in same_dir[::2]:  # half of them stored
        blobs.put(crypto.blake3(data), data)
    stored = {crypto.blake3(d) for d in same_dir[::2]}
    calls: list[str] = []
    for name in ("list_objects_v2", "head_object"):
        real = getattr(blobs.client, name)
        monkeypatch.setattr(blobs.client, name, lambda real=real, name=name, **kw: calls.append(name) or real(**kw))
    assert blobs.has_many(ids) == stored
    assert calls == ["list_objects_v2"]  # one page answered all twelve
    calls.clear()
    monkeypatch.setattr(s3blobs, "LIST_PAGE", 3)  # a page that ends early: the rest by HEAD
    assert blobs.has_many(ids) == stored
    assert calls.count("list_objects_v2") == 1 and 0 < calls.count("head_object") < len(ids)
