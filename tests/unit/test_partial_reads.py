"""Verified partial reads of local blob files (anysyncfs.fs.reading over anysyncfs.store.blobfiles): a read of an
uncompressed chunk preads only the blob header and the sealed segments it touches, and each segment's AES-GCM tag
is checked before a byte of it is used, so every kind of tampering with the file (a flipped byte, a segment from
another blob or another position, a changed header, a truncated file) gives EIO for the reads it touches and never
wrong bytes, without hashing the whole blob."""

from __future__ import annotations

import errno
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from anysyncfs.core import blob
from anysyncfs.core.ops import ChunkRef, Content, Extent
from anysyncfs.errors import AuthenticationFailed, FsError
from anysyncfs.fs.reading import READ_AHEAD_SEGMENTS, ContentReads
from anysyncfs.store.blobfiles import BlobFiles

KEY_BASE = blob.chunk_key_base(bytes(range(32)))
SEG = blob.SEGMENT_SIZE
SEALED = SEG + blob.TAG_LEN
LENGTH = 1 << 20  # a typical chunk: 16 segments


class Env:
    """One BlobFiles store, a ContentReads over it as a mount wires it, and counters of what it read."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files = BlobFiles(root)
        self.whole_reads: Counter[bytes] = Counter()
        self.pread_bytes = 0
        real_pread = os.pread

        def counting_pread(fd: int, n: int, offset: int) -> bytes:
            data = real_pread(fd, n, offset)
            self.pread_bytes += len(data)
            return data

        monkeypatch.setattr(os, "pread", counting_pread)
        self.reads = ContentReads(self._get_blob, read_ranges=self.files.read_ranges)

    def _get_blob(self, blob_id: bytes) -> bytes:
        self.whole_reads[blob_id] += 1
        return self.files.get(blob_id)

    def add(self, data: bytes, *, compress: bool = False) -> tuple[ChunkRef, Content]:
        ref, sealed = blob.seal_chunk(data, KEY_BASE, compress=compress)
        self.files.put(ref.blob, sealed)
        return ref, Content(size=len(data), extents=[Extent(offset=0, chunk=ref)])

    def path(self, ref: ChunkRef) -> Path:
        return self.files.path_of(ref.blob)

    def fresh(self) -> None:
        """Forget every cached plaintext and the counters (a cold read follows)."""
        self.reads.drop_cache()
        self.whole_reads.clear()
        self.pread_bytes = 0


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    return Env(tmp_path / "blobs", monkeypatch)


def data_of(seed: int, n: int = LENGTH) -> bytes:
    return random.Random(seed).randbytes(n)


def eio(env: Env, content: Content, offset: int, size: int) -> bool:
    try:
        env.reads.read(content, offset, size)
    except FsError as e:
        assert e.errno == errno.EIO
        return True
    return False


def test_a_cold_4k_read_preads_only_the_header_and_one_segment(env: Env) -> None:
    data = data_of(1)
    ref, content = env.add(data)
    env.fresh()
    assert env.reads.read(content, 5 * SEG + 100, 4096) == data[5 * SEG + 100 :][:4096]
    assert env.pread_bytes == blob.HEADER_LEN + SEALED  # not the ~1 MiB blob
    assert not env.whole_reads  # the whole-blob (hashing) path was not taken
    # across a segment boundary: two segments
    env.fresh()
    assert env.reads.read(content, 3 * SEG - 2048, 4096) == data[3 * SEG - 2048 :][:4096]
    assert env.pread_bytes == blob.HEADER_LEN + 2 * SEALED
    # the chunk's last, shorter segment
    env.fresh()
    assert env.reads.read(content, LENGTH - 10, 4096) == data[-10:]
    assert env.pread_bytes == blob.HEADER_LEN + blob.segments_span(ref, 15, 16)[1]


def test_a_sequential_reader_reads_each_blob_byte_at_most_once_and_gets_the_data(env: Env) -> None:
    data = data_of(2, 3 * LENGTH // 2)
    ref, content = env.add(data)
    env.fresh()
    got = b"".join(env.reads.read(content, at, 128 * 1024) for at in range(0, len(data), 128 * 1024))
    assert got == data
    assert env.pread_bytes <= env.path(ref).stat().st_size + blob.HEADER_LEN
    assert not env.whole_reads


def test_a_flipped_byte_fails_only_the_reads_of_its_segment(env: Env) -> None:
    data = data_of(3)
    ref, content = env.add(data)
    raw = bytearray(env.path(ref).read_bytes())
    raw[blob.HEADER_LEN + 7 * SEALED + 1234] ^= 0x01
    env.path(ref).write_bytes(bytes(raw))
    env.fresh()
    assert eio(env, content, 7 * SEG + 10, 4096)
    assert eio(env, content, 6 * SEG + SEG - 100, 200)  # crosses into segment 7
    for segment in (0, 6, 8, 15):
        at = segment * SEG
        assert env.reads.read(content, at, 4096) == data[at : at + 4096]
    assert eio(env, content, 7 * SEG, 4096)  # still EIO once the chunk's other segments are cached


def test_a_flipped_tag_byte_fails_its_segment(env: Env) -> None:
    data = data_of(4)
    ref, content = env.add(data)
    raw = bytearray(env.path(ref).read_bytes())
    raw[blob.HEADER_LEN + 3 * SEALED - 1] ^= 0x80  # the last byte of segment 2's tag
    env.path(ref).write_bytes(bytes(raw))
    env.fresh()
    assert eio(env, content, 2 * SEG, 10)
    assert env.reads.read(content, 3 * SEG, 10) == data[3 * SEG : 3 * SEG + 10]


def test_a_segment_from_another_blob_at_the_same_position_is_rejected(env: Env) -> None:
    data, other = data_of(5), data_of(6)
    ref, content = env.add(data)
    other_ref, _ = env.add(other)
    raw = bytearray(env.path(ref).read_bytes())
    foreign = env.path(other_ref).read_bytes()
    at = blob.HEADER_LEN + 4 * SEALED
    raw[at : at + SEALED] = foreign[at : at + SEALED]  # same length, same index, other chunk key
    env.path(ref).write_bytes(bytes(raw))
    env.fresh()
    assert eio(env, content, 4 * SEG, 4096)
    assert env.reads.read(content, 5 * SEG, 4096) == data[5 * SEG : 5 * SEG + 4096]


def test_segments_swapped_inside_the_blob_are_rejected(env: Env) -> None:
    data = data_of(7)
    ref, content = env.add(data)
    raw = bytearray(env.path(ref).read_bytes())
    a, b = blob.HEADER_LEN + 2 * SEALED, blob.HEADER_LEN + 9 * SEALED
    raw[a : a + SEALED], raw[b : b + SEALED] = raw[b : b + SEALED], raw[a : a + SEALED]
    env.path(ref).write_bytes(bytes(raw))
    env.fresh()
    assert eio(env, content, 2 * SEG, 4096)
    assert eio(env, content, 9 * SEG, 4096)
    assert env.reads.read(content, 3 * SEG, 4096) == data[3 * SEG : 3 * SEG + 4096]


def test_a_blob_of_the_same_length_swapped_in_whole_is_rejected(env: Env) -> None:
    """The file of another chunk of the same length (same header) under this blob's name: every segment fails."""
    data, other = data_of(8), data_of(9)
    ref, content = env.add(data)
    other_ref, _ = env.add(other)
    env.path(ref).write_bytes(env.path(other_ref).read_bytes())
    env.fresh()
    for segment in range(16):
        assert eio(env, content, segment * SEG, 4096)


