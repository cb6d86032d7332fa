"""Address records (docs/protocol.md 70.13) and mDNS announcements (70.14): byte formats, vectors, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from anysyncfs.core import address_record as ar
from anysyncfs.errors import AuthenticationFailed, DecodeError, IdMismatch, IntegrityError
from anysyncfs.net import lan
from anysyncfs.replica.address_board import AddressBoard
from tests.unit.test_signed_heads import CERT_US, DEVICE_NAME, DEVICE_SEED, identity

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "address_record.json"
SPACE = bytes([0x53]) * 32
EPOCH = 3
EPOCH_KEY = bytes([0x4B]) * 32
COUNTER = 1_767_225_660_000_000
NONCE = bytes(range(12))
ADDRESSES = [("192.168.1.20", 7734), ("fd00::1", 7734)]
MDNS_WINDOW = 2_945_376  # 2026-01-01T00:00:00Z // 600
MDNS_PORT = 7734


def record(**kw: object) -> bytes:
    args: dict[str, object] = {"space_id": SPACE, "epoch": EPOCH, "epoch_key": EPOCH_KEY, "addresses": ADDRESSES,
                               "counter": COUNTER, "nonce": NONCE}
    args.update(kw)
    return ar.sign_addresses(identity(), **args)  # type: ignore[arg-type]


def test_round_trip_and_members_only() -> None:
    ident = identity()
    parsed = ar.parse_address_record(record(), SPACE)
    assert parsed.device == ident.device_id and parsed.account == ident.account_id
    assert parsed.counter == COUNTER and parsed.epoch == EPOCH
    assert b"192.168" not in record()  # sealed: a provider holding it cannot read it
    assert ar.open_addresses(parsed, {EPOCH: EPOCH_KEY}) == ADDRESSES
    with pytest.raises(AuthenticationFailed):
        ar.open_addresses(parsed, {EPOCH: bytes(32)})  # another space's (or a removed member's old) key
    with pytest.raises(AuthenticationFailed):
        ar.open_addresses(parsed, {EPOCH + 1: EPOCH_KEY})  # no key for its epoch
    with pytest.raises(IdMismatch):
        ar.parse_address_record(record(), bytes(32))


def test_every_bit_flip_is_refused() -> None:
    raw = record()
    for i in range(len(raw)):
        bad = raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1:]
        with pytest.raises(IntegrityError):
            ar.parse_address_record(bad, SPACE)


def test_bounds() -> None:
    with pytest.raises(DecodeError):
        ar.parse_address_record(b"P" + bytes(ar.MAX_RECORD_LEN + 1))
    many = [(f"10.0.0.{i}", 1000 + i) for i in range(20)]
    parsed = ar.parse_address_record(record(addresses=many), SPACE)
    assert len(ar.open_addresses(parsed, {EPOCH: EPOCH_KEY})) == ar.MAX_ADDRESSES  # the first 8 are kept
    longest = record(addresses=[("h" * ar.MAX_HOST_LEN, 65535)] * ar.MAX_ADDRESSES)
    assert len(longest) <= ar.MAX_RECORD_LEN


def test_board_keeps_the_newest_record_of_members_only() -> None:
    board = AddressBoard()
    member = identity().account_id
    role_of = lambda account: 1 if account == member else None  # noqa: E731
    assert board.offer(SPACE, role_of, record()) == "stored"
    assert board.offer(SPACE, role_of, record()) == "old"
    newer = record(counter=COUNTER + 1)
    assert board.offer(SPACE, role_of, newer) == "stored"
    assert board.served(SPACE, role_of) == [newer]
    assert board.offer(SPACE, lambda _a: None, record(counter=COUNTER + 2)) == "not-member"
    assert board.served(SPACE, lambda _a: None) == []  # a removed member's record is no longer served


def _vector() -> dict[str, object]:
    ident = identity()
    raw = record()
    return {
        "description": "address record (tag P, version 1) signed by the device key of tests/vectors/"
                       "device_cert.json; mDNS announcement value (70.14)",
        "inputs": {
            "phrase_entropy_hex": bytes(range(32)).hex(),
            "device_seed_hex": DEVICE_SEED.hex(),
            "device_name": DEVICE_NAME,
            "device_cert_created_us": CERT_US,
            "space_hex": SPACE.hex(),
            "epoch": EPOCH,
            "epoch_key_hex": EPOCH_KEY.hex(),
            "counter": COUNTER,
            "nonce_hex": NONCE.hex(),
            "addresses": [list(a) for a in ADDRESSES],
            "mdns_window": MDNS_WINDOW,
            "mdns_port": MDNS_PORT,
        },
        "expected": {
            "device_public_hex": ident.device_id.hex(),
            "record_hex": raw.hex(),
            "record_len": len(raw),
            "mdns_s": lan.seal_device(EPOCH_KEY, SPACE, MDNS_WINDOW, MDNS_PORT, ident.device_id, nonce=NONCE),
        },
    }


def test_address_record_vector() -> None:
    computed = _vector()
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTORS.write_text(json.dumps(computed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert stored == computed
    parsed = ar.parse_address_record(bytes.fromhex(stored["expected"]["record_hex"]))
    assert ar.open_addresses(parsed, {EPOCH: EPOCH_KEY}) == ADDRESSES
    assert lan.open_device(stored["expected"]["mdns_s"].encode(), EPOCH_KEY, SPACE, MDNS_PORT,
                           MDNS_WINDOW * lan.WINDOW_S + 1.0) == identity().device_id
