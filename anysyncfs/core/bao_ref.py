"""Pure Python reference of the BLAKE3 tree primitives (the specification, written out; slow).

Same functions, same results as the C extension ``anysyncfs._bao_native`` (``anysyncfs/native/bao_tree.c``);
``tests/unit/test_bao.py`` checks the two against each other and both against the official vectors. Production
code uses the C version through :mod:`anysyncfs.core.bao`; this one exists so that the C can be checked against
something short enough to read.
"""

from __future__ import annotations

import struct

CHUNK_LEN = 1024
BLOCK_LEN = 64
CHUNK_START, CHUNK_END, PARENT, ROOT = 1, 2, 4, 8
IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_M32 = 0xFFFFFFFF


def _g(s: list[int], a: int, b: int, c: int, d: int, mx: int, my: int) -> None:
    s[a] = (s[a] + s[b] + mx) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x >> 16) | (x << 16)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x >> 12) | (x << 20)) & _M32
    s[a] = (s[a] + s[b] + my) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x >> 8) | (x << 24)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x >> 7) | (x << 25)) & _M32


def compress(cv: tuple[int, ...], block: bytes, counter: int, block_len: int, flags: int) -> tuple[int, ...]:
    """The BLAKE3 compression function, truncated to the 8-word chaining value."""
    m = list(struct.unpack("<16I", block))
    s = [*cv, *IV[:4], counter & _M32, (counter >> 32) & _M32, block_len, flags]
    for r in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if r < 6:
            m = [m[i] for i in PERMUTATION]
    return tuple(s[i] ^ s[i + 8] for i in range(8))


def chunk_cv(data: bytes, chunk_counter: int, is_root: bool) -> bytes:
    """Chaining value of one chunk (≤ 1024 bytes; the empty chunk only for the empty input)."""
    assert len(data) <= CHUNK_LEN
    cv = IV
    blocks = max(1, -(-len(data) // BLOCK_LEN))
    for b in range(blocks):
        piece = data[b * BLOCK_LEN : (b + 1) * BLOCK_LEN]
        flags = (CHUNK_START if b == 0 else 0) | (CHUNK_END | (ROOT if is_root else 0) if b == blocks - 1 else 0)
        cv = compress(cv, piece.ljust(BLOCK_LEN, b"\0"), chunk_counter, len(piece), flags)
    return struct.pack("<8I", *cv)


def parent_cv(left: bytes, right: bytes, is_root: bool) -> bytes:
    """Chaining value of a parent node (the root hash when ``is_root``)."""
    return struct.pack("<8I", *compress(IV, left + right, 0, BLOCK_LEN, PARENT | (ROOT if is_root else 0)))


def left_len(length: int) -> int:
    """Bytes in the left subtree of a subtree of ``length`` > 1024 bytes: the largest power of two of chunks
    strictly below its chunk count (the BLAKE3 tree shape)."""
    chunks = -(-length // CHUNK_LEN)
    return 1 << ((chunks - 1).bit_length() - 1) << 10


def subtree_cv(data: bytes, chunk_counter: int, is_root: bool) -> bytes:
    """Chaining value of the subtree holding ``data``, whose first chunk has index ``chunk_counter``."""
    if len(data) <= CHUNK_LEN:
        return chunk_cv(bytes(data), chunk_counter, is_root)
    split = left_len(len(data))
    left = subtree_cv(data[:split], chunk_counter, False)
    right = subtree_cv(data[split:], chunk_counter + split // CHUNK_LEN, False)
    return parent_cv(left, right, is_root)


def outboard_parents(length: int, group_len: int) -> int:
    """How many parent nodes lie above the groups of a blob of ``length`` bytes."""
    return max(1, -(-length // group_len)) - 1


def outboard(data: bytes, group_len: int) -> tuple[bytes, bytes]:
    """(root hash, the parent nodes above the groups in pre-order, 64 bytes each)."""
    out: list[bytes] = []

    def walk(start: int, end: int, is_root: bool) -> bytes:
        if end - start <= group_len:
            return subtree_cv(data[start:end], start // CHUNK_LEN, is_root)
        slot = len(out)
        out.append(b"")
        mid = start + left_len(end - start)
        left = walk(start, mid, False)
        right = walk(mid, end, False)
        out[slot] = left + right
        return parent_cv(left, right, is_root)

    root = walk(0, len(data), True)
    return root, b"".join(out)