@pytest.mark.parametrize("cut", [1, blob.TAG_LEN, SEALED, SEALED + 1, 10 * SEALED])
def test_a_truncated_blob_file_gives_eio_everywhere(env: Env, cut: int) -> None:
    """Cut anywhere (even in segments a read does not touch): the file's length no longer matches the header."""
    data = data_of(10)
    ref, content = env.add(data)
    raw = env.path(ref).read_bytes()
    env.path(ref).write_bytes(raw[: len(raw) - cut])
    env.fresh()
    assert eio(env, content, 0, 4096)
    assert eio(env, content, LENGTH - 4096, 4096)


def test_a_last_segment_cut_off_with_its_header_rewritten_is_rejected(env: Env) -> None:
    """A shorter chunk's header on the blob cut to that chunk's length (so the file's length matches the header):
    the header of an uncompressed chunk is fixed by the reference's length and checked against it; below that
    check the header is every segment's associated data (next test) and the segment now last was not sealed as
    the last one."""
    data = data_of(11)
    ref, content = env.add(data)
    short_ref, _ = env.add(data[: 8 * SEG - 1])  # its padded length ends within 8 segments
    raw = env.path(ref).read_bytes()
    short_len = env.path(short_ref).stat().st_size
    forged = env.path(short_ref).read_bytes()[: blob.HEADER_LEN] + raw[blob.HEADER_LEN : short_len]
    env.path(ref).write_bytes(forged)
    env.fresh()
    for segment in (0, 7, 15):
        assert eio(env, content, segment * SEG, 4096)


