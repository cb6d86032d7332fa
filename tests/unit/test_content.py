"""Chunking and file content: identical cuts when streaming, inline/extents/manifest, holes, ranges, dedup."""

from __future__ import annotations

import io
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import blob, content
from anysyncfs.core.chunking import DEFAULT_PARAMS, ChunkParams, check_params, iter_chunks
from anysyncfs.core.content import (
    MANIFEST_INLINE_EXTENTS,
    ContentBuilder,
    blob_refs,
    build_content,
    check_content,
    load_extents,
    read_range,
)
from anysyncfs.core.encoding import encode
from anysyncfs.core.ops import INLINE_MAX, ChunkRef, Content, Extent
from anysyncfs.errors import DecodeError, IdMismatch, NotFound

KEY_BASE = blob.chunk_key_base(bytes(range(32)))
SMALL = ChunkParams(min_size=64, avg_size=256, max_size=1024)  # many chunks from little data
MiB = 1 << 20


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class Store:
    """An in-memory blob store that records every put."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}
        self.puts: list[bytes] = []

    def put(self, blob_id: bytes, data: bytes) -> None:
        self.puts.append(blob_id)
        self.blobs[blob_id] = bytes(data)

    def get(self, blob_id: bytes) -> bytes:
        try:
            return self.blobs[blob_id]
        except KeyError:
            raise NotFound("no such blob") from None


class Dribble(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per call (short reads), via readinto or read only."""

    def __init__(self, data: bytes, step: int, readinto: bool = True) -> None:
        self._data, self._pos, self._step, self._readinto = data, 0, step, readinto

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n

    def __getattribute__(self, name: str) -> object:
        if name == "readinto" and not object.__getattribute__(self, "_readinto"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    def read(self, n: int = -1) -> bytes:
        n = len(self._data) - self._pos if n < 0 else min(n, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


# ---------------------------------------------------------------------------------------------------- chunking
def cuts(chunks: object) -> list[tuple[int, int]]:
    return [(off, len(data)) for off, data in chunks]  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 20_000),
    block=st.integers(1, 5000),
    step=st.integers(1, 9000),
    prefix=st.integers(0, 3000),
    use_readinto=st.booleans(),
    seed=st.integers(0, 3),
)
def test_streamed_cuts_equal_whole_buffer_cuts(
    size: int, block: int, step: int, prefix: int, use_readinto: bool, seed: int
) -> None:
    data = rand(size, seed) if seed else (b"ab" * size)[:size]  # random and periodic data
    expected = cuts(iter_chunks(data, SMALL))
    assert sum(n for _, n in expected) == size
    prefix = min(prefix, size)
    stream = Dribble(data[prefix:], step, use_readinto)
    got_chunks = list(iter_chunks(stream, SMALL, prefix=data[:prefix], block_size=block))
    assert cuts(got_chunks) == expected
    assert b"".join(bytes(d) for _, d in got_chunks) == data  # views stay valid after later reads


def test_default_params_stream_equals_buffer() -> None:
    data = rand(13 * MiB, seed=5)
    expected = cuts(iter_chunks(data))
    assert cuts(iter_chunks(io.BytesIO(data), block_size=1)) == expected
    assert all(DEFAULT_PARAMS.min_size <= n <= DEFAULT_PARAMS.max_size for _, n in expected[:-1])


def test_chunk_params_are_checked() -> None:
    ChunkParams(256 << 10, 3 << 20, 4 << 20)  # not a power of two: allowed (as the space header allows it)
    for bad in ((32, 256, 1024), (64, 100, 1024), (64, 256, 17 << 20), (512, 256, 1024), (64, 2048, 1024)):
        with pytest.raises(DecodeError):
            check_params(*bad)
        with pytest.raises(DecodeError):
            ChunkParams(*bad)


# ---------------------------------------------------------------------------------------------------- building
@pytest.mark.parametrize(
    "data",
    [b"", b"x", rand(INLINE_MAX), rand(INLINE_MAX + 1), rand(5 * MiB + 17), (b"compressible text! " * 400_000)],
    ids=lambda d: str(len(d)),
)
@pytest.mark.parametrize("as_stream", [False, True], ids=["bytes", "stream"])
def test_round_trip(data: bytes, as_stream: bool) -> None:
    store = Store()
    source = io.BytesIO(data) if as_stream else data
    c = build_content(source, KEY_BASE, store.put)
    assert c.size == len(data)
    if len(data) <= INLINE_MAX:
        assert c.inline == data and not c.extents and c.manifest is None and not store.puts
    else:
        assert not c.inline and c.extents and c.manifest is None
        assert len(store.puts) == len(set(store.puts)) == len({e.chunk.blob for e in c.extents})
    assert read_range(c, 0, len(data) + 10, store.get) == data
    assert read_range(c, len(data), 10, store.get) == b""
    assert Content(size=c.size, inline=c.inline, extents=c.extents) == c
    check_content(c)


