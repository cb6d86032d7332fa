"""Sequential writers sealed as they write (anysyncfs/fs/stream.py): the bytes never reach the staging files,
the chunks are those of cutting the whole file at once, and every other kind of write settles the stream into
the ordinary staged overlay without losing a byte."""

from __future__ import annotations

import os
import random
from pathlib import Path

from anysyncfs.core import content as content_mod
from anysyncfs.fs.vfs import ROOT_INODE, SetAttrRequest
from tests.unit.test_vfs_support import ROOT, Env, read_all, small_env  # noqa: F401 - fixture

PIECE = 64 << 10  # above STREAM_MIN_WRITE


def _canonical(env: Env, data: bytes) -> list[tuple[int, bytes]]:
    """(offset, blob ID) of every chunk of cutting ``data`` at once with the space's keyed chunker."""
    built = content_mod.build_content(data, env.replica.chunk_key_base(), lambda _i, _b: None,
                                      env.replica.chunk_params)  # fmt: skip
    return [(e.offset, e.chunk.blob) for e in content_mod.load_extents(built, env.vfs.reads._get_blob)]


def _committed(env: Env, inode: int) -> list[tuple[int, bytes]]:
    node_id = env.vfs.target(inode)[1]
    content = env.replica.tree.nodes[node_id].content
    return [(e.offset, e.chunk.blob) for e in env.vfs.reads.extents(content)]


def _staging_bytes(env: Env) -> int:
    return sum(p.stat().st_size for p in Path(env.staging).glob("*.stage"))


def test_sequential_write_is_sealed_without_staging_and_cut_as_a_whole(small_env: Env) -> None:
    env = small_env
    vfs = env.vfs
    data = os.urandom(6 << 20)
    fh, attr = vfs.create(ROOT_INODE, b"big", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    for at in range(0, len(data), PIECE):
        assert vfs.write(fh, at, data[at : at + PIECE]) == PIECE
    staged = vfs._staged[vfs.target(attr.inode)[1]]
    assert staged.stream is not None and len(staged.stream.sealed) > 100  # sealed on the way
    assert _staging_bytes(env) == 0  # nothing went through the staging files
    rfh = vfs.open(attr.inode, os.O_RDONLY, ROOT)  # reads while writing see every byte
    assert vfs.read(rfh, 0, len(data)) == data
    assert vfs.read(rfh, len(data) - 5000, 10_000) == data[-5000:]
    vfs.release(rfh)
    vfs.release(fh)
    assert _committed(env, attr.inode) == _canonical(env, data)
    assert read_all(vfs, attr.inode) == data
    env.reopen()
    assert read_all(env.vfs, attr.inode) == data


def test_append_after_a_commit_continues_the_canonical_cut(small_env: Env) -> None:
    env = small_env
    vfs = env.vfs
    data = os.urandom(3 << 20)
    fh, attr = vfs.create(ROOT_INODE, b"log", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    half = (len(data) // 2) // PIECE * PIECE
    for at in range(0, half, PIECE):
        vfs.write(fh, at, data[at : at + PIECE])
    vfs.fsync(fh, False)  # committed: the next append starts a stream at the last chunk
    for at in range(half, len(data), PIECE):
        vfs.write(fh, at, data[at : at + PIECE])
    assert vfs._staged[vfs.target(attr.inode)[1]].stream is not None
    vfs.release(fh)
    assert _committed(env, attr.inode) == _canonical(env, data)
    assert read_all(vfs, attr.inode) == data


def test_other_writes_and_truncation_settle_the_stream(small_env: Env) -> None:
    env = small_env
    vfs = env.vfs
    rng = random.Random(7)
    expect = bytearray(os.urandom(2 << 20))
    fh, attr = vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR | os.O_CREAT, ROOT)
    for at in range(0, len(expect), PIECE):
        vfs.write(fh, at, bytes(expect[at : at + PIECE]))
    staged = vfs._staged[vfs.target(attr.inode)[1]]
    assert staged.stream is not None
    vfs.write(fh, 100, b"header")  # a writer going back: the stream settles, the bytes stay
    expect[100:106] = b"header"
    assert staged.stream is None and vfs.read(fh, 0, len(expect)) == bytes(expect)
    for _ in range(20):  # scattered writes over the settled base
        at = rng.randrange(len(expect))
        piece = os.urandom(rng.randrange(1, 70_000))
        vfs.write(fh, at, piece)
        expect[at : at + len(piece)] = piece
    vfs.release(fh)
    assert read_all(vfs, attr.inode) == bytes(expect)

    fh = vfs.open(attr.inode, os.O_WRONLY | os.O_TRUNC, ROOT)  # rewritten from nothing: a stream again
    new = os.urandom(1 << 20)
    for at in range(0, len(new), PIECE):
        vfs.write(fh, at, new[at : at + PIECE])
    assert vfs._staged[vfs.target(attr.inode)[1]].stream is not None
    vfs.setattr(attr.inode, SetAttrRequest(size=700_001), fh, ROOT)  # cut inside the sealed part
    vfs.write(fh, 700_001, b"end")
    vfs.release(fh)
    assert read_all(vfs, attr.inode) == new[:700_001] + b"end"
    env.reopen()
    assert read_all(env.vfs, attr.inode) == new[:700_001] + b"end"


def test_small_writes_still_stage(small_env: Env) -> None:
    vfs = small_env.vfs
    fh, attr = vfs.create(ROOT_INODE, b"s", 0o644, os.O_WRONLY | os.O_CREAT, ROOT)
    vfs.write(fh, 0, b"x" * 10_240)  # tar's records: the small-file path is unchanged
    assert vfs._staged[vfs.target(attr.inode)[1]].stream is None
    vfs.release(fh)
    assert read_all(vfs, attr.inode) == b"x" * 10_240
