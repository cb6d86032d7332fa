"""The account vault format (docs/protocol.md 25): key derivation, the signed encrypted record, strict decoding,
and the CRDT merge that keeps every device's additions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mnemonic import Mnemonic

from anysyncfs.core import crypto, encoding, keys
from anysyncfs.core import vault as v
from anysyncfs.errors import AuthenticationFailed, BadSignature, DecodeError, IdMismatch, IntegrityError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "vault.json"

PHRASE = Mnemonic("english").to_mnemonic(bytes(range(32)))  # the identity of tests/vectors/device_cert.json
DEVICE = bytes([0xD1]) * 32
NONCE = bytes(range(0x40, 0x58))
PEER = "anysync://dv-bo6di2sxmz6dqajaxwoh7v7fduwf7x7kg7gs6w7uawzmnp3pfv4a@node.example.org:7733"


def vkeys() -> v.VaultKeys:
    return v.VaultKeys.from_account_seed(keys.account_key_from_phrase(PHRASE).seed)


def sample() -> v.VaultContents:
    c = v.put_entry(v.EMPTY, DEVICE, bytes([0x22]) * 32, name="photos", peers=[PEER], pins=[bytes([7]) * 16])
    c = v.put_entry(c, DEVICE, bytes([0x11]) * 32, name="work — café", peers=[PEER])
    return v.leave_entry(c, DEVICE, bytes([0x33]) * 32)


def test_vector() -> None:
    k = vkeys()
    raw = v.seal_vault(sample(), k, 5, NONCE)
    computed = {
        "inputs": {"phrase": PHRASE, "device_hex": DEVICE.hex(), "version": 5, "nonce_hex": NONCE.hex(),
                   "entries": "0x11…: work — café (lamport 2), 0x22…: photos with one pin (lamport 1), "
                              "0x33…: tombstone (lamport 3); each space with the one peer below",
                   "peer": PEER},
        "expected": {
            "account_seed_hex": keys.account_key_from_phrase(PHRASE).seed.hex(),
            "vault_key_hex": k.key.hex(),
            "signing_public_hex": k.signing.public.hex(),
            "discovery_id_hex": k.discovery_id.hex(),
            "plaintext_hex": encoding.encode(sample()).hex(),
            "record_hex": raw.hex(),
        },
    }
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTORS.write_text(json.dumps(computed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert stored == computed
    record = v.parse_vault_record(bytes.fromhex(stored["expected"]["record_hex"]), k.discovery_id)
    assert record.version == 5 and v.open_vault(record, k) == sample()


def test_keys_are_separate_and_unlinkable_to_the_account_key() -> None:
    k = vkeys()
    account = keys.account_key_from_phrase(PHRASE)
    assert len({k.key, k.signing.public, k.discovery_id, account.public, account.seed}) == 5
    assert k.discovery_id == v.discovery_id_of(k.signing.public)
    assert "key" not in repr(k).replace("VaultKeys", "") or k.key.hex() not in repr(k)


def test_round_trip_and_layout() -> None:
    k = vkeys()
    raw = v.seal_vault(sample(), k, 9, NONCE)
    assert raw[0:2] == b"V\x01" and raw[-65] == 1
    rec = v.parse_vault_record(raw)
    assert (rec.discovery_id, rec.signer, rec.version) == (k.discovery_id, k.signing.public, 9)
    assert v.open_vault(rec, k) == sample()
    assert b"photos" not in raw and bytes([0x22]) * 32 not in raw  # names and space IDs are only in the ciphertext


def test_every_bit_flip_is_refused() -> None:
    k = vkeys()
    raw = v.seal_vault(sample(), k, 3, NONCE)
    for i in range(0, len(raw) * 8, 7):
        bad = bytearray(raw)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(IntegrityError):
            v.open_vault(v.parse_vault_record(bytes(bad)), k)


def test_forgeries_are_refused() -> None:
    k = vkeys()
    other = v.VaultKeys.from_account_seed(bytes(32))
    # signed by another vault key but claiming our discovery ID
    body = encoding.encode(v.VaultBody(k.discovery_id, other.signing.public, 4, NONCE, b"\0" * 32))
    prefix = encoding.PREFIX.pack(v.FORMAT_VAULT, 1, len(body))
    forged = encoding.pack_signed(v.FORMAT_VAULT, 1, body, [other.signing.sign(v.SIGNING_CONTEXT + prefix + body)])
    with pytest.raises(DecodeError, match="not its signer's"):
        v.parse_vault_record(forged)
    # a valid record of another account is not ours
    theirs = v.parse_vault_record(v.seal_vault(sample(), other, 1, NONCE))
    with pytest.raises(IdMismatch):
        v.parse_vault_record(theirs.raw, k.discovery_id)
    with pytest.raises(IdMismatch):
        v.open_vault(theirs, k)
    # signed under the generic record context instead of the vault's
    body = encoding.encode(v.VaultBody(k.discovery_id, k.signing.public, 4, NONCE, b"\0" * 32))
    wrong_ctx = encoding.pack_signed(v.FORMAT_VAULT, 1, body,
                                     [k.signing.sign(encoding.signing_message(v.FORMAT_VAULT, 1, body))])
    with pytest.raises(BadSignature):
        v.parse_vault_record(wrong_ctx)
    # the version is bound by the AAD: a record re-signed with another version does not open
    rec = v.parse_vault_record(v.seal_vault(sample(), k, 3, NONCE))
    body = encoding.encode(v.VaultBody(k.discovery_id, k.signing.public, 4, rec.nonce, rec.ciphertext))
    prefix = encoding.PREFIX.pack(v.FORMAT_VAULT, 1, len(body))
    moved = encoding.pack_signed(v.FORMAT_VAULT, 1, body, [k.signing.sign(v.SIGNING_CONTEXT + prefix + body)])
    with pytest.raises(AuthenticationFailed):
        v.open_vault(v.parse_vault_record(moved), k)


def test_sizes_are_bounded() -> None:
    with pytest.raises(DecodeError):
        v.parse_vault_record(b"V\x01" + b"\xff" * (v.MAX_RECORD_LEN + 10))
    huge = v.EMPTY
    for i in range(v.MAX_ENTRIES + 1):
        huge = v.VaultContents([*huge.entries, v.VaultEntry(i.to_bytes(32, "big"), 1, DEVICE, False, "n", [], [])])
    with pytest.raises(DecodeError):
        v.seal_vault(huge, vkeys(), 1, NONCE)
    with pytest.raises(DecodeError):
        v.check_contents(v.VaultContents([v.VaultEntry(bytes(32), 1, DEVICE, True, "name kept", [], [])]))


def test_concurrent_offline_additions_both_survive() -> None:
    base = v.put_entry(v.EMPTY, DEVICE, b"\x01" * 32, name="shared", peers=[])
    laptop = v.put_entry(base, b"\x0a" * 32, b"\x02" * 32, name="from laptop", peers=[])
    phone = v.put_entry(base, b"\x0b" * 32, b"\x03" * 32, name="from phone", peers=[])
    merged = v.merge(laptop, phone)
    assert [e.name for e in merged.live()] == ["shared", "from laptop", "from phone"]
    assert v.merge(phone, laptop) == merged
    # a rename and a leave of one space at once: the same winner everywhere (higher counter, then device)
    renamed = v.put_entry(merged, b"\x0a" * 32, b"\x01" * 32, name="renamed", peers=[])
    left = v.leave_entry(merged, b"\x0b" * 32, b"\x01" * 32)
    assert v.merge(renamed, left) == v.merge(left, renamed)
    assert v.merge(renamed, left).entry(b"\x01" * 32).left  # same counter: device 0x0b… wins


entries = st.builds(
    lambda space, lamport, device, name: v.VaultEntry(bytes([space]) * 32, lamport, bytes([device]) * 32,
                                                      name is None, name or "", [], []),
    st.integers(0, 5), st.integers(1, 6), st.integers(0, 3), st.one_of(st.none(), st.sampled_from(["a", "b", "c"])))
states = st.lists(entries, max_size=6).map(lambda es: v.merge(*(v.VaultContents([e]) for e in es)))


@given(states, states, states)
def test_merge_is_a_join(a: v.VaultContents, b: v.VaultContents, c: v.VaultContents) -> None:
    assert v.merge(a, b) == v.merge(b, a)
    assert v.merge(v.merge(a, b), c) == v.merge(a, v.merge(b, c))
    assert v.merge(a, a) == a


def test_nonce_and_key_are_used_as_given() -> None:
    k = vkeys()
    a = v.seal_vault(sample(), k, 1, crypto.random_bytes(24))
    b = v.seal_vault(sample(), k, 1, crypto.random_bytes(24))
    assert a != b  # a fresh nonce each time: never the same keystream twice
