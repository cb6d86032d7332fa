"""Reads of a file whose chunks are not on this device fetch by verified ranges (issue 12 item 4; protocol.md 50.3
"Reads of a chunk this device lacks", 70.12): a 4 KiB read moves the groups of the header, of one sealed 64 KiB
segment and of the blob's last byte, with their proof nodes, over a real TCP connection to a real node, not the
~1 MiB blob; the bytes are right; a sequential reader ends up with whole blob files. A provider that sends a wrong
group, a wrong proof node or a truncated slice is dropped at that group, nothing of it is recorded or read, and the
read is served by another provider (or fails when there is none)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from hostile import HANGUP_BOUND_S, HostileProvider, SpaceCopy, flip, running_node, serving
from test_hostile import MakeHome, add_peer, engine, replicas

from anysyncfs.core import bao
from anysyncfs.core import blob as blobs
from anysyncfs.core.ops import Content
from anysyncfs.errors import BlobMissing, FsError, NotFound, RangesMissing
from anysyncfs.fs.reading import ContentReads
from anysyncfs.net.sync import SpaceSync
from anysyncfs.protocol import messages as m
from anysyncfs.replica.files import put_file, resolve
from anysyncfs.replica.replica import Replica

G = bao.GROUP_LEN
FILE_SIZE = 8 << 20  # 8 MiB of random bytes: ~1 MiB chunks (what a read moves depends on the blob, not the file)


def uncached_file(make_home: MakeHome) -> tuple[Replica, Replica, bytes, Content]:
    """``a`` wrote /big.bin; ``b`` has the change but none of its blobs."""
    a, b = replicas(make_home)
    data = random.Random(12).randbytes(FILE_SIZE)
    change = put_file(a, "/big.bin", data)
    b.ingest_batch([change.raw])
    node = resolve(b.tree, "/big.bin")
    assert node.content.size == FILE_SIZE
    return a, b, data, node.content


async def read(sync: SpaceSync, reads: ContentReads, content: Content, offset: int, size: int) -> bytes:
    """A read as the FUSE adapter does it: missing ranges are fetched by ranges, a missing blob whole, then the
    read is tried again."""
    for _ in range(8):
        try:
            return await trio.to_thread.run_sync(reads.read, content, offset, size)
        except RangesMissing as e:
            await sync.fetch_blob_ranges(e.blob_id, e.ranges, timeout=10.0)
        except BlobMissing as e:
            await sync.fetch_blob(e.blob_id, timeout=10.0)
    raise AssertionError("the read did not settle")


def chunk_blobs(b: Replica, content: Content) -> list[bytes]:
    reads = ContentReads(b.get_blob)
    return [e.chunk.blob for e in reads.extents(content)]


async def test_a_4k_read_of_an_uncached_chunk_moves_its_groups_not_its_blob(
        tmp_path: Path, make_home: MakeHome) -> None:
    a, b, data, content = uncached_file(make_home)
    async with running_node(tmp_path / "node") as (_node, address):
        add_peer(a, address)
        assert (await engine(a).sync_once()).errors == []
        sync = engine(b)
        reads = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, address)
                while not sync._conns:
                    await trio.sleep(0.01)
                conn = next(iter(sync._conns.values()))
                if content.manifest is not None:  # the extent list first (a small blob, fetched whole)
                    await sync.fetch_blob(content.manifest.blob, timeout=10.0)
                extents = reads.extents(content)
                assert len(extents) >= 4
                moved: list[int] = []
                sizes: list[int] = []
                rng = random.Random(4)
                for extent in extents[:-2]:  # one random 4 KiB read in each chunk: a new blob each time
                    # A random 4 KiB read inside one segment (one that straddles two segments reads both).
                    segment = rng.randrange(0, extent.chunk.length // blobs.SEGMENT_SIZE)
                    offset = extent.offset + segment * blobs.SEGMENT_SIZE + rng.randrange(0, blobs.SEGMENT_SIZE - 4096)
                    before = conn.bytes_in
                    assert await read(sync, reads, content, offset, 4096) == data[offset:offset + 4096]
                    moved.append(conn.bytes_in - before)
                    blob_len = blobs.uncompressed_blob_length(extent.chunk)
                    assert not b.blobs.has(extent.chunk.blob)  # only the groups, kept as a partial blob
                    _, have = b.partials.state(extent.chunk.blob)  # type: ignore[misc]
                    start, size = blobs.segments_span(extent.chunk, segment, segment + 1)
                    expected = set(range(start // G, (start + size - 1) // G + 1)) | {(blob_len - 1) // G}
                    assert have == expected and len(have) <= 7
                    # The <= 6 groups of one sealed segment + the blob's last group + proof nodes and framing (no
                    # header group: the header is implied): far below the blob (chunks are 256 KiB to 4 MiB).
                    assert moved[-1] <= 7 * G + 2048 and moved[-1] < blob_len // 3, (moved, blob_len)
                    sizes.append(blob_len)
                # A second read in a chunk already touched, in another segment: no header group again.
                extent = extents[0]
                offset = extent.offset + (extent.chunk.length // 2 // blobs.SEGMENT_SIZE) * blobs.SEGMENT_SIZE + 1000
                before = conn.bytes_in
                assert await read(sync, reads, content, offset, 4096) == data[offset:offset + 4096]
                again = conn.bytes_in - before
                assert again <= 6 * G + 2048
                # Today's whole-blob path, for comparison: the next chunk's blob whole moves all of it.
                whole = extents[-2].chunk
                before = conn.bytes_in
                await sync.fetch_blob(whole.blob, timeout=10.0)
                whole_moved = conn.bytes_in - before
                assert whole_moved >= blobs.uncompressed_blob_length(whole)
                print(f"\n4 KiB random reads of uncached chunks (blobs of {sizes} bytes): bytes received {moved} "
                      f"(mean {sum(moved) / len(moved):.0f}), a second read in a touched blob {again}, "
                      f"the whole-blob fetch {whole_moved}")
                nursery.cancel_scope.cancel()


async def test_a_sequential_reader_gets_the_whole_file_and_whole_blobs(tmp_path: Path, make_home: MakeHome) -> None:
    a, b, data, content = uncached_file(make_home)
    async with running_node(tmp_path / "node") as (_node, address):
        add_peer(a, address)
        assert (await engine(a).sync_once()).errors == []
        sync = engine(b)
        reads = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, address)
                while not sync._conns:
                    await trio.sleep(0.01)
                conn = next(iter(sync._conns.values()))
                before = conn.bytes_in
                fetches: list[int] = []
                by_ranges = sync.fetch_blob_ranges

                async def counted(blob_id: bytes, ranges: object, timeout: float | None = None) -> None:
                    fetches.append(len(ranges))  # type: ignore[arg-type]
                    await by_ranges(blob_id, ranges, timeout)  # type: ignore[arg-type]

                sync.fetch_blob_ranges = counted  # type: ignore[method-assign]
                got = bytearray()
                reads_done = 0
                while len(got) < FILE_SIZE:
                    got += await read(sync, reads, content, len(got), 128 << 10)
                    reads_done += 1
                assert bytes(got) == data
                moved = conn.bytes_in - before
                # The read-ahead is fetched in windows of FETCH_AHEAD_SEGMENTS (2 MiB), not read by read: a round
                # trip or two per chunk (a manifest, if any, is fetched whole), far fewer than the 64 reads.
                chunks = len(chunk_blobs(b, content))
                assert len(fetches) <= 2 * chunks + 2 and len(fetches) < reads_done // 2, (len(fetches), chunks)
                nursery.cancel_scope.cancel()
    # Read through: every chunk's groups all arrived, so each became a blob file (with its outboard), and the
    # partials are gone; the transfer is the blobs plus proof nodes and framing.
    for blob_id in chunk_blobs(b, content):
        assert b.blobs.has(blob_id)
    assert not any(p for p in (b.blobs.root / "partial").iterdir() if p.suffix == ".have")
    assert moved < FILE_SIZE * 1.10


Tamper = Callable[[m.GetBlobRanges, m.BlobSlice], m.BlobSlice]
CASES: dict[str, Tamper] = {
    "wrong group": lambda body, s: m.BlobSlice(flip(s.slice, -1)),  # the last byte of the last group
    "wrong proof node": lambda body, s: m.BlobSlice(flip(s.slice, 8 + 3)),  # the first parent node
    "truncated": lambda body, s: m.BlobSlice(s.slice[: len(s.slice) // 2]),
    "wrong length": lambda body, s: m.BlobSlice(
        (int.from_bytes(s.slice[:8], "little") + G).to_bytes(8, "little") + s.slice[8:]),
    "trailing bytes": lambda body, s: m.BlobSlice(s.slice + bytes(16)),
    "length that puts the range outside": lambda body, s: m.BlobSlice((100).to_bytes(8, "little") + s.slice[8:]),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_bad_group_from_a_provider_never_reaches_the_reader(
        make_home: MakeHome, caplog: pytest.LogCaptureFixture, case: str) -> None:
    a, b, data, content = uncached_file(make_home)
    hostile = HostileProvider(SpaceCopy.of(a))
    hostile.tamper[m.GetBlobRanges] = CASES[case]
    honest = HostileProvider(SpaceCopy.of(a))
    sync = engine(b)
    reads = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
    extent = reads.extents(content)[1] if content.manifest is None else None
    async with serving(hostile) as bad_address, serving(honest) as good_address:
        with trio.fail_after(HANGUP_BOUND_S + 30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, bad_address)
                while not sync._conns:
                    await trio.sleep(0.01)
                if extent is None:  # a manifest: fetched whole from the provider (not tampered with)
                    await sync.fetch_blob(content.manifest.blob, timeout=5.0)  # type: ignore[union-attr]
                    extent = reads.extents(content)[1]
                offset = extent.offset + 100_000  # in segment 1 (a chunk has at least 256 KiB)
                # Only the hostile provider: the fetch fails at the bad group, the provider is dropped, nothing
                # of the answer is recorded, and the read gets no byte.
                with pytest.raises(RangesMissing) as missing:
                    reads.read(content, offset, 4096)
                with pytest.raises(NotFound, match="could not be fetched"):
                    await sync.fetch_blob_ranges(missing.value.blob_id, missing.value.ranges, timeout=1.0)
                assert hostile.only_connection().ended.is_set()
                assert any("sent a bad blob" in r.getMessage() for r in caplog.records), caplog.text
                assert b.partials.state(extent.chunk.blob) is None
                assert not b.blobs.has(extent.chunk.blob)
                with pytest.raises(BlobMissing):
                    reads.read(content, offset, 4096)
                # Another provider: the same read is served, from verified groups only.
                nursery.start_soon(sync.hold_connection, good_address)
                assert await read(sync, reads, content, offset, 4096) == data[offset:offset + 4096]
                nursery.cancel_scope.cancel()
    asked = [r for r in honest.only_connection().requests if isinstance(r, m.GetBlobRanges)]
    assert asked and all(len(bao.groups_of(bao.wanted(blobs.uncompressed_blob_length(extent.chunk), r.ranges)))
                         <= 8 for r in asked)


async def test_a_damaged_partial_gives_eio_never_wrong_bytes(tmp_path: Path, make_home: MakeHome) -> None:
    """The groups kept on disk are not trusted by the read: a byte changed in the partial's data file after it
    was verified fails that segment's AES-GCM tag (EIO)."""
    a, b, data, content = uncached_file(make_home)
    async with running_node(tmp_path / "node") as (_node, address):
        add_peer(a, address)
        assert (await engine(a).sync_once()).errors == []
        sync = engine(b)
        reads = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, address)
                while not sync._conns:
                    await trio.sleep(0.01)
                if content.manifest is not None:
                    await sync.fetch_blob(content.manifest.blob, timeout=10.0)
                extent = reads.extents(content)[0]
                offset = 200_000  # segment 3
                assert await read(sync, reads, content, offset, 4096) == data[offset:offset + 4096]
                path = b.partials.root / f"{extent.chunk.blob.hex()}.data"
                with open(path, "r+b") as f:
                    f.seek(blobs.HEADER_LEN + 3 * (blobs.SEGMENT_SIZE + blobs.TAG_LEN) + 1000)
                    byte = f.read(1)
                    f.seek(-1, os.SEEK_CUR)
                    f.write(bytes([byte[0] ^ 1]))
                # A fresh reader (nothing decrypted in memory): the tag fails; the read then looks at the blob's
                # own header (its group is fetched, verified), finds the uncompressed one, and fails with EIO.
                fresh = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
                with pytest.raises(FsError) as failed:
                    await read(sync, fresh, content, offset, 4096)
                assert failed.value.errno == 5
                nursery.cancel_scope.cancel()


