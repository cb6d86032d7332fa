"""Keyed chunking (issue 10 item 5): the gear table is a secret of the space.

The cuts must be a pure function of (bytes, sizes, chunker key) — the same on every device, streamed or not — and
must be exactly the documented FastCDC 2020 over the keyed table ``GEAR[translation[b]] ^ seed`` (checked here
against a plain-Python FastCDC written from protocol.md 50.1, and by the vector)."""

from __future__ import annotations

import io
import json
import math
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfastcdc.py.constants import GEAR, MASKS

from anysyncfs.core import crypto
from anysyncfs.core.chunking import (
    DEFAULT_PARAMS,
    ChunkParams,
    chunker_key,
    gear_secret,
    iter_chunks,
)

VECTOR_PATH = Path(__file__).resolve().parents[1] / "vectors" / "chunking.json"
KEY_A = chunker_key(bytes(range(32)))
KEY_B = chunker_key(bytes(range(1, 33)))
SMALL = dict(min_size=64, avg_size=256, max_size=1024)
M64 = (1 << 64) - 1


def rand(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def cuts(source: object, params: ChunkParams, **kw: object) -> list[tuple[int, int]]:
    return [(offset, len(data)) for offset, data in iter_chunks(source, params, **kw)]  # type: ignore[arg-type]


def reference_cuts(data: bytes, params: ChunkParams) -> list[tuple[int, int]]:
    """FastCDC 2020 (normalized chunking 1, two bytes per step) over the keyed gear table, as protocol.md 50.1
    states it: a table entry per byte value, ``GEAR[translation[b]] ^ seed``; no translation of the input."""
    secret = gear_secret(params.key) if params.key is not None else None
    table = [GEAR[secret.translation[b]] ^ secret.seed if secret else GEAR[b] for b in range(256)]
    table_ls = [(t << 1) & M64 for t in table]
    bits = math.floor(math.log2(params.avg_size) + 0.5)
    mask_s, mask_l = MASKS[bits + 1], MASKS[bits - 1]
    mask_s_ls, mask_l_ls = (mask_s << 1) & M64, (mask_l << 1) & M64
    out: list[tuple[int, int]] = []
    offset = 0
    while offset < len(data):
        remaining = len(data) - offset
        length = remaining
        if remaining > params.min_size:
            center = params.avg_size
            if remaining > params.max_size:
                remaining = params.max_size
            elif remaining < center:
                center = remaining
            length = remaining
            h = 0
            pos = params.min_size // 2 * 2
            found = None
            for stop, ms, ms_ls in ((center // 2 * 2, mask_s, mask_s_ls), (remaining // 2 * 2, mask_l, mask_l_ls)):
                while found is None and pos < stop:
                    h = ((h << 2) + table_ls[data[offset + pos]]) & M64
                    if not h & ms_ls:
                        found = pos
                        break
                    h = (h + table[data[offset + pos + 1]]) & M64
                    if not h & ms:
                        found = pos + 1
                        break
                    pos += 2
            if found is not None:
                length = found
        out.append((offset, length))
        offset += length
    return out


# ---------------------------------------------------------------------------------------------------- the secret
def test_gear_secret_is_a_permutation_and_a_seed() -> None:
    secret = gear_secret(KEY_A)
    assert sorted(secret.translation) == list(range(256))
    assert secret.translation != bytes(range(256))
    assert 1 <= secret.seed < 1 << 63
    assert gear_secret(KEY_B).translation != secret.translation and gear_secret(KEY_B).seed != secret.seed
    assert secret.translation.hex() not in repr(secret) and str(secret.seed) not in repr(secret)
    assert KEY_A.hex() not in repr(ChunkParams(key=KEY_A))  # the key never shows in logs
    with pytest.raises(ValueError):
        ChunkParams(key=b"short")
    with pytest.raises(ValueError):
        chunker_key(b"short")


def test_chunker_key_is_the_documented_derivation() -> None:
    epoch0 = bytes(range(32))
    assert chunker_key(epoch0) == crypto.derive_key("anysyncfs 2026 chunker key v1", epoch0)
    material = crypto.derive_key("anysyncfs 2026 chunker gear v1", KEY_A, 2056)
    ranked = sorted(range(256), key=lambda b: (material[8 * b : 8 * b + 8], b))
    assert gear_secret(KEY_A).translation == bytes(ranked)
    assert gear_secret(KEY_A).seed == (int.from_bytes(material[2048:], "big") >> 1 or 1)


# ---------------------------------------------------------------------------------------------------- the cuts
@pytest.mark.parametrize("key", [None, KEY_A, KEY_B], ids=["public", "key-a", "key-b"])
def test_cuts_equal_the_reference_fastcdc_over_the_keyed_table(key: bytes | None) -> None:
    params = ChunkParams(**SMALL, key=key)
    for data in (rand(40_000, seed=3), (b"abcabd" * 5000)[:30_000], bytes(5000) + rand(9000, seed=4)):
        assert cuts(data, params) == reference_cuts(data, params)


def test_keyed_cuts_are_deterministic_within_a_space_and_differ_between_spaces() -> None:
    data = rand(300_000, seed=9)
    a1, a2 = cuts(data, ChunkParams(**SMALL, key=KEY_A)), cuts(bytes(data), ChunkParams(**SMALL, key=KEY_A))
    b = cuts(data, ChunkParams(**SMALL, key=KEY_B))
    public = cuts(data, ChunkParams(**SMALL))
    assert a1 == a2
    assert sum(n for _, n in a1) == len(data) and len(a1) > 500
    ends = lambda cs: {o + n for o, n in cs[:-1]}  # noqa: E731
    # Cut points of another space (or of the public table) coincide only by chance (~1 in avg_size bytes).
    assert len(ends(a1) & ends(b)) < len(a1) // 5
    assert len(ends(a1) & ends(public)) < len(a1) // 5


def test_an_edit_moves_only_nearby_cuts_with_a_key() -> None:
    """Keying keeps what content-defined chunking is for: a local edit changes only the chunks around it."""
    params = ChunkParams(**SMALL, key=KEY_A)
    data = rand(200_000, seed=5)
    edited = data[:100_000] + b"inserted bytes" + data[100_000:]
    before, after = cuts(data, params), cuts(edited, params)
    shifted = {(o + 14 if o >= 100_000 else o, n) for o, n in before}
    assert len(shifted & set(after)) >= len(before) - 8  # here 5 differ: the edited one and a few to resync


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 20_000),
    block=st.integers(1, 5000),
    step=st.integers(1, 9000),
    prefix=st.integers(0, 3000),
    seed=st.integers(0, 3),
)
def test_keyed_streamed_cuts_equal_whole_buffer_cuts(size: int, block: int, step: int, prefix: int, seed: int) -> None:
    params = ChunkParams(**SMALL, key=KEY_A)
    data = rand(size, seed) if seed else (b"ab" * size)[:size]
    expected = cuts(data, params)
    prefix = min(prefix, size)
    stream = io.BytesIO(data[prefix:])
    got = list(iter_chunks(stream, params, prefix=data[:prefix], block_size=block))
    assert [(o, len(d)) for o, d in got] == expected
    assert b"".join(bytes(d) for _, d in got) == data  # original bytes, not the translated copy
    in_memory = list(iter_chunks(bytearray(data), params, block_size=block))  # sliding window over a buffer
    assert [(o, len(d)) for o, d in in_memory] == expected
    assert b"".join(bytes(d) for _, d in in_memory) == data


def test_keyed_default_params_stream_equals_buffer() -> None:
    params = ChunkParams(key=KEY_A)
    data = rand(13 << 20, seed=5)
    expected = cuts(data, params)
    assert cuts(io.BytesIO(data), params, block_size=1) == expected
    assert all(params.min_size <= n <= params.max_size for _, n in expected[:-1])
    assert expected != cuts(data, DEFAULT_PARAMS)


# ---------------------------------------------------------------------------------------------------- vector
def vector_input() -> bytes:
    return crypto.derive_key("anysyncfs 2026 test vector data", b"keyed chunking", 20_000)


def test_vector() -> None:
    epoch0 = bytes.fromhex("e0" * 32)
    key = chunker_key(epoch0)
    params = ChunkParams(**SMALL, key=key)
    secret = gear_secret(key)
    data = vector_input()
    doc = {
        "format": "keyed FastCDC 2020 cut points (protocol.md 50.1)",
        "epoch0_key_hex": epoch0.hex(),
        "chunker_key_hex": key.hex(),
        "translation_hex": secret.translation.hex(),
        "seed": secret.seed,
        "params": SMALL,
        "input": "BLAKE3 derive_key('anysyncfs 2026 test vector data', b'keyed chunking'), 20000 bytes of output",
        "chunk_lengths": [n for _, n in cuts(data, params)],
        "public_table_chunk_lengths": [n for _, n in cuts(data, ChunkParams(**SMALL))],
    }
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTOR_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    stored = json.loads(VECTOR_PATH.read_text())
    assert stored == doc
    offsets = [0]
    for n in stored["chunk_lengths"]:
        offsets.append(offsets[-1] + n)
    assert reference_cuts(data, params) == list(zip(offsets[:-1], stored["chunk_lengths"], strict=True))
