"""Issue 11 (untar): a small file's staged bytes stay in memory, and move to the sealed staging files once the file
(or all files together) pass the memory bounds, without losing or changing a byte."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from anysyncfs.errors import FsError
from anysyncfs.fs import staging
from anysyncfs.fs.staging import BLOCK_SIZE, STAGING_SUFFIX, MemoryBudget, MemoryBlocks, SegmentFiles
from anysyncfs.fs.vfs import ROOT_INODE
from tests.unit.test_vfs_support import ROOT, Env, env  # noqa: F401  (env is a fixture)


def staging_files(env: Env) -> list[Path]:
    return [p for p in env.staging.rglob(f"*{STAGING_SUFFIX}") if p.is_file()]


def test_a_small_file_is_staged_without_a_staging_file(env: Env) -> None:
    vfs = env.vfs
    data = os.urandom(3 * BLOCK_SIZE + 123)
    fh = vfs.create(ROOT_INODE, b"small", 0o644, os.O_RDWR, ROOT)[0]
    vfs.write(fh, 0, data[:1000])
    vfs.write(fh, 1000, data[1000:])
    assert staging_files(env) == []
    assert vfs.read(fh, 0, len(data) + 10) == data  # read-your-writes from memory
    vfs.release(fh)
    env.reopen()
    attr = vfs_lookup(env, b"small")
    fh = env.vfs.open(attr, os.O_RDONLY, ROOT)
    assert env.vfs.read(fh, 0, len(data) + 10) == data
    env.vfs.release(fh)


def vfs_lookup(env: Env, name: bytes) -> int:
    return env.vfs.lookup(ROOT_INODE, name, ROOT).inode


def test_a_file_growing_past_the_bound_moves_to_the_sealed_files(env: Env) -> None:
    vfs = env.vfs
    rng = random.Random(7)
    model = bytearray()
    fh = vfs.create(ROOT_INODE, b"grows", 0o644, os.O_RDWR, ROOT)[0]
    while len(model) < (staging.MEMORY_BLOCKS_PER_NODE + 3) * BLOCK_SIZE:
        piece = rng.randbytes(rng.randint(1, 10_000))
        vfs.write(fh, len(model), piece)
        model += piece
        # an overwrite inside what is there (a block in memory, later one in the files)
        at = rng.randrange(len(model))
        patch = rng.randbytes(min(50, len(model) - at))
        vfs.write(fh, at, patch)
        model[at : at + len(patch)] = patch
        assert vfs.read(fh, 0, len(model)) == bytes(model)
    files = staging_files(env)
    assert len(files) == 1  # moved: the bytes on disk are sealed, not plaintext
    assert bytes(model[:64]) not in files[0].read_bytes()
    vfs.release(fh)
    assert staging_files(env) == []
    env.reopen()
    fh = env.vfs.open(vfs_lookup(env, b"grows"), os.O_RDONLY, ROOT)
    assert env.vfs.read(fh, 0, len(model) + 1) == bytes(model)
    env.vfs.release(fh)


def test_the_process_wide_budget_sends_further_files_to_disk(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "MEMORY_BUDGET_BLOCKS", MemoryBudget.used + 4)
    vfs = env.vfs
    first = vfs.create(ROOT_INODE, b"a", 0o644, os.O_RDWR, ROOT)[0]
    second = vfs.create(ROOT_INODE, b"b", 0o644, os.O_RDWR, ROOT)[0]
    a, b = os.urandom(3 * BLOCK_SIZE), os.urandom(3 * BLOCK_SIZE)
    vfs.write(first, 0, a)  # 3 of the 4 blocks left
    vfs.write(second, 0, b)  # needs 3: over the budget, so to its staging file
    assert len(staging_files(env)) == 1
    assert vfs.read(first, 0, len(a)) == a and vfs.read(second, 0, len(b)) == b
    vfs.release(first)
    vfs.release(second)
    assert staging_files(env) == []


def test_memory_blocks_give_their_budget_back() -> None:
    before = MemoryBudget.used
    blocks = MemoryBlocks()
    assert blocks.write(10, b"x" * (2 * BLOCK_SIZE))  # touches blocks 0, 1 and 2
    assert MemoryBudget.used == before + 3
    blocks.truncate(BLOCK_SIZE + 1)  # block 2 goes; block 1 holds the new end
    assert MemoryBudget.used == before + 2
    out = bytearray(BLOCK_SIZE + 1)
    blocks.read_into(memoryview(out), 0)
    assert out == bytes(10) + b"x" * (BLOCK_SIZE - 9)
    blocks.close()
    assert MemoryBudget.used == before


def test_a_failed_move_keeps_the_bytes_in_memory(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vfs = env.vfs
    fh = vfs.create(ROOT_INODE, b"full", 0o644, os.O_RDWR, ROOT)[0]
    data = os.urandom(2 * BLOCK_SIZE)
    vfs.write(fh, 0, data)

    def no_space(self: SegmentFiles, offset: int, data: bytes) -> None:
        raise staging._os_error(OSError(errno.ENOSPC, "No space left on device"), "write")

    monkeypatch.setattr(SegmentFiles, "write", no_space)
    with pytest.raises(FsError) as failed:
        vfs.write(fh, 0, os.urandom((staging.MEMORY_BLOCKS_PER_NODE + 1) * BLOCK_SIZE))
    monkeypatch.undo()
    assert failed.value.errno == errno.ENOSPC
    assert staging_files(env) == []  # the half-made staging file was removed again
    assert vfs.read(fh, 0, len(data) + 5) == data  # the failed write changed nothing
    vfs.release(fh)
