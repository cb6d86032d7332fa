"""Signed heads records (docs/protocol.md 70.9): the byte format, strict decoding, and the judgement of a provider."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mnemonic import Mnemonic

from anysyncfs.core import crypto, encoding, keys
from anysyncfs.core import signed_heads as sh
from anysyncfs.errors import BadSignature, DecodeError, IdMismatch, IntegrityError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "signed_heads.json"

# Fixed inputs (the identity of tests/vectors/device_cert.json), so the vector pins every byte.
PHRASE = Mnemonic("english").to_mnemonic(bytes(range(32)))
DEVICE_SEED = bytes(range(100, 132))
DEVICE_NAME = "laptop — café"
CERT_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
SPACE = bytes([0x53]) * 32
COUNTER = 7
SIGNED_US = 1_767_225_660_000_000  # one minute later
HEADS = [bytes([0x30 + i]) * 32 for i in (2, 0, 1)]  # given unsorted: the record sorts them


def identity() -> keys.Identity:
    return keys.Identity.create(PHRASE, DEVICE_NAME, CERT_US, device_seed=DEVICE_SEED)


def record(**kw: object) -> bytes:
    args: dict[str, object] = {"space_id": SPACE, "counter": COUNTER, "heads": HEADS, "created_us": SIGNED_US}
    args.update(kw)
    return sh.sign_heads(identity(), **args)  # type: ignore[arg-type]


def signed_by_device(body: sh.SignedHeadsBody, ident: keys.Identity | None = None, *,
                     context: bytes = sh.SIGNED_HEADS_CONTEXT) -> bytes:
    """A record of any body (also one sign_heads would refuse), signed properly by ``ident``'s device key."""
    ident = ident or identity()
    data = encoding.encode(body)
    prefix = encoding.PREFIX.pack(sh.FORMAT_SIGNED_HEADS, sh.SIGNED_HEADS_VERSION, len(data))
    return encoding.pack_signed(sh.FORMAT_SIGNED_HEADS, 1, data, [ident.device.sign(context + prefix + data)])


# ---------------------------------------------------------------------------------------------------- format
def test_record_round_trips_and_names_its_signer() -> None:
    ident = identity()
    parsed = sh.parse_signed_heads(record(), SPACE)
    assert parsed.space == SPACE and parsed.counter == COUNTER and parsed.created_us == SIGNED_US
    assert parsed.heads == tuple(sorted(HEADS))
    assert parsed.device == ident.device_id and parsed.account == ident.account_id
    assert parsed.raw == record()  # Ed25519 is deterministic: same inputs, same bytes


def test_layout_byte_by_byte() -> None:
    raw = record()
    ident = identity()
    body_len = int.from_bytes(raw[2:6], "big")
    assert raw[0:1] == b"H" and raw[1] == 1 and len(raw) == 6 + body_len + 1 + 64
    body = raw[6 : 6 + body_len]
    cert = ident.device_cert
    expected = (
        b"\x95"  # array of 5
        + b"\xc4\x20" + SPACE  # space, bin8
        + b"\xc4" + bytes([len(cert)]) + cert  # device certificate, bin8 (166 bytes)
        + bytes([COUNTER])  # counter, positive fixint
        + b"\xcf" + SIGNED_US.to_bytes(8, "big")  # created_us, uint64
        + b"\x93" + b"".join(b"\xc4\x20" + h for h in sorted(HEADS))  # heads, ascending
    )
    assert body == expected
    assert raw[6 + body_len] == 1  # one signature
    signature = raw[6 + body_len + 1 :]
    crypto.verify(ident.device_id, b"anysyncfs signed heads v1\x00" + raw[: 6 + body_len], signature)


def _vector() -> dict[str, object]:
    ident = identity()
    raw = record()
    return {
        "description": "signed heads record (tag H, version 1) signed by the device key of tests/vectors/"
                       "device_cert.json",
        "inputs": {
            "phrase_entropy_hex": bytes(range(32)).hex(),
            "device_seed_hex": DEVICE_SEED.hex(),
            "device_name": DEVICE_NAME,
            "device_cert_created_us": CERT_US,
            "space_hex": SPACE.hex(),
            "counter": COUNTER,
            "created_us": SIGNED_US,
            "heads_hex": [h.hex() for h in HEADS],
            "signature_context": sh.SIGNED_HEADS_CONTEXT.decode(),
        },
        "expected": {
            "device_public_hex": ident.device_id.hex(),
            "record_hex": raw.hex(),
            "record_len": len(raw),
        },
    }


