"""Space header: round trip, bounds, ID binding, every flipped bit rejected, and the test vector."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anysyncfs.core import crypto, encoding
from anysyncfs.core.space import (
    DEFAULT_CHUNKING,
    Chunking,
    HeaderBody,
    make_space_header,
    parse_space_header,
)
from anysyncfs.errors import BadSignature, DecodeError, IdMismatch, IntegrityError

VECTOR_PATH = Path(__file__).resolve().parents[1] / "vectors" / "space_header.json"
OWNER = crypto.SigningKey(bytes.fromhex("a1" * 32))


def test_round_trip_defaults() -> None:
    raw = make_space_header(OWNER, 1_767_225_600_000_000)
    h = parse_space_header(raw, crypto.blake3(raw))
    assert h.id == crypto.blake3(raw)
    assert h.raw == raw
    assert h.owner == OWNER.public
    assert h.created_us == 1_767_225_600_000_000
    assert h.chunking == DEFAULT_CHUNKING == Chunking(256 * 1024, 1024 * 1024, 4 * 1024 * 1024)
    assert h.version == 1
    assert len(h.nonce) == 32


def test_nonce_makes_spaces_distinct() -> None:
    a = make_space_header(OWNER, 5)
    b = make_space_header(OWNER, 5)
    assert crypto.blake3(a) != crypto.blake3(b)
    assert make_space_header(OWNER, 5, nonce=bytes(32)) == make_space_header(OWNER, 5, nonce=bytes(32))


def test_expected_id_mismatch() -> None:
    raw = make_space_header(OWNER, 1)
    with pytest.raises(IdMismatch):
        parse_space_header(raw, bytes(32))


@pytest.mark.parametrize(
    "chunking",
    [
        Chunking(4096, 4096, 4096),
        Chunking(1 << 20, 4 << 20, 16 << 20),
        Chunking(64 * 1024, 256 * 1024, 1 << 20),
    ],
)
def test_chunking_in_bounds(chunking: Chunking) -> None:
    raw = make_space_header(OWNER, 1, chunking=chunking)
    assert parse_space_header(raw).chunking == chunking


@pytest.mark.parametrize(
    "chunking",
    [
        Chunking(2048, 1 << 20, 4 << 20),  # min below 4 KiB
        Chunking(512 * 1024, 256 * 1024, 4 << 20),  # min > avg
        Chunking(256 * 1024, 8 << 20, 4 << 20),  # avg > max
        Chunking(256 * 1024, 1 << 20, 32 << 20),  # max above 16 MiB
        Chunking(2 << 20, 2 << 20, 4 << 20),  # min above 1 MiB (pyfastcdc limit)
        Chunking(256 * 1024, 8 << 20, 16 << 20),  # avg above 4 MiB (pyfastcdc limit)
    ],
)
def test_chunking_out_of_bounds(chunking: Chunking) -> None:
    with pytest.raises(DecodeError):
        make_space_header(OWNER, 1, chunking=chunking)
    # A header signed with bad parameters (built by hand) is rejected on parse, too.
    body = encoding.encode(
        HeaderBody(OWNER.public, 1, bytes(32), chunking.min_size, chunking.avg_size, chunking.max_size)
    )
    sig = OWNER.sign(encoding.signing_message(encoding.FORMAT_SPACE_HEADER, 1, body))
    with pytest.raises(DecodeError):
        parse_space_header(encoding.pack_signed(encoding.FORMAT_SPACE_HEADER, 1, body, [sig]))


def test_signed_by_someone_else_rejected() -> None:
    body = encoding.encode(HeaderBody(OWNER.public, 1, bytes(32), 4096, 8192, 16384))
    other = crypto.SigningKey(bytes(32))
    sig = other.sign(encoding.signing_message(encoding.FORMAT_SPACE_HEADER, 1, body))
    with pytest.raises(BadSignature):
        parse_space_header(encoding.pack_signed(encoding.FORMAT_SPACE_HEADER, 1, body, [sig]))


def test_truncations_and_trailing_data_rejected() -> None:
    raw = make_space_header(OWNER, 1)
    for n in range(len(raw)):
        with pytest.raises(IntegrityError):
            parse_space_header(raw[:n])
    with pytest.raises(DecodeError):
        parse_space_header(raw + b"\x00")


def test_extra_body_field_rejected() -> None:
    body = encoding.encode([OWNER.public, 1, bytes(32), 4096, 8192, 16384, 0])
    sig = OWNER.sign(encoding.signing_message(encoding.FORMAT_SPACE_HEADER, 1, body))
    with pytest.raises(DecodeError):
        parse_space_header(encoding.pack_signed(encoding.FORMAT_SPACE_HEADER, 1, body, [sig]))


def test_every_bit_flip_rejected() -> None:
    raw = make_space_header(OWNER, 1_767_225_600_000_000, nonce=bytes(range(32)))
    hid = crypto.blake3(raw)
    for i in range(len(raw) * 8):
        bad = bytearray(raw)
        bad[i // 8] ^= 1 << (i % 8)
        for expected in (None, hid):
            try:
                parse_space_header(bytes(bad), expected)
            except (DecodeError, IdMismatch, BadSignature):
                continue
            pytest.fail(f"bit {i} flipped (expected_id={expected is not None}) was accepted")


# ---------------------------------------------------------------------------------------------------- vector
def vector_inputs() -> dict[str, object]:
    return {
        "owner_seed": "a1" * 32,
        "created_us": 1_767_225_600_000_000,
        "nonce": bytes(range(32)).hex(),
        "chunk_min": 256 * 1024,
        "chunk_avg": 1024 * 1024,
        "chunk_max": 4 * 1024 * 1024,
    }


def build_vector(inputs: dict[str, object]) -> bytes:
    def num(name: str) -> int:
        return int(str(inputs[name]))

    return make_space_header(
        crypto.SigningKey(bytes.fromhex(str(inputs["owner_seed"]))),
        num("created_us"),
        nonce=bytes.fromhex(str(inputs["nonce"])),
        chunking=Chunking(num("chunk_min"), num("chunk_avg"), num("chunk_max")),
    )


def test_vector() -> None:
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        inputs = vector_inputs()
        raw = build_vector(inputs)
        doc = {
            "format": "space header (signed record, tag 'S', version 1)",
            "inputs": inputs,
            "owner_public": OWNER.public.hex(),
            "encoded_hex": raw.hex(),
            "id_hex": crypto.blake3(raw).hex(),
        }
        VECTOR_PATH.parent.mkdir(parents=True, exist_ok=True)
        VECTOR_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    doc = json.loads(VECTOR_PATH.read_text())
    assert doc["inputs"] == vector_inputs()
    raw = build_vector(doc["inputs"])
    assert raw.hex() == doc["encoded_hex"]
    assert crypto.blake3(raw).hex() == doc["id_hex"]
    h = parse_space_header(bytes.fromhex(doc["encoded_hex"]), bytes.fromhex(doc["id_hex"]))
    assert h.owner.hex() == doc["owner_public"]
