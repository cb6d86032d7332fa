"""Verified reads of committed content (anysyncfs.fs.reading): every read equals a plain in-memory model, a bad
segment gives EIO and never wrong bytes, a missing blob raises BlobMissing unchanged, and the cache stays bounded."""

from __future__ import annotations

import errno
import logging
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import blob, crypto, padding
from anysyncfs.core.encoding import encode
from anysyncfs.core.ops import ChunkRef, Content, Extent
from anysyncfs.errors import BlobMissing, FsError, IdMismatch, NotFound, StoreError
from anysyncfs.fs import reading
from anysyncfs.fs.reading import ContentReads

KEY_BASE = blob.chunk_key_base(bytes(range(32)))
SEG = blob.SEGMENT_SIZE
READ = 128 * 1024  # what the kernel asks for at a time


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def text_bytes(n: int, seed: int) -> bytes:
    line = f"line {seed}: all work and no play makes jack a dull boy\n".encode()
    return (line * (n // len(line) + 1))[:n]


@dataclass
class Store:
    """Blobs by ID. ``get`` verifies the ID as Replica.get_blob does, unless a test serves damaged bytes on
    purpose; ``missing`` IDs raise BlobMissing; every fetch is counted."""

    blobs: dict[bytes, bytes] = field(default_factory=dict)
    missing: set[bytes] = field(default_factory=set)
    damaged: dict[bytes, bytes] = field(default_factory=dict)  # served as is, without the ID check
    fetches: Counter[bytes] = field(default_factory=Counter)

    def put(self, blob_id: bytes, data: bytes) -> None:
        self.blobs[blob_id] = data

    def get(self, blob_id: bytes) -> bytes:
        self.fetches[blob_id] += 1
        if blob_id in self.missing:
            raise BlobMissing(blob_id)
        if blob_id in self.damaged:
            return self.damaged[blob_id]
        data = self.blobs.get(blob_id)
        if data is None:
            raise NotFound("no such blob")
        if crypto.blake3(data) != blob_id:
            raise IdMismatch("blob does not hash to its ID")
        return data


@dataclass(frozen=True)
class Piece:
    gap: int  # zero bytes (a hole) before this chunk
    length: int
    compressible: bool


def make_content(
    store: Store, pieces: list[Piece], tail: int, *, seed: int = 0, manifest: bool = False
) -> tuple[Content, bytes]:
    """A content whose extents follow ``pieces`` (holes between them), ``tail`` bytes after the last one (a
    negative tail cuts the last chunk short, as a truncation does), and the bytes a reader must see."""
    model = bytearray()
    extents: list[Extent] = []
    for i, piece in enumerate(pieces):
        model += bytes(piece.gap)
        make = text_bytes if piece.compressible else random_bytes
        plain = make(piece.length, seed * 1000 + i)
        ref, data = blob.seal_chunk(plain, KEY_BASE)
        store.put(ref.blob, data)
        extents.append(Extent(offset=len(model), chunk=ref))
        model += plain
    size = max(len(model) + tail, extents[-1].offset + 1 if extents else 0, 1)
    model = model[:size] + bytes(max(0, size - len(model)))
    if manifest:
        ref, data = blob.seal_chunk(encode(extents), KEY_BASE)
        store.put(ref.blob, data)
        return Content(size=size, manifest=ref), bytes(model)
    return Content(size=size, extents=extents), bytes(model)


def chunk_refs(content: Content, reads: ContentReads) -> list[ChunkRef]:
    return [e.chunk for e in reads.extents(content)]


# ---------------------------------------------------------------------------------------------------- equals the model
pieces_strategy = st.lists(
    st.builds(
        Piece,
        gap=st.one_of(st.just(0), st.integers(1, 3 * SEG)),
        length=st.one_of(st.integers(1, 2 * SEG), st.integers(3 * SEG, 5 * SEG + 7)),
        compressible=st.booleans(),
    ),
    min_size=1,
    max_size=5,
)
reads_strategy = st.lists(st.tuples(st.integers(0, 24 * SEG), st.integers(0, 6 * SEG)), min_size=1, max_size=25)


@settings(max_examples=60)
@given(
    pieces=pieces_strategy,
    tail=st.integers(-SEG, 2 * SEG),
    manifest=st.booleans(),
    cache_bytes=st.sampled_from([0, 3 * SEG, 64 << 20]),
    reads=reads_strategy,
    seed=st.integers(0, 3),
)
def test_random_reads_equal_the_model(
    pieces: list[Piece], tail: int, manifest: bool, cache_bytes: int, reads: list[tuple[int, int]], seed: int
) -> None:
    store = Store()
    content, model = make_content(store, pieces, tail, seed=seed, manifest=manifest)
    reads_ = ContentReads(store.get, cache_bytes=cache_bytes)
    for offset, size in reads:
        offset = offset % (content.size + SEG)  # sometimes past the end
        assert reads_.read(content, offset, size) == model[offset : offset + size]
        assert reads_.cached_bytes <= cache_bytes
    # A sequential pass after the random ones (partly cached chunks, the rest decrypted on the way).
    got = b"".join(reads_.read(content, offset, READ) for offset in range(0, content.size, READ))
    assert got == model
    for ref in chunk_refs(content, reads_):
        start = ref.length // 3
        assert b"".join(reads_.chunk_range(ref, start, ref.length)) == reads_.chunk(ref)[start:]


def test_sequential_read_fetches_each_blob_once_and_keeps_only_plaintext() -> None:
    store = Store()
    pieces = [Piece(0, 5 * SEG + 100, False), Piece(SEG, 3 * SEG, True), Piece(0, 7 * SEG - 3, False)]
    content, model = make_content(store, pieces, 2 * SEG)
    reads = ContentReads(store.get)
    for size in (READ, 4096, 3 * READ + 17):
        reads.drop_cache()
        store.fetches.clear()
        got = b"".join(reads.read(content, offset, size) for offset in range(0, content.size, size))
        assert got == model
        refs = chunk_refs(content, reads)
        assert all(store.fetches[ref.blob] == 1 for ref in refs)
        # Every chunk was read whole: its blob was dropped, its plaintext is what the cache holds.
        assert reads.cached_bytes == sum(ref.length for ref in refs)


def test_a_random_read_decrypts_only_its_segments_and_a_second_read_the_rest() -> None:
    store = Store()
    content, model = make_content(store, [Piece(0, 8 * SEG, False)], 0)
    reads = ContentReads(store.get)
    (ref,) = chunk_refs(content, reads)
    raw = store.blobs[ref.blob]  # the very object get_blob hands out
    unreferenced = sys.getrefcount(raw)
    assert reads.read(content, 5 * SEG + 10, 4096) == model[5 * SEG + 10 : 5 * SEG + 10 + 4096]
    assert reads.cached_bytes == len(raw) + SEG  # the verified blob and one decrypted segment
    assert sys.getrefcount(raw) == unreferenced + 1
    assert reads.read(content, SEG, 10) == model[SEG : SEG + 10]
    assert reads.cached_bytes == ref.length  # read again: decrypted whole, the blob dropped
    assert sys.getrefcount(raw) == unreferenced
    assert store.fetches[ref.blob] == 1
    assert reads.read(content, 0, content.size) == model


def test_compressed_chunk_is_opened_once_and_cached_as_plaintext() -> None:
    store = Store()
    content, model = make_content(store, [Piece(0, 4 * SEG, True)], 0)
    reads = ContentReads(store.get)
    (ref,) = chunk_refs(content, reads)
    assert blob.is_compressed(store.blobs[ref.blob], ref)
    for offset in (3 * SEG, 17, 2 * SEG - 5, 0):
        assert reads.read(content, offset, 9000) == model[offset : offset + 9000]
    assert store.fetches[ref.blob] == 1
    assert reads.cached_bytes == ref.length


@pytest.mark.parametrize("compressible", [False, True])
def test_cache_is_bounded_and_evicts_least_recently_used(compressible: bool) -> None:
    store = Store()
    pieces = [Piece(0, 2 * SEG, compressible) for _ in range(6)]
    content, model = make_content(store, pieces, 0)
    reads = ContentReads(store.get, cache_bytes=9 * SEG)  # four whole chunks; a chunk may take a quarter
    refs = chunk_refs(content, reads)
    for offset in range(0, content.size, READ):
        assert reads.read(content, offset, READ) == model[offset : offset + READ]
        assert reads.cached_bytes <= 9 * SEG
    store.fetches.clear()
    assert reads.read(content, content.size - 10, 10) == model[-10:]  # the last chunk is still cached
    assert reads.read(content, 0, 10) == model[:10]  # the first one was evicted
    assert store.fetches[refs[-1].blob] == 0 and store.fetches[refs[0].blob] == 1


def test_a_chunk_too_large_for_the_cache_is_read_but_not_kept() -> None:
    store = Store()
    content, model = make_content(store, [Piece(0, 3 * SEG, False)], 0)
    reads = ContentReads(store.get, cache_bytes=4 * SEG)  # a chunk may take at most a quarter
    for offset in (0, SEG, 2 * SEG):
        assert reads.read(content, offset, 100) == model[offset : offset + 100]
    assert reads.cached_bytes == 0
    assert sum(store.fetches.values()) == 3


def test_drop_cache_forgets_everything() -> None:
    store = Store()
    content, model = make_content(store, [Piece(0, 2 * SEG, False)], 0, manifest=True)
    reads = ContentReads(store.get)
    assert reads.read(content, 0, 10) == model[:10]
    reads.drop_cache()
    assert reads.cached_bytes == 0
    fetched = sum(store.fetches.values())
    assert reads.read(content, 0, 10) == model[:10]
    assert sum(store.fetches.values()) == fetched + 2  # the manifest and the chunk again


def test_inline_and_empty_contents() -> None:
    reads = ContentReads(Store().get)
    inline = Content(size=10, inline=b"abcdef")
    assert reads.read(inline, 0, 100) == b"abcdef\0\0\0\0"
    assert reads.read(inline, 4, 3) == b"ef\0"
    assert reads.read(inline, 10, 3) == b""
    assert reads.read(Content(size=5), 1, 3) == bytes(3)
    assert reads.read(Content(size=0), 0, 3) == b""
    assert reads.extents(inline) == []


def test_concurrent_readers_all_see_the_model() -> None:
    store = Store()
    pieces = [Piece(SEG // 2, 3 * SEG + i, i % 2 == 0) for i in range(5)]
    content, model = make_content(store, pieces, SEG)
    reads = ContentReads(store.get, cache_bytes=8 * SEG)  # small: threads evict each other's chunks
    failures: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            offset, size = rng.randrange(content.size), rng.choice([4096, READ, 3 * SEG])
            if reads.read(content, offset, size) != model[offset : offset + size]:
                failures.append(f"{offset}+{size}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert reads.cached_bytes <= 8 * SEG


# ---------------------------------------------------------------------------------------------------- damaged blobs
def damaged_store(flip_at: Callable[[bytes], int]) -> tuple[Store, Content, bytes, ChunkRef]:
    store = Store()
    content, model = make_content(store, [Piece(0, 4 * SEG + 5, False)], 0)
    (ref,) = [e.chunk for e in content.extents]
    bad = bytearray(store.blobs[ref.blob])
    bad[flip_at(bytes(bad))] ^= 0x01
    store.damaged[ref.blob] = bytes(bad)  # as if get_blob handed out bytes it should have rejected
    return store, content, model, ref


def test_a_corrupted_segment_gives_eio_and_never_wrong_bytes(caplog: pytest.LogCaptureFixture) -> None:
    third_segment = blob.HEADER_LEN + 2 * (SEG + blob.TAG_LEN) + 100
    store, content, model, ref = damaged_store(lambda _: third_segment)
    reads = ContentReads(store.get)
    assert reads.read(content, 10, 1000) == model[10:1010]  # segment 0 is intact
    # Read again: the rest is decrypted too; segment 2 fails there, silently, as nobody asked for it.
    assert reads.read(content, 3 * SEG, 1000) == model[3 * SEG : 3 * SEG + 1000]
    with caplog.at_level(logging.ERROR, logger="anysyncfs.fs.reading"):
        for offset, size in ((2 * SEG, 1), (2 * SEG - 10, 20), (0, content.size)):
            with pytest.raises(FsError) as e:
                reads.read(content, offset, size)
            assert e.value.errno == errno.EIO
    # One line for the three failed reads of the same blob (each is EIO; the repeats are logged at DEBUG).
    assert len(caplog.records) == 1 and "integrity failure" in caplog.records[0].getMessage()
    assert reads.read(content, 4 * SEG, 5) == model[4 * SEG :]


def test_malformed_padding_gives_eio_only_where_it_lies() -> None:
    """A blob a member sealed correctly but padded wrongly (a non-zero byte after the marker, in the segment the
    chunk ends in): the segments before it still read, the one holding the bad padding is EIO."""
    data = random_bytes(4 * SEG + 5, seed=3)
    key = crypto.blake3_keyed(KEY_BASE, data)
    total = padding.padded_length(len(data))
    padded = data + b"\x80" + b"\x07" + bytes(total - len(data) - 2)
    header = blob.HEADER.pack(blob.BLOB_TAG, blob.BLOB_VERSION, 0, total, blob.ZERO_SALT)
    aead = blob._segment_aead(key, blob.ZERO_SALT)
    count = blob.segment_count(total)
    sealed = header + b"".join(
        aead.encrypt(blob.NONCE.pack(i, i == count - 1), padded[i * SEG : (i + 1) * SEG], header) for i in range(count)
    )
    ref = ChunkRef(blob=crypto.blake3(sealed), key=key, length=len(data))
    store = Store()
    store.put(ref.blob, sealed)
    content = Content(size=len(data), extents=[Extent(offset=0, chunk=ref)])
    reads = ContentReads(store.get)
    assert reads.read(content, SEG + 7, 3 * SEG - 7) == data[SEG + 7 : 4 * SEG]  # segments 1..3: fine
    for offset, size in ((4 * SEG, 5), (4 * SEG + 1, 1), (0, len(data))):
        with pytest.raises(FsError) as e:
            reads.read(content, offset, size)
        assert e.value.errno == errno.EIO


def test_a_corrupted_header_fails_every_read() -> None:
    store, content, model, ref = damaged_store(lambda _: 3)  # the stored length
    reads = ContentReads(store.get)
    for offset in (0, 2 * SEG, 4 * SEG):
        with pytest.raises(FsError) as e:
            reads.read(content, offset, 10)
        assert e.value.errno == errno.EIO
    assert reads.cached_bytes == 0


@settings(max_examples=40)
@given(position=st.integers(0, blob.HEADER_LEN + 4 * SEG + 5 + 5 * blob.TAG_LEN - 1), reads_=reads_strategy)
def test_any_flipped_bit_gives_the_model_or_eio(position: int, reads_: list[tuple[int, int]]) -> None:
    store, content, model, ref = damaged_store(lambda _: position)
    reads = ContentReads(store.get)
    for offset, size in reads_:
        offset %= content.size
        try:
            got = reads.read(content, offset, size)
        except FsError as e:
            assert e.errno == errno.EIO
        else:
            assert got == model[offset : offset + size]


def test_blob_failing_its_id_check_gives_eio(caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    content, _ = make_content(store, [Piece(0, 2 * SEG, False)], 0)
    (ref,) = [e.chunk for e in content.extents]
    store.blobs[ref.blob] = store.blobs[ref.blob][:-1] + b"\0"  # the file went bad: get_blob rejects it
    reads = ContentReads(store.get)
    with caplog.at_level(logging.ERROR, logger="anysyncfs.fs.reading"), pytest.raises(FsError) as e:
        reads.read(content, 0, 10)
    assert e.value.errno == errno.EIO and len(caplog.records) == 1


# ---------------------------------------------------------------------------------------------------- missing blobs
def test_blob_missing_propagates_unchanged_and_a_retry_succeeds() -> None:
    store = Store()
    content, model = make_content(store, [Piece(0, 2 * SEG, False), Piece(10, 3 * SEG, True)], 0)
    second = content.extents[1].chunk.blob
    store.missing.add(second)
    reads = ContentReads(store.get)
    assert reads.read(content, 0, 100) == model[:100]
    for offset, size in ((2 * SEG + 10, 5), (2 * SEG - 5, 100), (0, content.size)):
        with pytest.raises(BlobMissing) as e:
            reads.read(content, offset, size)
        assert type(e.value) is BlobMissing and e.value.blob_id == second
    store.missing.clear()  # the sync layer fetched it
    assert reads.read(content, 0, content.size) == model


def test_missing_manifest_propagates_from_read_extents_and_reader() -> None:
    store = Store()
    content, model = make_content(store, [Piece(0, 2 * SEG, False)], 0, manifest=True)
    assert content.manifest is not None
    store.missing.add(content.manifest.blob)
    reads = ContentReads(store.get)
    for call in (lambda: reads.read(content, 0, 10), lambda: reads.extents(content), lambda: reads.reader(content)):
        with pytest.raises(BlobMissing) as e:
            call()
        assert e.value.blob_id == content.manifest.blob
    assert reads.stored_bytes(content) == content.size  # unknown yet: counted as dense
    assert not reads.all_local(content, lambda _: True)
    store.missing.clear()
    assert reads.read(content, 0, content.size) == model
    assert reads.stored_bytes(content) == 2 * SEG


def test_other_not_found_becomes_eio(caplog: pytest.LogCaptureFixture) -> None:
    store = Store()
    content, _ = make_content(store, [Piece(0, SEG, False)], 0)
    store.blobs.clear()  # plain NotFound, not BlobMissing
    reads = ContentReads(store.get)
    with caplog.at_level(logging.WARNING, logger="anysyncfs.fs.reading"), pytest.raises(FsError) as e:
        reads.read(content, 0, 10)
    assert e.value.errno == errno.EIO and len(caplog.records) == 1


def test_a_disk_error_becomes_eio_logged_once_as_an_io_error(caplog: pytest.LogCaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """get_blob's StoreError (the disk refused the blob file: EIO from the device) is EIO, logged as an I/O error
    (not as an integrity failure: nothing is damaged) and once per FAIL_LOG_INTERVAL_S for the same blob, however
    many requests fail: one read(2) reaches the mount as several (found by tests/fuse/test_5_faults.py)."""
    store = Store()
    content, model = make_content(store, [Piece(0, SEG, False), Piece(0, SEG, False)], 0, seed=5)
    first = content.extents[0].chunk.blob

    def get(blob_id: bytes) -> bytes:
        if blob_id == first and failing:
            raise StoreError(f"cannot read blob {blob_id.hex()}: Input/output error")
        return store.get(blob_id)

    failing = True
    reads = ContentReads(get)
    with caplog.at_level(logging.DEBUG, logger="anysyncfs.fs.reading"):
        for _ in range(3):
            with pytest.raises(FsError) as e:
                reads.read(content, 0, 10)
            assert e.value.errno == errno.EIO
        assert reads.read(content, SEG, 10) == model[SEG : SEG + 10]  # the other blob reads
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "I/O error while reading" in errors[0].getMessage(), errors
    assert "integrity" not in errors[0].getMessage()
    caplog.clear()
    monkeypatch.setattr(reading, "FAIL_LOG_INTERVAL_S", 0.0)  # the interval has passed: logged again
    with caplog.at_level(logging.WARNING, logger="anysyncfs.fs.reading"), pytest.raises(FsError):
        reads.read(content, 0, 10)
    assert len(caplog.records) == 1
    failing = False
    assert reads.read(content, 0, content.size) == model


def test_stored_bytes_and_blocks_count_only_data() -> None:
    store = Store()
    content, _ = make_content(store, [Piece(SEG, 2 * SEG, False), Piece(3 * SEG, SEG, True)], -100)
    reads = ContentReads(store.get)
    assert reads.stored_bytes(content) == 3 * SEG - 100
    assert reads.all_local(content, lambda blob_id: blob_id in store.blobs)
    assert not reads.all_local(content, lambda blob_id: blob_id != content.extents[0].chunk.blob)