def test_signed_heads_vector() -> None:
    computed = _vector()
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTORS.write_text(json.dumps(computed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert stored == computed
    parsed = sh.parse_signed_heads(bytes.fromhex(stored["expected"]["record_hex"]))
    assert parsed.counter == stored["inputs"]["counter"]
    assert [h.hex() for h in parsed.heads] == sorted(stored["inputs"]["heads_hex"])


def test_every_bit_flip_is_refused() -> None:
    raw = record()
    for i in range(len(raw)):
        for bit in (0x01, 0x80):
            bad = raw[:i] + bytes([raw[i] ^ bit]) + raw[i + 1 :]
            with pytest.raises(IntegrityError):
                sh.parse_signed_heads(bad, SPACE)


def test_truncated_extended_and_oversized_records_are_refused() -> None:
    raw = record()
    for cut in (0, 1, 5, 6, 20, len(raw) - 1):
        with pytest.raises(DecodeError):
            sh.parse_signed_heads(raw[:cut])
    with pytest.raises(DecodeError):
        sh.parse_signed_heads(raw + b"\x00")
    huge_len = encoding.PREFIX.pack(sh.FORMAT_SIGNED_HEADS, 1, sh.MAX_BODY + 1) + bytes(10)  # body length over the bound
    with pytest.raises(DecodeError, match="exceeds"):
        sh.parse_signed_heads(huge_len)
    with pytest.raises(DecodeError, match="exceed the limit"):
        sh.parse_signed_heads(bytes(sh.MAX_RECORD_LEN + 1))


def test_wrong_tag_version_and_signature_count_are_refused() -> None:
    raw = record()
    for bad in (b"C" + raw[1:], raw[:1] + b"\x02" + raw[2:]):
        with pytest.raises(DecodeError):
            sh.parse_signed_heads(bad)
    body_end = 6 + int.from_bytes(raw[2:6], "big")
    two = raw[:body_end] + b"\x02" + raw[body_end + 1 :] * 2
    with pytest.raises(DecodeError, match="signature count"):
        sh.parse_signed_heads(two)


def test_record_of_another_space_is_refused() -> None:
    with pytest.raises(IdMismatch):
        sh.parse_signed_heads(record(), bytes(32))


def test_heads_must_be_ascending_unique_and_at_most_64() -> None:
    ident = identity()
    ids_ = [bytes([i]) * 32 for i in range(65)]
    cert = ident.device_cert
    for heads in ([ids_[1], ids_[0]], [ids_[0], ids_[0]], ids_):
        raw = signed_by_device(sh.SignedHeadsBody(SPACE, cert, 1, 0, heads))
        with pytest.raises(DecodeError):
            sh.parse_signed_heads(raw)
    sh.parse_signed_heads(signed_by_device(sh.SignedHeadsBody(SPACE, cert, 1, 0, ids_[:64])))  # the limit itself
    # A device with more heads signs the 64 lowest.
    assert sh.parse_signed_heads(record(heads=ids_[::-1])).heads == tuple(ids_[:64])


def test_counter_bounds_and_extra_or_missing_fields_are_refused() -> None:
    cert = identity().device_cert
    with pytest.raises(DecodeError):
        sh.parse_signed_heads(signed_by_device(sh.SignedHeadsBody(SPACE, cert, 0, 0, [])))
    with pytest.raises(DecodeError):
        record(counter=0)
    with pytest.raises(DecodeError):
        record(counter=2**63)

    class Longer(encoding.Strict, frozen=True):
        space: bytes
        device_cert: bytes
        counter: int
        created_us: int
        heads: list[bytes]
        extra: int

    class Shorter(encoding.Strict, frozen=True):
        space: bytes
        device_cert: bytes
        counter: int
        created_us: int

    for body in (Longer(SPACE, cert, 1, 0, [], 5), Shorter(SPACE, cert, 1, 0)):
        with pytest.raises(DecodeError):
            sh.parse_signed_heads(signed_by_device(body))  # type: ignore[arg-type]


def test_only_the_certified_device_key_under_the_heads_context_signs() -> None:
    ident = identity()
    other = keys.Identity.create(PHRASE, "phone", CERT_US, device_seed=bytes(32))
    body = sh.SignedHeadsBody(SPACE, ident.device_cert, 1, 0, [])
    # another device of the same account cannot speak for this one
    with pytest.raises(BadSignature):
        sh.parse_signed_heads(signed_by_device(body, other))
    # the generic signed-record context is not this format's (domain separation)
    with pytest.raises(BadSignature):
        sh.parse_signed_heads(signed_by_device(body, context=encoding.SIGNATURE_CONTEXT))
    # the account key is not the device key
    data = encoding.encode(body)
    prefix = encoding.PREFIX.pack(sh.FORMAT_SIGNED_HEADS, 1, len(data))
    by_account = encoding.pack_signed(sh.FORMAT_SIGNED_HEADS, 1, data,
                                      [ident.account.sign(sh.SIGNED_HEADS_CONTEXT + prefix + data)])
    with pytest.raises(BadSignature):
        sh.parse_signed_heads(by_account)
    # a certificate the account never signed
    forged_cert = bytearray(ident.device_cert)
    forged_cert[-1] ^= 1
    with pytest.raises(BadSignature):
        sh.parse_signed_heads(signed_by_device(sh.SignedHeadsBody(SPACE, bytes(forged_cert), 1, 0, [])))


def test_peek_heads_reads_a_stored_record() -> None:
    assert sh.peek_heads(record()) == tuple(sorted(HEADS))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), tail=st.binary(max_size=80))