async def test_a_compressed_chunk_is_fetched_whole(tmp_path: Path, make_home: MakeHome) -> None:
    """A compressed chunk's blob is shorter than the segments a read assumes, and one zstd frame is opened whole:
    the read's ranges fall outside it (the node refuses them) or do not open as uncompressed segments, and the
    blob is fetched whole, once, through the same verified path."""
    a, b = replicas(make_home)
    data = (b"compressible text, " * 100_000)[:1_500_000]
    b.ingest_batch([put_file(a, "/text.txt", data).raw])
    content = resolve(b.tree, "/text.txt").content
    async with running_node(tmp_path / "node") as (_node, address):
        add_peer(a, address)
        assert (await engine(a).sync_once()).errors == []
        sync = engine(b)
        reads = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, address)
                while not sync._conns:
                    await trio.sleep(0.01)
                for offset in (700_000, 0, 1_400_000):
                    assert await read(sync, reads, content, offset, 4096) == data[offset:offset + 4096]
                nursery.cancel_scope.cancel()
    assert all(b.blobs.has(blob_id) for blob_id in chunk_blobs(b, content))


async def test_readers_of_the_same_ranges_at_once_share_one_request(make_home: MakeHome) -> None:
    a, b, data, content = uncached_file(make_home)
    provider = HostileProvider(SpaceCopy.of(a))  # honest; records what it is asked
    sync = engine(b)
    reads = ContentReads(b.get_blob, read_ranges=b.read_blob_ranges)
    async with serving(provider) as address:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.hold_connection, address)
                while not sync._conns:
                    await trio.sleep(0.01)
                if content.manifest is not None:
                    await sync.fetch_blob(content.manifest.blob, timeout=5.0)
                offset = reads.extents(content)[0].offset + 100_000
                with pytest.raises(RangesMissing) as missing:
                    reads.read(content, offset, 4096)
                async with trio.open_nursery() as readers:
                    for _ in range(4):
                        readers.start_soon(sync.fetch_blob_ranges, missing.value.blob_id, missing.value.ranges, 10.0)
                assert reads.read(content, offset, 4096) == data[offset:offset + 4096]
                nursery.cancel_scope.cancel()
    assert len([r for r in provider.only_connection().requests if isinstance(r, m.GetBlobRanges)]) == 1
