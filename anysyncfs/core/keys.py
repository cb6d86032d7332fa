"""Identity keys: the recovery phrase, the account key derived from it, device keys and device certificates.

* The **recovery phrase** is 24 BIP-39 English words (256 bits of entropy plus an 8-bit checksum).
* The **account key** (Ed25519) is a pure function of the phrase, so the phrase alone restores an identity on any
  device: ``seed = BIP-39 seed(phrase, passphrase="")`` (PBKDF2-HMAC-SHA512, 2048 rounds, 64 bytes), then
  ``account seed = BLAKE3 derive_key(ACCOUNT_KEY_CONTEXT, seed)`` (32 bytes).
* A **device key** is a random Ed25519 key per device (the transport identity).
* A **device certificate** is a signed record (see :mod:`encoding`) with tag ``D``, version 1 and exactly one
  signature by the account key, whose body is :class:`DeviceCertBody`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, TypeVar

import msgspec
from mnemonic import Mnemonic

from ..errors import BadSignature, DecodeError, KeyringError
from . import crypto, encoding, ids

PHRASE_WORDS = 24  # 24 words = 256 bits of entropy + 8 checksum bits
PHRASE_ENTROPY_BITS = 256
ACCOUNT_KEY_CONTEXT = "anysyncfs 2026 account key v1"  # BLAKE3 derive_key context: never reuse elsewhere

DEVICE_CERT_VERSION = 1
DEVICE_NAME_MAX = 64  # bytes of UTF-8
# Body = msgpack array of two bin8(32) (2 * 34), a str8 of <= 64 bytes (66), a uint64 (9) and the array header
# (1): 144 bytes at most. A small margin keeps the bound obvious without allowing anything large.
DEVICE_CERT_MAX_BODY = 256

PublicKey = Annotated[bytes, msgspec.Meta(min_length=crypto.PUBLIC_KEY_LEN, max_length=crypto.PUBLIC_KEY_LEN)]
# Microseconds since the Unix epoch; msgspec bounds are int64.
TimeUs = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_T = TypeVar("_T")


@lru_cache(maxsize=1)
def _bip39() -> Mnemonic:
    """The BIP-39 English word list (loaded once; it is a file read inside the package, not user I/O)."""
    return Mnemonic("english")


# ---------------------------------------------------------------------------------------------------- phrase
def generate_phrase() -> str:
    """A fresh 24-word BIP-39 English recovery phrase (256 bits from the OS random source)."""
    return _bip39().to_mnemonic(crypto.random_bytes(PHRASE_ENTROPY_BITS // 8))


def normalize_phrase(text: str) -> str:
    """Canonical form of a typed phrase: lowercase words separated by single spaces, checked word by word.

    Raises :class:`KeyringError` ("invalid recovery phrase: ...") for a wrong word count, a word outside the
    BIP-39 English list, or a bad checksum. Messages name positions, never the words (they are secret).
    """
    words = unicodedata.normalize("NFKD", text).lower().split()
    if len(words) != PHRASE_WORDS:
        raise KeyringError(f"invalid recovery phrase: expected {PHRASE_WORDS} words, got {len(words)}")
    wordlist = _bip39().wordlist
    known = set(wordlist)
    for position, word in enumerate(words, start=1):
        if word not in known:
            raise KeyringError(f"invalid recovery phrase: word {position} is not in the BIP-39 English word list")
    phrase = " ".join(words)
    if not _bip39().check(phrase):
        raise KeyringError("invalid recovery phrase: checksum does not match (a word is wrong or out of order)")
    return phrase


def account_key_from_phrase(phrase: str) -> crypto.SigningKey:
    """The account key of a recovery phrase: the same phrase gives the same key on every device."""
    normalized = normalize_phrase(phrase)
    bip39_seed = Mnemonic.to_seed(normalized, passphrase="")
    return crypto.SigningKey(crypto.derive_key(ACCOUNT_KEY_CONTEXT, bip39_seed))


# ---------------------------------------------------------------------------------------------------- device cert
def decode_strict(data: bytes, type_: type[_T], what: str) -> _T:
    """:func:`encoding.decode`, also turning msgspec's UnicodeDecodeError (invalid UTF-8 in a str field, which
    msgspec does not report as a DecodeError) into :class:`DecodeError`."""
    try:
        return encoding.decode(data, type_, what)
    except UnicodeDecodeError:
        raise DecodeError(f"{what}: invalid UTF-8 in a text field") from None


class DeviceCertBody(encoding.Strict, frozen=True):
    """Body of a device certificate (a msgpack array, in this order)."""

    account: PublicKey  # Ed25519 public key of the account that vouches for the device (it signs the record)
    device: PublicKey  # Ed25519 public key of the device (its transport identity)
    name: str  # human label of the device, 1..64 bytes of UTF-8, no control characters
    created_us: TimeUs  # when the certificate was issued, microseconds since the Unix epoch


@dataclass(frozen=True, slots=True)
class DeviceCert:
    """A verified device certificate. ``raw`` are the exact bytes that were verified; ``id`` is BLAKE3(raw)."""

    account: bytes
    device: bytes
    name: str
    created_us: int
    id: bytes
    raw: bytes = field(repr=False)


def _check_device_name(name: str) -> None:
    """Raise :class:`DecodeError` unless ``name`` is a valid device name (shared by issue and parse)."""
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if not 1 <= size <= DEVICE_NAME_MAX:
        raise DecodeError(f"device name must be 1..{DEVICE_NAME_MAX} bytes of UTF-8, got {size}")
    # Names are shown in terminals and logs: control characters (and lone surrogates) could forge output.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise DecodeError("device name contains control characters")


def issue_device_cert(account: crypto.SigningKey, device_public: bytes, name: str, created_us: int) -> bytes:
    """Encode and sign (with the account key) the certificate of ``device_public``.

    Raises :class:`DecodeError` for an invalid name, key length or time (the same rules :func:`parse_device_cert`
    enforces, so every issued certificate parses).
    """
    if len(device_public) != crypto.PUBLIC_KEY_LEN:
        raise DecodeError("a device public key is 32 bytes")
    if not 0 <= created_us <= 2**63 - 1:
        raise DecodeError("device certificate time out of range")
    _check_device_name(name)
    body = encoding.encode(DeviceCertBody(account.public, bytes(device_public), name, created_us))
    message = encoding.signing_message(encoding.FORMAT_DEVICE_CERT, DEVICE_CERT_VERSION, body)
    return encoding.pack_signed(encoding.FORMAT_DEVICE_CERT, DEVICE_CERT_VERSION, body, [account.sign(message)])


def parse_device_cert(raw: bytes) -> DeviceCert:
    """Strictly decode and verify a device certificate.

    Raises :class:`DecodeError` (layout, bounds, fields) or :class:`BadSignature` (not signed by the account key
    named in the body).
    """
    record = encoding.unpack_signed(
        raw,
        tag=encoding.FORMAT_DEVICE_CERT,
        versions=frozenset({DEVICE_CERT_VERSION}),
        max_body=DEVICE_CERT_MAX_BODY,
        signature_counts=frozenset({1}),
    )
    body = decode_strict(record.body, DeviceCertBody, "device certificate")
    _check_device_name(body.name)
    crypto.verify(body.account, record.signing_message(), record.signatures[0])
    return DeviceCert(body.account, body.device, body.name, body.created_us, record.id, record.raw)


# ---------------------------------------------------------------------------------------------------- identity
@dataclass(frozen=True, slots=True)
class Identity:
    """This device's identity: account key, device key and the certificate binding them.

    Construction checks that ``device_cert`` is a valid certificate of ``device`` by ``account`` with
    ``device_name`` and raises :class:`KeyringError` otherwise, so an Identity is always consistent.
    """

    account: crypto.SigningKey
    device: crypto.SigningKey
    device_cert: bytes = field(repr=False)
    device_name: str

    def __post_init__(self) -> None:
        try:
            cert = parse_device_cert(self.device_cert)
        except (DecodeError, BadSignature) as e:
            raise KeyringError(f"device certificate is invalid: {e}") from None
        if cert.account != self.account.public or cert.device != self.device.public:
            raise KeyringError("device certificate does not belong to these keys")
        if cert.name != self.device_name:
            raise KeyringError("device certificate names another device")

    @classmethod
    def create(
        cls, phrase: str, device_name: str, created_us: int, device_seed: bytes | None = None
    ) -> "Identity":
        """Identity for a (new or restored) device: account key from ``phrase``, a device key from
        ``device_seed`` (random when ``None``; tests inject one) and a fresh certificate.

        Raises :class:`KeyringError` for an invalid phrase, device name or seed.
        """
        account = account_key_from_phrase(phrase)
        if device_seed is None:
            device_seed = crypto.random_bytes(crypto.KEY_LEN)
        if len(device_seed) != crypto.KEY_LEN:
            raise KeyringError("a device seed is 32 bytes")
        device = crypto.SigningKey(device_seed)
        try:
            cert = issue_device_cert(account, device.public, device_name, created_us)
        except DecodeError as e:
            raise KeyringError(f"cannot certify this device: {e}") from None
        return cls(account, device, cert, device_name)

    @property
    def account_id(self) -> bytes:
        return self.account.public

    @property
    def device_id(self) -> bytes:
        return self.device.public

    @property
    def account_text(self) -> str:
        return ids.account_text(self.account.public)

    @property
    def device_text(self) -> str:
        return ids.device_text(self.device.public)