@pytest.mark.parametrize("position", range(blob.HEADER_LEN))
def test_any_changed_header_byte_fails_every_read(env: Env, position: int) -> None:
    data = data_of(12)
    ref, content = env.add(data)
    raw = bytearray(env.path(ref).read_bytes())
    raw[position] ^= 0x01
    env.path(ref).write_bytes(bytes(raw))
    env.fresh()
    assert eio(env, content, 0, 4096)
    assert eio(env, content, 9 * SEG, 4096)


def test_the_header_is_bound_as_associated_data() -> None:
    """Below the envelope checks: a segment opened against any other header fails its tag (so a header accepted
    by mistake could still not make a segment decrypt)."""
    data = data_of(13)
    ref, sealed = blob.seal_chunk(data, KEY_BASE, compress=False)
    at, size = blob.segments_span(ref, 3, 4)
    header = sealed[: blob.HEADER_LEN]
    assert blob.open_sealed_segments(header, len(sealed), sealed[at : at + size], ref, 3, 4) == [data[3 * SEG :][:SEG]]
    _, padded_length, salt = blob.check_header(header, len(sealed), ref)
    other_header = header[:-1] + b"\x01"  # a salt byte: refused by check_header, so go below it
    with pytest.raises(AuthenticationFailed):
        blob._decrypt_run(other_header, sealed[at : at + size], ref, padded_length, salt, 3, 4)


