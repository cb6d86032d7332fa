"""Recovery phrase, account key derivation, device certificates and Identity."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mnemonic import Mnemonic  # only to build fixed phrases from fixed entropy

from anysyncfs.core import crypto, encoding, ids, keys
from anysyncfs.errors import AnysyncError, BadSignature, DecodeError, KeyringError

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "device_cert.json"

# Fixed inputs (never random), so the vector pins the whole derivation chain.
PHRASE_ENTROPY = bytes(range(32))
DEVICE_SEED = bytes(range(100, 132))
DEVICE_NAME = "laptop — café"
CREATED_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z

PHRASE = Mnemonic("english").to_mnemonic(PHRASE_ENTROPY)
_ACCOUNT = crypto.SigningKey(bytes(range(1, 33)))  # a plain account key for tests that need no phrase


# ---------------------------------------------------------------------------------------------------- phrase
def test_generated_phrase_is_24_valid_words_and_fresh() -> None:
    a, b = keys.generate_phrase(), keys.generate_phrase()
    assert len(a.split()) == 24
    assert keys.normalize_phrase(a) == a
    assert a != b


def test_normalize_collapses_whitespace_and_case() -> None:
    messy = "  \t" + "\n ".join(w.upper() if i % 2 else w for i, w in enumerate(PHRASE.split())) + "  \n"
    assert keys.normalize_phrase(messy) == PHRASE


def test_same_phrase_same_account_key() -> None:
    a = keys.account_key_from_phrase(PHRASE)
    b = keys.account_key_from_phrase(PHRASE.upper().replace(" ", "   "))
    assert a.seed == b.seed and a.public == b.public
    other = keys.account_key_from_phrase(keys.generate_phrase())
    assert other.public != a.public


def test_same_phrase_on_another_device_restores_the_account() -> None:
    first = keys.Identity.create(PHRASE, "desktop", CREATED_US, device_seed=bytes(32))
    second = keys.Identity.create(PHRASE, "phone", CREATED_US + 1, device_seed=bytes([1]) * 32)
    random_device = keys.Identity.create(PHRASE, "tablet", CREATED_US)
    assert first.account_id == second.account_id == random_device.account_id
    assert len({first.device_id, second.device_id, random_device.device_id}) == 3
    assert first.account_text == ids.account_text(first.account_id) and first.account_text.startswith("ac-")
    assert second.device_text == ids.device_text(second.device_id) and second.device_text.startswith("dv-")


def _replace_word(phrase: str, index: int, word: str) -> str:
    words = phrase.split()
    words[index] = word
    return " ".join(words)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (" ".join(PHRASE.split()[:23]), "expected 24 words, got 23"),
        (PHRASE + " abandon", "expected 24 words, got 25"),
        ("", "expected 24 words, got 0"),
        (Mnemonic("english").to_mnemonic(bytes(16)), "expected 24 words, got 12"),
        (_replace_word(PHRASE, 4, "zzzsecret"), "word 5 is not in the BIP-39"),
        (_replace_word(PHRASE, 0, "abandonn"), "word 1 is not in the BIP-39"),
        (_replace_word(PHRASE, 23, "zoo" if PHRASE.split()[23] != "zoo" else "zone"), "checksum"),
    ],
)
def test_invalid_phrases_rejected(bad: str, fragment: str) -> None:
    with pytest.raises(KeyringError) as info:
        keys.normalize_phrase(bad)
    message = str(info.value)
    assert message.startswith("invalid recovery phrase: ") and fragment in message
    assert "\n" not in message and "zzzsecret" not in message  # never echo phrase words
    with pytest.raises(KeyringError):
        keys.account_key_from_phrase(bad)
    with pytest.raises(KeyringError):
        keys.Identity.create(bad, "x", 0)


def test_swapped_words_fail_the_checksum() -> None:
    words = PHRASE.split()
    swapped = None
    for j in range(1, 24):  # find a swap that changes the phrase and breaks the checksum (almost any does)
        w = list(words)
        w[0], w[j] = w[j], w[0]
        if w != words and not Mnemonic("english").check(" ".join(w)):
            swapped = " ".join(w)
            break
    assert swapped is not None
    with pytest.raises(KeyringError, match="checksum"):
        keys.normalize_phrase(swapped)


# ---------------------------------------------------------------------------------------------------- certificate
def _account() -> crypto.SigningKey:
    return keys.account_key_from_phrase(PHRASE)


def test_device_cert_round_trip() -> None:
    account, device = _account(), crypto.SigningKey(DEVICE_SEED)
    raw = keys.issue_device_cert(account, device.public, DEVICE_NAME, CREATED_US)
    cert = keys.parse_device_cert(raw)
    assert (cert.account, cert.device, cert.name, cert.created_us) == (
        account.public,
        device.public,
        DEVICE_NAME,
        CREATED_US,
    )
    assert cert.id == crypto.blake3(raw) and cert.raw == raw
    assert raw[0] == encoding.FORMAT_DEVICE_CERT and raw[1] == keys.DEVICE_CERT_VERSION
    assert raw.hex() not in repr(cert)


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=16
    ).filter(lambda s: len(s.encode()) <= keys.DEVICE_NAME_MAX),
    created_us=st.integers(min_value=0, max_value=2**63 - 1),
    device_seed=st.binary(min_size=32, max_size=32),
)
def test_device_cert_round_trip_property(name: str, created_us: int, device_seed: bytes) -> None:
    device = crypto.SigningKey(device_seed)
    cert = keys.parse_device_cert(keys.issue_device_cert(_ACCOUNT, device.public, name, created_us))
    assert (cert.device, cert.name, cert.created_us) == (device.public, name, created_us)


def test_every_bit_flip_of_a_device_cert_is_rejected() -> None:
    raw = keys.issue_device_cert(_account(), crypto.SigningKey(DEVICE_SEED).public, DEVICE_NAME, CREATED_US)
    kinds: set[type] = set()
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            keys.parse_device_cert(bytes(flipped))
        except (DecodeError, BadSignature) as e:
            kinds.add(type(e))
        else:
            pytest.fail(f"bit {bit} flipped and the certificate was still accepted")
    assert kinds == {DecodeError, BadSignature}  # both layers are exercised


def test_truncated_or_extended_cert_rejected() -> None:
    raw = keys.issue_device_cert(_account(), crypto.SigningKey(DEVICE_SEED).public, DEVICE_NAME, CREATED_US)
    for n in range(len(raw)):
        with pytest.raises(DecodeError):
            keys.parse_device_cert(raw[:n])
    for extra in (b"\x00", b"\xff" * 64):
        with pytest.raises(DecodeError):
            keys.parse_device_cert(raw + extra)


def _signed_by(signer: crypto.SigningKey, body: bytes, tag: int = encoding.FORMAT_DEVICE_CERT) -> bytes:
    message = encoding.signing_message(tag, keys.DEVICE_CERT_VERSION, body)
    return encoding.pack_signed(tag, keys.DEVICE_CERT_VERSION, body, [signer.sign(message)])


def test_cert_signed_by_another_key_is_rejected() -> None:
    account, intruder = _account(), crypto.SigningKey(bytes(32))
    body = encoding.encode(keys.DeviceCertBody(account.public, bytes(32), "evil", 1))
    with pytest.raises(BadSignature):
        keys.parse_device_cert(_signed_by(intruder, body))
    assert keys.parse_device_cert(_signed_by(account, body)).name == "evil"  # the control case is accepted


@pytest.mark.parametrize("name", ["", "x" * 65, "é" * 33, "bad\nname", "bell\x07", "nul\x00", "c1\x85"])
def test_bad_device_names_rejected_at_issue_and_parse(name: str) -> None:
    account = _account()
    with pytest.raises(DecodeError):
        keys.issue_device_cert(account, bytes(32), name, 0)
    body = encoding.encode(keys.DeviceCertBody(account.public, bytes(32), name, 0))
    with pytest.raises(DecodeError):
        keys.parse_device_cert(_signed_by(account, body))


def test_longest_device_name_accepted() -> None:
    name = "é" * 32  # 64 bytes of UTF-8
    raw = keys.issue_device_cert(_account(), bytes(32), name, 0)
    assert keys.parse_device_cert(raw).name == name


@pytest.mark.parametrize(
    "body",
    [
        encoding.encode([b"\x01" * 32, b"\x02" * 32, "n", 1, 5]),  # an extra field
        encoding.encode([b"\x01" * 32, b"\x02" * 32, "n"]),  # a missing field
        encoding.encode([b"\x01" * 31, b"\x02" * 32, "n", 1]),  # short account key
        encoding.encode([b"\x01" * 32, b"\x02" * 33, "n", 1]),  # long device key
        encoding.encode([b"\x01" * 32, b"\x02" * 32, "n", -1]),  # negative time
        encoding.encode([b"\x01" * 32, b"\x02" * 32, b"n", 1]),  # bytes where a str belongs
        encoding.encode({"account": b"\x01" * 32}),  # a map, not an array
    ],
)
def test_malformed_bodies_rejected(body: bytes) -> None:
    with pytest.raises(DecodeError):
        keys.parse_device_cert(_signed_by(_ACCOUNT, body))


def test_wrong_tag_version_and_oversized_body_rejected() -> None:
    body = encoding.encode(keys.DeviceCertBody(_ACCOUNT.public, bytes(32), "n", 0))
    with pytest.raises(DecodeError, match="tag"):
        keys.parse_device_cert(_signed_by(_ACCOUNT, body, tag=encoding.FORMAT_CHANGE))
    raw = bytearray(_signed_by(_ACCOUNT, body))
    raw[1] = 2
    with pytest.raises(DecodeError, match="version"):
        keys.parse_device_cert(bytes(raw))
    big = encoding.encode([_ACCOUNT.public, bytes(32), "n" * 300, 0])
    with pytest.raises(DecodeError, match="exceeds"):
        keys.parse_device_cert(_signed_by(_ACCOUNT, big))


def test_issue_rejects_bad_inputs() -> None:
    with pytest.raises(DecodeError):
        keys.issue_device_cert(_ACCOUNT, bytes(31), "n", 0)
    with pytest.raises(DecodeError):
        keys.issue_device_cert(_ACCOUNT, bytes(32), "n", -1)


# ---------------------------------------------------------------------------------------------------- identity
def test_identity_checks_its_certificate() -> None:
    ident = keys.Identity.create(PHRASE, DEVICE_NAME, CREATED_US, device_seed=DEVICE_SEED)
    other_device = crypto.SigningKey(bytes(32))
    with pytest.raises(KeyringError, match="does not belong"):
        keys.Identity(ident.account, other_device, ident.device_cert, DEVICE_NAME)
    with pytest.raises(KeyringError, match="names another"):
        keys.Identity(ident.account, ident.device, ident.device_cert, "other")
    with pytest.raises(KeyringError, match="invalid"):
        keys.Identity(ident.account, ident.device, ident.device_cert[:-1], DEVICE_NAME)
    for bad_name in ("", "x" * 65):
        with pytest.raises(KeyringError, match="cannot certify"):
            keys.Identity.create(PHRASE, bad_name, 0, device_seed=DEVICE_SEED)
    with pytest.raises(KeyringError, match="32 bytes"):
        keys.Identity.create(PHRASE, "n", 0, device_seed=bytes(31))


def test_identity_repr_hides_secrets() -> None:
    ident = keys.Identity.create(PHRASE, DEVICE_NAME, CREATED_US, device_seed=DEVICE_SEED)
    text = repr(ident)
    assert ident.account.seed.hex() not in text and DEVICE_SEED.hex() not in text
    assert ident.device_cert.hex() not in text


def test_errors_are_project_errors() -> None:
    for call in (lambda: keys.parse_device_cert(b""), lambda: keys.normalize_phrase("x")):
        with pytest.raises(AnysyncError):
            call()


# ---------------------------------------------------------------------------------------------------- vector
def _compute_vector() -> dict[str, object]:
    bip39_seed = Mnemonic.to_seed(PHRASE, passphrase="")
    account = keys.account_key_from_phrase(PHRASE)
    ident = keys.Identity.create(PHRASE, DEVICE_NAME, CREATED_US, device_seed=DEVICE_SEED)
    cert = keys.parse_device_cert(ident.device_cert)
    return {
        "description": "recovery phrase -> account key; device certificate (tag D, version 1) signed by it",
        "inputs": {
            "phrase_entropy_hex": PHRASE_ENTROPY.hex(),
            "phrase": PHRASE,
            "account_key_context": keys.ACCOUNT_KEY_CONTEXT,
            "device_seed_hex": DEVICE_SEED.hex(),
            "device_name": DEVICE_NAME,
            "created_us": CREATED_US,
        },
        "expected": {
            "bip39_seed_hex": bip39_seed.hex(),
            "account_seed_hex": account.seed.hex(),
            "account_public_hex": account.public.hex(),
            "account_text": ident.account_text,
            "device_public_hex": ident.device_id.hex(),
            "device_text": ident.device_text,
            "device_cert_hex": ident.device_cert.hex(),
            "device_cert_id_hex": cert.id.hex(),
        },
    }


def test_device_cert_vector() -> None:
    computed = _compute_vector()
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(json.dumps(computed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert stored == computed
    # The stored bytes parse back to the stored inputs (independently of how they were computed).
    cert = keys.parse_device_cert(bytes.fromhex(stored["expected"]["device_cert_hex"]))
    assert cert.name == stored["inputs"]["device_name"] and cert.created_us == stored["inputs"]["created_us"]
    assert cert.account.hex() == stored["expected"]["account_public_hex"]
    assert cert.id.hex() == stored["expected"]["device_cert_id_hex"]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), tail=st.binary(max_size=80))
def test_arbitrary_bytes_only_raise_decode_or_signature_errors(body: bytes, tail: bytes) -> None:
    for raw in (body, encoding.PREFIX.pack(encoding.FORMAT_DEVICE_CERT, 1, len(body)) + body + b"\x01" + tail):
        with pytest.raises((DecodeError, BadSignature)):
            keys.parse_device_cert(raw)


def test_bip39_seed_matches_an_independent_pbkdf2() -> None:
    # BIP-39: PBKDF2-HMAC-SHA512(phrase, "mnemonic" + passphrase, 2048, 64): checked without the mnemonic package.
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    expected = hashlib.pbkdf2_hmac("sha512", PHRASE.encode(), b"mnemonic", 2048, 64)
    assert stored["expected"]["bip39_seed_hex"] == expected.hex()
    account_seed = crypto.derive_key("anysyncfs 2026 account key v1", expected)
    assert stored["expected"]["account_seed_hex"] == account_seed.hex()
