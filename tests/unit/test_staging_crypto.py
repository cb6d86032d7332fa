"""Issue 10 item 6: staging files are sealed block by block with a fresh nonce on every write of a block.

Before, staging used AES-CTR with the counter fixed by the file offset: rewriting a region reused its keystream,
so two snapshots of the disk XOR to the XOR of the two plaintexts (and knowing one plaintext gives the other).
These tests drive the Vfs in process and look at the staging files on disk, as a backup or a file-system
snapshot would; tests/fuse/test_1_mount.py repeats the keystream attack through a real mount.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from anysyncfs.core import crypto
from anysyncfs.errors import FsError
from anysyncfs.fs import staging
from anysyncfs.fs.staging import BLOCK_SIZE, SLOT_SIZE, STAGING_SUFFIX, SegmentFiles
from anysyncfs.fs.vfs import ROOT_INODE
from tests.unit.test_vfs_support import ROOT, Env, env  # noqa: F401  (env is a fixture)

REGION = 3 * BLOCK_SIZE + 100  # not block-aligned: partial blocks at both ends


@pytest.fixture(autouse=True)
def on_disk_staging(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the sealed staging FILES: a file this small would otherwise stay in memory
    (tests/unit/test_staging_memory.py covers that path and its move to the files)."""
    monkeypatch.setattr(staging, "MEMORY_BLOCKS_PER_NODE", 0)


def staging_file(env: Env) -> Path:
    files = [p for p in env.staging.rglob(f"*{STAGING_SUFFIX}") if p.is_file()]
    assert len(files) == 1, files
    return files[0]


def slots(raw: bytes) -> list[bytes]:
    return [raw[i : i + SLOT_SIZE] for i in range(0, len(raw), SLOT_SIZE)]


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def test_rewriting_a_region_never_reuses_keystream(env: Env) -> None:
    vfs = env.vfs
    fh, attr = vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR, ROOT)[:2]
    offset = BLOCK_SIZE + 10
    first, second = os.urandom(REGION), os.urandom(REGION)
    vfs.write(fh, offset, first)
    snap1 = staging_file(env).read_bytes()
    vfs.write(fh, offset, second)
    snap2 = staging_file(env).read_bytes()
    assert vfs.read(fh, offset, REGION) == second

    # The old attack: ciphertext XOR equals plaintext XOR wherever keystream repeats. Compare every window.
    want = xor(first, second)[:64]
    both = xor(snap1, snap2)
    assert want not in both
    for shift in range(0, 64):  # whatever alignment of plaintext to ciphertext an attacker guesses
        assert xor(snap1[shift:], snap2[shift:]).find(want[:32]) == -1
    # No nonce repeats, within or across the snapshots (slots that hold a block start with their nonce).
    nonces = [s[: crypto.NONCE_LEN] for snap in (snap1, snap2) for s in slots(snap) if any(s)]
    blocks = (offset + REGION - 1) // BLOCK_SIZE - offset // BLOCK_SIZE + 1
    assert len(nonces) == len(set(nonces)) == 2 * blocks  # each block written twice, never with the same nonce
    vfs.release(fh)


