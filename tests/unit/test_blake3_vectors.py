"""The crypto facade's BLAKE3 (plain, keyed, derive_key) against the official BLAKE3 test vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anysyncfs.core import crypto

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "blake3_test_vectors.json").read_text())
KEY = VECTORS["key"].encode("ascii")
CONTEXT = VECTORS["context_string"]


def vector_input(n: int) -> bytes:
    """The vectors' input: bytes i % 251 for i in 0..n."""
    return bytes(i % 251 for i in range(n))


def test_the_vector_file_is_the_official_one() -> None:
    assert len(KEY) == 32 and len(VECTORS["cases"]) >= 30
    assert {c["input_len"] for c in VECTORS["cases"]} >= {0, 1, 1023, 1024, 1025, 102400}


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: str(c["input_len"]))
def test_blake3_vectors(case: dict[str, str | int]) -> None:
    data = vector_input(int(case["input_len"]))
    expected_hash = bytes.fromhex(str(case["hash"]))
    expected_keyed = bytes.fromhex(str(case["keyed_hash"]))
    expected_derived = bytes.fromhex(str(case["derive_key"]))
    assert crypto.blake3(data) == expected_hash[:32]
    assert crypto.blake3(memoryview(data)) == expected_hash[:32]
    assert crypto.blake3_keyed(KEY, data) == expected_keyed[:32]
    assert crypto.derive_key(CONTEXT, data) == expected_derived[:32]
    assert crypto.derive_key(CONTEXT, data, len(expected_derived)) == expected_derived
    hasher = crypto.Hasher()
    for i in range(0, len(data), 1000):
        hasher.update(data[i : i + 1000])
    assert hasher.digest() == expected_hash[:32]


def test_multithreaded_path_agrees() -> None:
    """Inputs of 1 MiB and more take BLAKE3's multithreaded mode in the facade; it must give the same digest."""
    data = vector_input(3 << 20)
    hasher = crypto.Hasher()
    hasher.update(data)
    assert crypto.blake3(data) == hasher.digest()
