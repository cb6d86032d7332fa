"""The keyring file format: sealing, opening, damage detection and the scrypt cost bounds."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mnemonic import Mnemonic

from anysyncfs.core import crypto, encoding, keyring, keys
from anysyncfs.errors import KeyringCorrupt, KeyringError, WrongPassphrase

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "keyring.json"

FAST = 4  # log2(N) for tests: the explicit test-only scrypt cost
PASSPHRASE = b"correct horse"
PHRASE = Mnemonic("english").to_mnemonic(bytes(range(32)))
DEVICE_SEED = bytes(range(100, 132))
DEVICE_NAME = "laptop"
CREATED_US = 1_767_225_600_000_000
SALT = bytes(range(0xA0, 0xB0))
NONCE = bytes(range(0xC0, 0xCC))
SPACE_A = bytes([0xAA]) * 32
SPACE_B = bytes([0x0B]) * 32


def _identity() -> keys.Identity:
    return keys.Identity.create(PHRASE, DEVICE_NAME, CREATED_US, device_seed=DEVICE_SEED)


_IDENTITY = _identity()


def _contents() -> keyring.KeyringContents:
    contents = keyring.contents_from_identity(_identity())
    contents = keyring.with_space_keys(contents, SPACE_A, {1: bytes([0x11]) * 32, 0: bytes([0x10]) * 32})
    return keyring.with_space_keys(contents, SPACE_B, {0: bytes([0x20]) * 32})


def _sealed(**kwargs: object) -> bytes:
    params: dict[str, object] = {"log2_n": FAST, "salt": SALT, "nonce": NONCE}
    params.update(kwargs)
    return keyring.seal_keyring(_contents(), PASSPHRASE, **params)  # type: ignore[arg-type]


def _with_checksum(body: bytes) -> bytes:
    """Bytes whose checksum is right: what a deliberate (not accidental) modification looks like."""
    return body + crypto.blake3(body)


def _craft(plaintext: bytes, *, log2_n: int = FAST, r: int = 8, p: int = 1, passphrase: bytes = PASSPHRASE) -> bytes:
    """A well-formed file around arbitrary plaintext (to test what happens after decryption)."""
    ct_len = len(plaintext) + crypto.TAG_LEN
    header = keyring.HEADER.pack(keyring.MAGIC, 1, keyring.KDF_SCRYPT, log2_n, r, p, SALT, NONCE, ct_len)
    key = crypto.scrypt(passphrase, SALT, log2_n, r, p)
    return _with_checksum(header + crypto.Aead(key).encrypt(NONCE, plaintext, header))


# ---------------------------------------------------------------------------------------------------- round trip
def test_round_trip() -> None:
    contents = _contents()
    data = keyring.seal_keyring(contents, PASSPHRASE, log2_n=FAST)
    opened = keyring.open_keyring(data, PASSPHRASE)
    assert opened == contents
    assert keyring.space_keys(opened, SPACE_A) == {0: bytes([0x10]) * 32, 1: bytes([0x11]) * 32}
    assert keyring.space_keys(opened, bytes(32)) == {}
    ident = opened.identity()
    assert ident.account_id == _identity().account_id and ident.device_id == _identity().device_id
    assert keyring.read_kdf_params(data) == (FAST, 8, 1)


def test_layout_matches_the_documented_offsets() -> None:
    data = _sealed()
    assert data[0:4] == b"ASKR" and data[4] == 1 and data[5] == 1
    assert (data[6], data[7], data[8]) == (FAST, 8, 1)
    assert data[9:25] == SALT and data[25:37] == NONCE
    (ct_len,) = struct.unpack(">I", data[37:41])
    assert len(data) == 41 + ct_len + 32
    assert data[-32:] == crypto.blake3(data[:-32])


def test_default_cost_is_n16384_r8_p1_and_randomised() -> None:
    a = keyring.seal_keyring(_contents(), PASSPHRASE)
    assert keyring.read_kdf_params(a) == (14, 8, 1)
    assert keyring.open_keyring(a, PASSPHRASE) == _contents()
    b = keyring.seal_keyring(_contents(), PASSPHRASE, log2_n=FAST)
    c = keyring.seal_keyring(_contents(), PASSPHRASE, log2_n=FAST)
    assert b[9:37] != c[9:37]  # fresh salt and nonce each time


def test_wrong_passphrase() -> None:
    data = _sealed()
    for wrong in (b"correct horse ", b"", b"Correct horse"):
        with pytest.raises(WrongPassphrase) as info:
            keyring.open_keyring(data, wrong)
        assert str(info.value) == "wrong passphrase"
    assert issubclass(WrongPassphrase, KeyringError)


def test_empty_passphrase_round_trips() -> None:
    data = keyring.seal_keyring(_contents(), b"", log2_n=FAST)
    assert keyring.open_keyring(data, b"") == _contents()


@settings(max_examples=40, deadline=None)
@given(
    spaces=st.dictionaries(
        st.binary(min_size=32, max_size=32),
        st.dictionaries(st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32), min_size=1, max_size=4),
        max_size=5,
    ),
    passphrase=st.binary(max_size=64),
)
def test_round_trip_property(spaces: dict[bytes, dict[int, bytes]], passphrase: bytes) -> None:
    contents = keyring.contents_from_identity(_IDENTITY)
    for space_id, epochs in spaces.items():
        contents = keyring.with_space_keys(contents, space_id, epochs)
    opened = keyring.open_keyring(keyring.seal_keyring(contents, passphrase, log2_n=1), passphrase)
    assert opened == contents


def test_sealing_is_deterministic_whatever_the_insertion_order() -> None:
    base = keyring.contents_from_identity(_identity())
    one = keyring.with_space_keys(keyring.with_space_keys(base, SPACE_A, {1: b"a" * 32, 0: b"b" * 32}), SPACE_B, {})
    two = keyring.with_space_keys(keyring.with_space_keys(base, SPACE_B, {}), SPACE_A, {0: b"b" * 32})
    two = keyring.with_space_keys(two, SPACE_A, {1: b"a" * 32})
    # Even contents built with unsorted maps directly seal to the same bytes.
    three = msgspec.structs.replace(base, spaces={SPACE_A: {1: b"a" * 32, 0: b"b" * 32}, SPACE_B: {}})
    sealed = {keyring.seal_keyring(c, PASSPHRASE, log2_n=FAST, salt=SALT, nonce=NONCE) for c in (one, two, three)}
    assert len(sealed) == 1


def test_space_key_helpers() -> None:
    contents = _contents()
    with pytest.raises(ValueError, match="different key"):
        keyring.with_space_keys(contents, SPACE_A, {0: bytes([0x99]) * 32})
    same = keyring.with_space_keys(contents, SPACE_A, {0: bytes([0x10]) * 32})  # idempotent
    assert same == contents
    with pytest.raises(ValueError):
        keyring.with_space_keys(contents, bytes(31), {0: bytes(32)})
    with pytest.raises(ValueError):
        keyring.with_space_keys(contents, SPACE_A, {2: bytes(31)})
    with pytest.raises(ValueError):
        keyring.with_space_keys(contents, SPACE_A, {-1: bytes(32)})
    forgotten = keyring.without_space(contents, SPACE_A)
    assert set(forgotten.spaces) == {SPACE_B} and set(contents.spaces) == {SPACE_A, SPACE_B}


def test_repr_hides_secrets() -> None:
    contents = _contents()
    text = repr(contents)
    for secret in (contents.account_seed, contents.device_seed, bytes([0x10]) * 32):
        assert secret.hex() not in text and repr(secret) not in text


def test_seal_rejects_bad_arguments() -> None:
    for kwargs in ({"salt": bytes(15)}, {"nonce": bytes(13)}, {"log2_n": 0}, {"log2_n": 23}, {"r": 0}, {"p": 17}):
        with pytest.raises(ValueError):
            _sealed(**kwargs)
    with pytest.raises(ValueError, match="cost"):
        _sealed(log2_n=22, r=32)  # 16 GiB of memory


# ---------------------------------------------------------------------------------------------------- damage
def test_every_bit_flip_is_reported_as_damage() -> None:
    data = _sealed()
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(KeyringCorrupt):
            keyring.open_keyring(bytes(flipped), PASSPHRASE)


def test_truncation_and_appended_bytes_are_damage() -> None:
    data = _sealed()
    for n in range(len(data)):
        with pytest.raises(KeyringCorrupt):
            keyring.open_keyring(data[:n], PASSPHRASE)
    for extra in (b"\x00", b"\x00" * 32, data):
        with pytest.raises(KeyringCorrupt):
            keyring.open_keyring(data + extra, PASSPHRASE)
    with pytest.raises(KeyringCorrupt, match="too large"):
        keyring.open_keyring(bytes(keyring.MAX_FILE_LEN + 1), PASSPHRASE)


@pytest.mark.parametrize(
    "offset, value, fragment",
    [(0, ord("X"), "magic"), (4, 2, "version"), (5, 2, "KDF id"), (6, 0, "out of range"), (7, 0, "out of range")],
)
def test_header_fields_are_checked_even_with_a_valid_checksum(offset: int, value: int, fragment: str) -> None:
    data = bytearray(_sealed()[:-32])
    data[offset] = value
    with pytest.raises(KeyringCorrupt, match=fragment):
        keyring.open_keyring(_with_checksum(bytes(data)), PASSPHRASE)


@pytest.mark.parametrize("log2_n, r, p", [(60, 8, 1), (255, 255, 255), (23, 1, 1), (22, 32, 1), (20, 8, 16)])
def test_costly_header_is_rejected_without_running_scrypt(
    monkeypatch: pytest.MonkeyPatch, log2_n: int, r: int, p: int
) -> None:
    data = bytearray(_sealed()[:-32])
    data[6], data[7], data[8] = log2_n, r, p

    def no_scrypt(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("scrypt must not run for this header")

    monkeypatch.setattr(crypto, "scrypt", no_scrypt)
    crafted = _with_checksum(bytes(data))
    with pytest.raises(KeyringCorrupt):
        keyring.open_keyring(crafted, PASSPHRASE)
    with pytest.raises(KeyringCorrupt):
        keyring.read_kdf_params(crafted)


def test_damaged_file_is_rejected_without_running_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(_sealed())
    data[50] ^= 1
    monkeypatch.setattr(crypto, "scrypt", lambda *a, **k: pytest.fail("scrypt ran on a damaged file"))
    with pytest.raises(KeyringCorrupt, match="checksum"):
        keyring.open_keyring(bytes(data), PASSPHRASE)


def test_deliberate_ciphertext_change_with_fixed_checksum_fails_authentication() -> None:
    # The checksum is not a MAC: someone who rewrites it gets past it, and AES-GCM then refuses the bytes.
    data = bytearray(_sealed()[:-32])
    data[60] ^= 1
    with pytest.raises(WrongPassphrase):
        keyring.open_keyring(_with_checksum(bytes(data)), PASSPHRASE)


def test_ciphertext_length_field_is_checked() -> None:
    data = bytearray(_sealed()[:-32])
    for ct_len in (0, 15, len(data) - 41 + 1, 0xFFFFFFFF):
        data[37:41] = struct.pack(">I", ct_len)
        with pytest.raises(KeyringCorrupt, match="length"):
            keyring.open_keyring(_with_checksum(bytes(data)), PASSPHRASE)


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"\xc1",
        encoding.encode([b"x" * 32]),
        encoding.encode([bytes(32), bytes(32), b"", "n", {}, 1]),  # an extra field
        encoding.encode([bytes(31), bytes(32), b"", "n", {}]),
        encoding.encode([bytes(32), bytes(32), b"", "n", {bytes(31): {}}]),
        encoding.encode([bytes(32), bytes(32), b"", "n", {bytes(32): {-1: bytes(32)}}]),
        encoding.encode([bytes(32), bytes(32), b"", "n", {bytes(32): {0: bytes(33)}}]),
        b"\x95\xc4\x20" + bytes(32) + b"\xc4\x20" + bytes(32) + b"\xc4\x00\xa2\xff\xfe\x80",  # invalid UTF-8
    ],
)
def test_malformed_contents_are_corrupt(plaintext: bytes) -> None:
    with pytest.raises(KeyringCorrupt):
        keyring.open_keyring(_craft(plaintext), PASSPHRASE)


def test_contents_whose_certificate_does_not_fit_are_corrupt() -> None:
    good = _contents()
    for bad in (
        msgspec.structs.replace(good, device_seed=bytes(32)),
        msgspec.structs.replace(good, account_seed=bytes(32)),
        msgspec.structs.replace(good, device_name="other"),
        msgspec.structs.replace(good, device_cert=good.device_cert[:-1] + b"\x00"),
    ):
        data = keyring.seal_keyring(bad, PASSPHRASE, log2_n=FAST)
        with pytest.raises(KeyringCorrupt, match="inconsistent"):
            keyring.open_keyring(data, PASSPHRASE)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_keyring_corrupt(data: bytes) -> None:
    with pytest.raises(KeyringCorrupt):
        keyring.open_keyring(keyring.MAGIC + b"\x01\x01" + data, PASSPHRASE)
    with pytest.raises(KeyringCorrupt):
        keyring.open_keyring(data, PASSPHRASE)


# ---------------------------------------------------------------------------------------------------- vector
def _compute_vector() -> dict[str, object]:
    contents = _contents()
    data = _sealed()
    return {
        "description": "keyring file (master.keys) sealed with fixed seeds, salt and nonce at the test-only log2 N = 4",
        "inputs": {
            "phrase": PHRASE,
            "device_seed_hex": DEVICE_SEED.hex(),
            "device_name": DEVICE_NAME,
            "created_us": CREATED_US,
            "spaces": {
                sid.hex(): {str(epoch): key.hex() for epoch, key in epochs.items()}
                for sid, epochs in contents.spaces.items()
            },
            "passphrase_utf8": PASSPHRASE.decode(),
            "log2_n": FAST,
            "r": 8,
            "p": 1,
            "salt_hex": SALT.hex(),
            "nonce_hex": NONCE.hex(),
        },
        "expected": {
            "account_seed_hex": contents.account_seed.hex(),
            "device_cert_hex": contents.device_cert.hex(),
            "plaintext_hex": encoding.encode(contents).hex(),
            "scrypt_key_hex": crypto.scrypt(PASSPHRASE, SALT, FAST, 8, 1).hex(),
            "keyring_hex": data.hex(),
            "checksum_hex": data[-32:].hex(),
        },
    }


def test_keyring_vector() -> None:
    computed = _compute_vector()
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        VECTORS.parent.mkdir(parents=True, exist_ok=True)
        VECTORS.write_text(json.dumps(computed, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return
    stored = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert stored == computed
    opened = keyring.open_keyring(bytes.fromhex(stored["expected"]["keyring_hex"]), PASSPHRASE)
    assert opened.account_seed.hex() == stored["expected"]["account_seed_hex"]
    assert opened.identity().device_name == stored["inputs"]["device_name"]