def test_tampered_staging_reads_as_eio_never_as_wrong_data(env: Env) -> None:
    vfs = env.vfs
    fh = vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR, ROOT)[0]
    vfs.write(fh, 0, b"A" * REGION)
    path = staging_file(env)
    old_block1 = slots(path.read_bytes())[1]
    vfs.write(fh, BLOCK_SIZE, b"B" * BLOCK_SIZE)  # block 1 sealed again

    def read_errno() -> int | None:
        try:
            data = vfs.read(fh, 0, REGION)
        except FsError as e:
            return e.errno
        raise AssertionError(f"read returned {len(data)} bytes of tampered staging data")

    with open(path, "r+b") as f:  # 1. a flipped ciphertext bit
        f.seek(2 * SLOT_SIZE + 40)
        byte = f.read(1)
        f.seek(2 * SLOT_SIZE + 40)
        f.write(bytes([byte[0] ^ 1]))
    assert read_errno() == errno.EIO
    vfs.write(fh, 2 * BLOCK_SIZE, b"A" * BLOCK_SIZE)  # heal block 2 by rewriting it whole
    assert vfs.read(fh, 0, REGION) == b"A" * BLOCK_SIZE + b"B" * BLOCK_SIZE + b"A" * (REGION - 2 * BLOCK_SIZE)

    with open(path, "r+b") as f:  # 2. block 1 rolled back to its older, validly sealed version
        f.seek(SLOT_SIZE)
        f.write(old_block1)
    assert read_errno() == errno.EIO
    vfs.write(fh, BLOCK_SIZE, b"B" * BLOCK_SIZE)

    good = path.read_bytes()
    with open(path, "r+b") as f:  # 3. block 0's slot copied over block 1 (moved blocks)
        f.seek(SLOT_SIZE)
        f.write(good[:SLOT_SIZE])
    assert read_errno() == errno.EIO
    vfs.write(fh, BLOCK_SIZE, b"B" * BLOCK_SIZE)

    os.truncate(path, SLOT_SIZE * 2)  # 4. cut off: the blocks past the cut are missing, not zeros
    assert read_errno() == errno.EIO


def test_blocks_are_bound_to_their_node(tmp_path: Path) -> None:
    """Two nodes' staging under one key would still not accept each other's blocks (the node is in the AAD)."""
    a = SegmentFiles(tmp_path, "a", b"\x01" * 16)
    b = SegmentFiles(tmp_path, "b", b"\x02" * 16)
    b._aead, b._counter = a._aead, a._counter  # the same key and counter: only the associated data differs
    a.write(0, b"x" * BLOCK_SIZE)
    b._sealed[0] = a._sealed[0]
    (tmp_path / "b.0.stage").write_bytes((tmp_path / "a.0.stage").read_bytes())
    b._fds[0] = os.open(tmp_path / "b.0.stage", os.O_RDWR)
    out = memoryview(bytearray(10))
    with pytest.raises(FsError) as e:
        b.read_into(out, 0)
    assert e.value.errno == errno.EIO
    a.read_into(out, 0)
    assert bytes(out) == b"x" * 10
    a.close()
    b.close()


def test_holes_cost_nothing(env: Env) -> None:
    vfs = env.vfs
    fh = vfs.create(ROOT_INODE, b"f", 0o644, os.O_RDWR, ROOT)[0]
    far = 1 << 39
    vfs.write(fh, far, b"end")
    path = staging_file(env)
    assert path.stat().st_blocks * 512 <= 64 << 10  # one sealed block, not half a terabyte
    assert vfs.read(fh, far - 2, 10) == b"\0\0end"
    assert vfs.read(fh, 12345, 4) == b"\0\0\0\0"
    vfs.release(fh)


# ---------------------------------------------------------------------------------------------------- vector
VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "staging.json"
V_KEY = bytes(range(32))
V_NODE = bytes.fromhex("00112233445566778899aabbccddeeff")
V_INDEX = 5
V_COUNTER = 7


def _vector_plain() -> bytes:
    return bytes(i % 251 for i in range(BLOCK_SIZE))


def _compute_vector() -> dict[str, object]:
    from anysyncfs.fs.staging import STAGING_AAD, seal_block

    plain = _vector_plain()
    slot = seal_block(crypto.Aead(V_KEY), V_NODE, V_INDEX, V_COUNTER, plain)
    return {
        "description": "one staging slot (docs/protocol.md 60.4): block 5 of a node, sealed with counter 7; "
                       "plaintext byte i = i mod 251",
        "inputs": {
            "key_hex": V_KEY.hex(),
            "node_hex": V_NODE.hex(),
            "block_index": V_INDEX,
            "counter": V_COUNTER,
            "block_size": BLOCK_SIZE,
        },
        "expected": {
            "aad_hex": (STAGING_AAD + V_NODE + V_INDEX.to_bytes(8, "big")).hex(),
            "slot_offset_in_segment_file": V_INDEX * SLOT_SIZE,
            "nonce_hex": slot[:12].hex(),
            "tag_hex": slot[-16:].hex(),
            "slot_blake3_hex": crypto.blake3(slot).hex(),
            "slot_head_hex": slot[:64].hex(),
        },
    }