def test_workers_give_the_same_content() -> None:
    data = rand(6 * MiB, seed=9)
    s0, s2 = Store(), Store()
    c0 = build_content(data, KEY_BASE, s0.put, SMALL_MID, workers=0)
    with ContentBuilder(KEY_BASE, SMALL_MID, workers=2) as builder:
        c2 = builder.build(io.BytesIO(data), s2.put)
        assert builder.build(data, Store().put) == c2
    assert c0 == c2 and s0.puts == s2.puts


SMALL_MID = ChunkParams(min_size=16 << 10, avg_size=64 << 10, max_size=256 << 10)


def test_same_chunk_twice_is_put_once() -> None:
    block = rand(5_000, seed=4)
    data = block * 40  # periodic: once the cuts fall in step with the period, every chunk recurs
    store = Store()
    c = build_content(data, KEY_BASE, store.put, SMALL)
    extents = load_extents(c, store.get)
    assert len(store.puts) == len(set(store.puts))
    assert len({e.chunk.blob for e in extents}) < len(extents) // 2
    assert read_range(c, 0, len(data), store.get) == data


def test_zero_chunks_become_holes() -> None:
    data = rand(300_000, seed=2) + bytes(3 * MiB) + rand(300_000, seed=3)
    store = Store()
    c = build_content(data, KEY_BASE, store.put, SMALL_MID)
    covered = sum(e.chunk.length for e in c.extents)
    assert covered < len(data) - 2 * MiB
    assert read_range(c, 0, len(data), store.get) == data
    all_zero = build_content(bytes(2 * MiB), KEY_BASE, store.put)
    assert all_zero.size == 2 * MiB and not all_zero.extents and all_zero.manifest is None
    assert read_range(all_zero, MiB - 5, 10, store.get) == bytes(10)


def test_manifest_for_many_extents() -> None:
    data = rand(200_000, seed=6)
    store = Store()
    c = build_content(data, KEY_BASE, store.put, SMALL)
    assert c.manifest is not None and not c.extents and not c.inline
    extents = load_extents(c, store.get)
    assert len(extents) > MANIFEST_INLINE_EXTENTS
    assert blob.open_chunk(store.get(c.manifest.blob), c.manifest) == encode(extents)
    assert read_range(c, 0, len(data), store.get) == data
    refs = blob_refs(c, store.get)
    assert refs[0] == c.manifest
    assert {r.blob for r in refs} == set(store.blobs)
    # the manifest blob is checked like any other
    store.blobs[c.manifest.blob] = store.blobs[c.manifest.blob][:-1] + b"\x00"
    with pytest.raises(IdMismatch):
        read_range(c, 0, 10, store.get)


def test_few_extents_stay_in_the_change() -> None:
    store = Store()
    c = build_content(rand(5000 * 64), KEY_BASE, store.put, ChunkParams(1024, 4096, 8192))
    assert c.manifest is None and 2 <= len(c.extents) <= MANIFEST_INLINE_EXTENTS


def test_dedup_after_a_one_byte_change() -> None:
    data = bytearray(rand(64 * MiB, seed=8))
    store = Store()
    with ContentBuilder(KEY_BASE, workers=2) as builder:
        first = builder.build(bytes(data), store.put)
        before = set(store.blobs)
        data[len(data) // 2] ^= 0xFF
        second = builder.build(io.BytesIO(bytes(data)), store.put)
    new = set(store.blobs) - before
    assert 1 <= len(new) <= 3
    assert first != second and first.size == second.size
    assert read_range(second, len(data) // 2 - 5, 10, store.get) == bytes(data[len(data) // 2 - 5 : len(data) // 2 + 5])


# ---------------------------------------------------------------------------------------------------- ranges
RANGE_DATA = rand(150_000, seed=12) + bytes(20_000) + rand(40_000, seed=13)
RANGE_STORE = Store()
RANGE_CONTENT = build_content(RANGE_DATA, KEY_BASE, RANGE_STORE.put, ChunkParams(1024, 4096, 16384))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(RANGE_DATA) + 100), st.integers(0, 70_000), st.booleans())
def test_range_reads_equal_slices(offset: int, size: int, verify: bool) -> None:
    assert RANGE_CONTENT.manifest is not None or RANGE_CONTENT.extents
    got = read_range(RANGE_CONTENT, offset, size, RANGE_STORE.get, verify_ids=verify)
    assert got == RANGE_DATA[offset : offset + size]