def test_compressed_chunks_are_read_whole_and_verified(env: Env) -> None:
    line = b"all work and no play makes jack a dull boy\n"
    data = (line * (LENGTH // len(line) + 1))[:LENGTH]
    ref, content = env.add(data, compress=True)
    assert blob.is_compressed(env.path(ref).read_bytes(), ref)
    env.fresh()
    assert env.reads.read(content, 300_000, 4096) == data[300_000:304_096]
    assert env.whole_reads[ref.blob] == 1  # through the hashing path
    raw = bytearray(env.path(ref).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    env.path(ref).write_bytes(bytes(raw))
    env.fresh()
    assert eio(env, content, 0, 10)


def test_a_blob_not_in_a_file_is_read_whole() -> None:
    """``read_ranges`` answering None (the open batch's own blob, in memory) sends the read through get_blob."""
    data = data_of(14)
    ref, sealed = blob.seal_chunk(data, KEY_BASE, compress=False)
    calls: list[bytes] = []

    def get_blob(blob_id: bytes) -> bytes:
        calls.append(blob_id)
        return sealed

    reads = ContentReads(get_blob, read_ranges=lambda blob_id, ranges: None)
    content = Content(size=len(data), extents=[Extent(offset=0, chunk=ref)])
    assert reads.read(content, 70_000, 4096) == data[70_000:74_096]
    assert calls == [ref.blob]


def test_random_reads_read_no_segment_they_do_not_touch(env: Env) -> None:
    """A second, distant read of a chunk reads only its own segment (no whole-chunk decryption on a second touch)."""
    data = data_of(15)
    _, content = env.add(data)
    env.fresh()
    assert env.reads.read(content, 5 * SEG, 4096) == data[5 * SEG : 5 * SEG + 4096]
    env.pread_bytes = 0
    assert env.reads.read(content, 11 * SEG + 7, 4096) == data[11 * SEG + 7 :][:4096]
    assert env.pread_bytes == SEALED  # the header is kept from the first read


def test_a_sequential_reader_gets_a_bounded_read_ahead(env: Env) -> None:
    """A read right after the segments already read also decrypts the next READ_AHEAD_SEGMENTS, in one pread; the
    reads they cover then touch no file at all."""
    data = data_of(16)
    _, content = env.add(data)
    env.fresh()
    env.reads.read(content, 0, 2 * SEG)
    env.pread_bytes = 0
    assert env.reads.read(content, 2 * SEG, 2 * SEG) == data[2 * SEG : 4 * SEG]
    assert env.pread_bytes == (2 + READ_AHEAD_SEGMENTS) * SEALED
    env.pread_bytes = 0
    covered = (4 + READ_AHEAD_SEGMENTS - 2) * SEG
    assert env.reads.read(content, 4 * SEG, covered - 4 * SEG) == data[4 * SEG : covered]
    assert env.pread_bytes == 0


def test_a_random_read_next_to_a_decrypted_segment_gets_no_read_ahead(env: Env) -> None:
    """Read-ahead is for readers that go on where they stopped: a read that merely lands right after a decrypted
    segment (as random reads do more and more often once the cache fills) reads its own segment only."""
    data = data_of(18)
    _, content = env.add(data)
    env.fresh()
    assert env.reads.read(content, 9 * SEG, 4096) == data[9 * SEG :][:4096]
    assert env.reads.read(content, 2 * SEG, 4096) == data[2 * SEG :][:4096]  # elsewhere: not sequential
    env.pread_bytes = 0
    assert env.reads.read(content, 3 * SEG + 512, 4096) == data[3 * SEG + 512 :][:4096]
    assert env.pread_bytes == SEALED


def test_a_sequential_reader_near_a_chunk_end_prefetches_the_next_blob_once(tmp_path: Path) -> None:
    """A reader that goes on where it stopped, within 512 KiB of its chunk's end, has the next chunk's blob
    prefetched (once); a random reader never does."""
    files = BlobFiles(tmp_path / "blobs")
    prefetched: list[bytes] = []
    reads = ContentReads(files.get, read_ranges=files.read_ranges, prefetch=prefetched.append)
    first, second = data_of(19), data_of(20)
    ref1, sealed1 = blob.seal_chunk(first, KEY_BASE, compress=False)
    ref2, sealed2 = blob.seal_chunk(second, KEY_BASE, compress=False)
    files.put(ref1.blob, sealed1)
    files.put(ref2.blob, sealed2)
    content = Content(size=2 * LENGTH, extents=[Extent(offset=0, chunk=ref1), Extent(offset=LENGTH, chunk=ref2)])
    assert reads.read(content, LENGTH - SEG, 4096) == first[-SEG:][:4096]  # first read: not sequential
    assert reads.read(content, 3 * SEG, 4096) == first[3 * SEG :][:4096]  # a jump: not sequential
    assert prefetched == []
    at = LENGTH - 4 * SEG
    assert reads.read(content, at, SEG) == first[at : at + SEG]  # another jump
    for _ in range(3):  # then on where it stopped
        assert reads.read(content, at + SEG, SEG) == first[at + SEG : at + 2 * SEG]
        at += SEG
    assert prefetched == [ref2.blob]
    assert reads.read(content, LENGTH, 4096) == second[:4096]


def test_a_reference_longer_than_any_chunk_reads_nothing(env: Env) -> None:
    """A ChunkRef claiming more than 16 MiB (a bad or hostile op) gives EIO before any byte of the file is read."""
    data = data_of(17)
    ref, _ = env.add(data)
    huge = ChunkRef(blob=ref.blob, key=ref.key, length=blob.MAX_CHUNK_LENGTH + 1)
    content = Content(size=huge.length, extents=[Extent(offset=0, chunk=huge)])
    env.fresh()
    assert eio(env, content, blob.MAX_CHUNK_LENGTH - 10, 4096)
    assert env.pread_bytes == 0
