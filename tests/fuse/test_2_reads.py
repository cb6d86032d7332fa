"""Level 2: reads of local blobs through a real mount, with the blob file descriptors the mount keeps open between
reads (store/blobfiles.py ``_OpenBlobs``) and the read-ahead and prefetch of sequential readers (fs/reading.py).

Each read here is an O_DIRECT pread of one 4 KiB block, so it reaches the mount (the kernel's page cache and its
read-ahead are bypassed), and each test reads a 64 KiB segment of the blob for the first time after changing the
blob file, so the mount's cache of decrypted segments cannot answer it either: the bytes come from the file.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import shutil
from pathlib import Path

import pytest

from .conftest import Mount

SEGMENT = 64 << 10  # blob.SEGMENT_SIZE
HEADER_LEN = 23  # blob.HEADER_LEN
TAG_LEN = 16
FILE_SIZE = 4 * SEGMENT  # below the chunker's minimum (256 KiB): one chunk, so one blob file


def blob_files(m: Mount) -> dict[str, Path]:
    return {p.name: p for p in (m.home / "blobs").rglob("*") if p.is_file() and len(p.name) == 62}


def write_one_chunk_file(m: Mount, name: str) -> tuple[bytes, Path]:
    """A file of one uncompressible chunk, fsync'd; its content and its blob file."""
    before = blob_files(m)
    data = os.urandom(FILE_SIZE)
    with open(m.path(name), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    new = [p for n, p in blob_files(m).items() if n not in before and p.stat().st_size > FILE_SIZE]
    assert len(new) == 1, new
    return data, new[0]


def read_direct(path: Path, offset: int, size: int = 4096) -> bytes:
    """One O_DIRECT pread (an aligned buffer), answered by the mount itself."""
    buf = mmap.mmap(-1, size)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        n = os.preadv(fd, [buf], offset)
        return bytes(buf[:n])
    finally:
        os.close(fd)
        buf.close()


def errno_of_read(path: Path, offset: int) -> int:
    with pytest.raises(OSError) as e:
        read_direct(path, offset)
    return e.value.errno


def segment_byte(segment: int) -> int:
    """File offset of a byte inside the ciphertext of ``segment``."""
    return HEADER_LEN + segment * (SEGMENT + TAG_LEN) + 100


def test_blob_file_replaced_after_a_read_is_read_anew(mounted: Mount) -> None:
    """The mount keeps the blob file open after a read. A damaged copy renamed over it (as another process would)
    is what the next read sees: EIO, not the old file's bytes; an intact copy renamed over it reads right again."""
    mounted.expect_log(r"integrity failure|\(EIO\)")
    data, blob = write_one_chunk_file(mounted, "f")
    path = mounted.path("f")
    assert read_direct(path, 0) == data[:4096]  # opens (and keeps) the blob file
    intact = blob.read_bytes()
    damaged = bytearray(intact)
    damaged[segment_byte(2)] ^= 0x01
    spare = blob.with_name(".replacement")
    spare.write_bytes(bytes(damaged))
    os.replace(spare, blob)
    assert errno_of_read(path, 2 * SEGMENT) == errno.EIO
    assert read_direct(path, 3 * SEGMENT) == data[3 * SEGMENT :][:4096]  # its other segments still verify
    spare.write_bytes(intact)
    os.replace(spare, blob)
    assert read_direct(path, 2 * SEGMENT + 4096) == data[2 * SEGMENT + 4096 :][:4096]


def test_blob_file_deleted_after_a_read_is_not_read_from_the_kept_descriptor(mounted: Mount) -> None:
    """A blob file deleted while the mount holds it open gives EIO (no sync here to fetch it), not bytes from the
    unlinked file; put back, it reads again."""
    mounted.expect_log(r"not on this device|\(EIO\)")
    data, blob = write_one_chunk_file(mounted, "f")
    path = mounted.path("f")
    assert read_direct(path, 0) == data[:4096]
    saved = blob.with_name(".saved")
    shutil.copyfile(blob, saved)
    blob.unlink()
    assert errno_of_read(path, SEGMENT) == errno.EIO
    os.replace(saved, blob)
    assert read_direct(path, SEGMENT) == data[SEGMENT:][:4096]


def test_blob_file_damaged_in_place_gives_eio_for_that_segment_only(mounted: Mount) -> None:
    """A byte flipped in the kept-open file itself: the damaged segment gives EIO on every read, the others read."""
    mounted.expect_log(r"integrity failure|\(EIO\)")
    data, blob = write_one_chunk_file(mounted, "f")
    path = mounted.path("f")
    assert read_direct(path, 0) == data[:4096]
    with open(blob, "r+b") as f:
        f.seek(segment_byte(1))
        byte = f.read(1)
        f.seek(segment_byte(1))
        f.write(bytes([byte[0] ^ 0x80]))
    assert errno_of_read(path, SEGMENT) == errno.EIO
    assert errno_of_read(path, SEGMENT + 8192) == errno.EIO  # a failed segment is never cached
    assert read_direct(path, 2 * SEGMENT) == data[2 * SEGMENT :][:4096]


def test_random_and_sequential_reads_over_more_blobs_than_kept_open(mounted: Mount) -> None:
    """More files than the 64 descriptors kept open, read at random offsets in random order (descriptors closed
    and opened again as they fall out), then each read sequentially in 4 KiB steps (read-ahead and prefetch):
    every byte is right."""
    files = {}
    for i in range(72):
        data = os.urandom(FILE_SIZE)
        mounted.path(f"f{i}").write_bytes(data)
        files[f"f{i}"] = data
    fd = os.open(mounted.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # commits them all: their blobs become files
    finally:
        os.close(fd)
    rng = random.Random(7)
    names = list(files) * 3
    rng.shuffle(names)
    for name in names:
        offset = rng.randrange(FILE_SIZE // 4096) * 4096
        assert read_direct(mounted.path(name), offset) == files[name][offset : offset + 4096], (name, offset)
    for name, data in list(files.items())[:8]:
        buf = mmap.mmap(-1, 4096)
        fd = os.open(mounted.path(name), os.O_RDONLY | os.O_DIRECT)
        try:
            got = bytearray()
            while True:
                n = os.preadv(fd, [buf], len(got))
                if n == 0:
                    break
                got += buf[:n]
        finally:
            os.close(fd)
            buf.close()
        assert bytes(got) == data, name