def test_staging_vector(tmp_path: Path) -> None:
    computed = _compute_vector()
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTORS.write_text(json.dumps(computed, indent=2) + "\n", encoding="utf-8")
        return
    assert json.loads(VECTORS.read_text(encoding="utf-8")) == computed
    # SegmentFiles lays the slot out exactly so: same key, same counter -> the same bytes at the same offset.
    files = SegmentFiles(tmp_path, "v", V_NODE)
    files._aead, files._counter = crypto.Aead(V_KEY), V_COUNTER - 1
    files.write(V_INDEX * BLOCK_SIZE, _vector_plain())
    raw = (tmp_path / f"v.0{STAGING_SUFFIX}").read_bytes()
    slot = raw[V_INDEX * SLOT_SIZE : (V_INDEX + 1) * SLOT_SIZE]
    assert crypto.blake3(slot).hex() == computed["expected"]["slot_blake3_hex"]  # type: ignore[index]
    assert raw[: V_INDEX * SLOT_SIZE] == bytes(V_INDEX * SLOT_SIZE)  # earlier slots: a hole
    files.close()


def test_a_failed_write_keeps_the_earlier_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails (disk full) leaves the block as it was before, readable, and never as zeros; a small
    write kept in memory (the tail block) that cannot be written out later fails the write that tried, and stays."""
    files = SegmentFiles(tmp_path, "f", b"\x03" * 16)
    files.write(0, b"a" * BLOCK_SIZE)

    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(FsError) as e:
        files.write(10, b"b" * BLOCK_SIZE)  # two blocks: written through
    assert e.value.errno == errno.ENOSPC
    files.write(10, b"c" * 20)  # inside block 0, whose slot exists: kept in memory, no pwrite
    with pytest.raises(FsError) as e:
        files.write(BLOCK_SIZE * 5, b"d" * 4)  # elsewhere: block 0 must go to disk first, and cannot
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    out = memoryview(bytearray(BLOCK_SIZE))
    files.read_into(out, 0)
    assert bytes(out) == b"a" * 10 + b"c" * 20 + b"a" * (BLOCK_SIZE - 30)
    files.close()


def test_small_writes_into_one_block_are_sealed_when_the_writer_moves_on(tmp_path: Path) -> None:
    """The tail block: 4-byte appends inside a block whose slot exists change memory only; the slot on disk gets
    the block (under a new nonce) once a write goes to another block."""
    files = SegmentFiles(tmp_path, "t", b"\x04" * 16)
    files.write(0, b"x" * 8)  # the block's first write: sealed and written
    path = next(tmp_path.glob("t.*"))
    on_disk = path.read_bytes()
    for i in range(2, 100):
        files.write(i * 4, b"abcd")
    assert path.read_bytes() == on_disk  # not written yet
    out = memoryview(bytearray(400))
    files.read_into(out, 0)
    assert bytes(out) == b"x" * 8 + b"abcd" * 98  # reads see it
    files.write(BLOCK_SIZE, b"next")  # another block: block 0 goes to disk first
    assert path.read_bytes()[:SLOT_SIZE] != on_disk[:SLOT_SIZE]
    fresh = SegmentFiles.__new__(SegmentFiles)  # read the slot back through the checked path, without the tail
    fresh.__dict__.update(files.__dict__)
    fresh._tail = None
    out = memoryview(bytearray(400))
    fresh.read_into(out, 0)
    assert bytes(out) == b"x" * 8 + b"abcd" * 98
    files.close()