def test_holes_read_as_zeros() -> None:
    store = Store()
    r1, b1 = blob.seal_chunk(b"A" * 5000, KEY_BASE)
    r2, b2 = blob.seal_chunk(rand(3000), KEY_BASE)
    store.put(r1.blob, b1)
    store.put(r2.blob, b2)
    c = Content(size=20_000, extents=[Extent(offset=1000, chunk=r1), Extent(offset=10_000, chunk=r2)])
    check_content(c)
    expected = bytes(1000) + b"A" * 5000 + bytes(4000) + rand(3000) + bytes(7000)
    assert read_range(c, 0, 30_000, store.get) == expected
    for off, n in ((0, 1000), (6000, 4000), (13_000, 7000), (500, 1000), (5999, 2), (12_999, 5)):
        assert read_range(c, off, n, store.get) == expected[off : off + n]
    reader = content.ContentReader(c, store.get)
    length, pieces = reader.plan(6000, 4000)
    assert length == 4000 and pieces == []
    # the last extent may run past the size (a truncation that kept the chunk): the excess is not file data
    cut = Content(size=11_000, extents=c.extents)
    assert read_range(cut, 0, 30_000, store.get) == expected[:11_000]
    # inline content shorter than its size reads zeros after it
    assert read_range(Content(size=10, inline=b"abc"), 0, 100, store.get) == b"abc" + bytes(7)


def test_malformed_content_is_rejected() -> None:
    r1, _ = blob.seal_chunk(b"A" * 5000, KEY_BASE)
    r_empty, _ = blob.seal_chunk(b"", KEY_BASE)
    e0 = Extent(offset=0, chunk=r1)
    bad = [
        Content(size=20_000, extents=[Extent(offset=1000, chunk=r1), Extent(offset=5999, chunk=r1)]),  # overlap
        Content(size=20_000, extents=[Extent(offset=9000, chunk=r1), e0]),  # unsorted
        Content(size=100, extents=[e0, Extent(offset=100, chunk=r1)]),  # starts past the end
        Content(size=20_000, extents=[Extent(offset=0, chunk=r_empty)]),  # empty extent
        Content(size=20_000, inline=b"x", extents=[e0]),  # two forms
        Content(size=20_000, extents=[e0], manifest=r1),
        Content(size=1, inline=b"xy"),
    ]
    for c in bad:
        with pytest.raises(DecodeError):
            check_content(c)
        with pytest.raises(DecodeError):
            read_range(c, 0, 10, Store().get)


def test_malformed_manifest_is_rejected() -> None:
    store = Store()
    r1, b1 = blob.seal_chunk(b"A" * 5000, KEY_BASE)
    store.put(r1.blob, b1)
    overlapping = [Extent(offset=0, chunk=r1), Extent(offset=10, chunk=r1)]
    mref, mblob = blob.seal_chunk(encode(overlapping), KEY_BASE)
    store.put(mref.blob, mblob)
    with pytest.raises(DecodeError):
        read_range(Content(size=10_000, manifest=mref), 0, 10, store.get)
    gref, gblob = blob.seal_chunk(b"\x93\x01\x02", KEY_BASE)  # msgpack, but not an extents list
    store.put(gref.blob, gblob)
    with pytest.raises(DecodeError):
        load_extents(Content(size=10_000, manifest=gref), store.get)
    with pytest.raises(NotFound):
        read_range(Content(size=10_000, manifest=ChunkRef(blob=bytes(32), key=bytes(32), length=3)), 0, 1, store.get)


def test_blob_refs_without_manifest() -> None:
    store = Store()
    c = build_content(rand(3 * MiB), KEY_BASE, store.put)
    assert [r.blob for r in blob_refs(c, store.get)] == store.puts
    assert blob_refs(Content(size=3, inline=b"abc"), store.get) == []


def test_manifest_size_bound() -> None:
    worst = Extent(offset=2**63 - 1, chunk=ChunkRef(blob=b"\xff" * 32, key=b"\xff" * 32, length=2**32 - 1))
    assert len(encode(worst)) <= content.EXTENT_MAX_ENCODED
    assert len(encode([worst] * 1000)) <= 5 + 1000 * content.EXTENT_MAX_ENCODED
    assert 5 + content.MAX_MANIFEST_EXTENTS * content.EXTENT_MAX_ENCODED <= blob.MAX_CHUNK_LENGTH


def test_too_many_extents_is_efbig(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from anysyncfs.errors import TooLarge
    from anysyncfs.fs.errnos import errno_of

    monkeypatch.setattr(content, "MAX_MANIFEST_EXTENTS", 150)
    with pytest.raises(TooLarge) as info:
        build_content(rand(200_000), KEY_BASE, Store().put, SMALL)
    assert errno_of(info.value) == errno.EFBIG  # what a FUSE writer sees