def test_arbitrary_bytes_only_raise_integrity_errors(body: bytes, tail: bytes) -> None:
    for raw in (body, encoding.PREFIX.pack(sh.FORMAT_SIGNED_HEADS, 1, len(body)) + body + b"\x01" + tail):
        with pytest.raises(IntegrityError):
            sh.parse_signed_heads(raw)


# ---------------------------------------------------------------------------------------------------- judging
def heads_record(device_seed: bytes, counter: int, heads: list[bytes]) -> sh.SignedHeads:
    ident = keys.Identity.create(PHRASE, "d", CERT_US, device_seed=device_seed)
    return sh.parse_signed_heads(sh.sign_heads(ident, SPACE, counter, heads, 0))


def test_judge_names_withheld_changes_and_rollbacks_only() -> None:
    a, b = bytes([1]) * 32, bytes([2]) * 32
    other = heads_record(bytes([9]) * 32, 5, [a, b])
    mine = heads_record(bytes([8]) * 32, 3, [a])
    # everything delivered, counters never lower: nothing to say
    assert sh.judge([other, mine], {other.device: 5, mine.device: 2}, {a, b}, mine.device) == []
    # b was never delivered
    (f,) = sh.judge([other], {}, {a}, mine.device)
    assert (f.kind, f.device, f.counter, f.missing) == (sh.WITHHOLDS, other.device, 5, (b,))
    # served counter 3 of ours after it had accepted 4: rolled back (our own heads are never "withheld")
    (g,) = sh.judge([mine], {mine.device: 4}, set(), mine.device)
    assert (g.kind, g.counter, g.previous) == (sh.ROLLBACK, 3, 4)


# ---------------------------------------------------------------------------------------------------- store
def test_store_keeps_the_newest_record_the_highest_served_counter_and_a_bounded_warning_list(tmp_path: Path) -> None:
    from anysyncfs.store.db import Store
    from anysyncfs.store.db_heads import MAX_WARNINGS_PER_SPACE

    store = Store(str(tmp_path / "store.db"))
    try:
        store.add_space(SPACE, "s", b"header")
        device, account, provider = bytes([1]) * 32, bytes([2]) * 32, bytes([3]) * 32
        assert store.put_signed_heads(SPACE, device, account, 5, b"five")
        assert not store.put_signed_heads(SPACE, device, account, 5, b"other five")  # a counter is never reused
        assert not store.put_signed_heads(SPACE, device, account, 4, b"four")
        assert store.signed_heads_row(SPACE, device).raw == b"five"  # type: ignore[union-attr]
        assert store.put_signed_heads(SPACE, device, account, 6, b"six")
        assert store.signed_heads_counter(SPACE, device) == 6
        store.note_heads_served(SPACE, provider, {device: 6})
        store.note_heads_served(SPACE, provider, {device: 2})  # never lowered
        assert store.heads_served(SPACE, provider) == {device: 6}
        for i in range(MAX_WARNINGS_PER_SPACE + 6):
            store.note_provider_warning(SPACE, provider, "withholds", bytes([i]) * 32, i, "addr", f"line {i}\nmore")
        rows = store.provider_warnings(SPACE)
        assert len(rows) == MAX_WARNINGS_PER_SPACE and all("\n" not in r.message for r in rows)
        store.note_provider_warning(SPACE, provider, "withholds", rows[-1].device, 99, "addr", "again")
        again = [r for r in store.provider_warnings(SPACE) if r.device == rows[-1].device]
        assert again[0].counter == 99 and again[0].first_us <= again[0].last_us
        assert len(store.provider_warnings(SPACE)) == MAX_WARNINGS_PER_SPACE
    finally:
        store.close()
