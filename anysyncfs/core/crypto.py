"""The crypto facade: the only module that imports nacl, cryptography or blake3.

Everything else asks this module for hashing, signing, sealing, AEAD and key derivation, so the choice of
primitives is made (and audited) in one place. All functions take and return ``bytes``; errors are the precise
:mod:`anysyncfs.errors` classes, never library exceptions.
"""

from __future__ import annotations

import hmac
import os

import blake3 as _blake3
import nacl.exceptions as _nacl_exc
import nacl.public as _nacl_public
import nacl.signing as _nacl_signing
from cryptography.exceptions import InvalidTag as _InvalidTag
from cryptography.hazmat.primitives import hashes as _hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as _AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF as _HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt as _Scrypt

from ..errors import AuthenticationFailed, BadSignature, DecodeError

HASH_LEN = 32  # BLAKE3 digest length used for every identifier
KEY_LEN = 32  # symmetric keys (AES-256, BLAKE3 keyed mode) and Ed25519 seeds
PUBLIC_KEY_LEN = 32  # Ed25519 public key
SIGNATURE_LEN = 64  # Ed25519 signature
NONCE_LEN = 12  # AES-GCM nonce
TAG_LEN = 16  # AES-GCM tag
SEAL_OVERHEAD = 48  # NaCl sealed box: ephemeral public key (32) + Poly1305 tag (16)

# Hashes of at least this many bytes use BLAKE3's multithreaded mode (it releases the GIL either way).
_MT_THRESHOLD = 1 << 20


# ---------------------------------------------------------------------------------------------------- hashing
def blake3(data: bytes | bytearray | memoryview) -> bytes:
    """Plain BLAKE3-256 of ``data``."""
    if len(data) >= _MT_THRESHOLD:
        return _blake3.blake3(data, max_threads=_blake3.blake3.AUTO).digest()
    return _blake3.blake3(data).digest()


def blake3_keyed(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """BLAKE3 keyed hash (a MAC / PRF) of ``data`` under a 32-byte key."""
    if len(data) >= _MT_THRESHOLD:
        return _blake3.blake3(data, key=key, max_threads=_blake3.blake3.AUTO).digest()
    return _blake3.blake3(data, key=key).digest()


def derive_key(context: str, material: bytes, length: int = KEY_LEN) -> bytes:
    """BLAKE3 derive_key mode: a subkey of ``material`` bound to a globally unique context string."""
    return _blake3.blake3(material, derive_key_context=context).digest(length)


class Hasher:
    """Incremental BLAKE3, for data that arrives in pieces."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = _blake3.blake3()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


# ---------------------------------------------------------------------------------------------------- secrets
def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def ct_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison for secrets and MACs."""
    return hmac.compare_digest(a, b)


# ---------------------------------------------------------------------------------------------------- Ed25519
class SigningKey:
    """An Ed25519 key pair built from a 32-byte seed. ``repr`` never shows the seed."""

    __slots__ = ("_sk", "seed", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != KEY_LEN:
            raise ValueError("an Ed25519 seed is 32 bytes")
        self._sk = _nacl_signing.SigningKey(seed)
        self.seed = bytes(seed)
        self.public = bytes(self._sk.verify_key)

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(random_bytes(KEY_LEN))

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte signature."""
        return self._sk.sign(message).signature

    def __repr__(self) -> str:
        return f"SigningKey(public={self.public.hex()[:16]}…)"


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is a valid Ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_LEN or len(signature) != SIGNATURE_LEN:
        raise BadSignature("malformed signature or public key")
    try:
        _nacl_signing.VerifyKey(public_key).verify(message, signature)
    except (_nacl_exc.CryptoError, ValueError, TypeError):
        raise BadSignature("signature does not verify") from None


# ---------------------------------------------------------------------------------------------------- sealing
def seal(recipient_signing_public: bytes, plaintext: bytes) -> bytes:
    """NaCl sealed box to the X25519 key derived from an Ed25519 public key (anonymous sender)."""
    try:
        vk = _nacl_signing.VerifyKey(recipient_signing_public)
        pk = vk.to_curve25519_public_key()
    except (_nacl_exc.CryptoError, ValueError, TypeError):
        raise DecodeError("not a valid Ed25519 public key") from None
    return _nacl_public.SealedBox(pk).encrypt(plaintext)


def unseal(recipient: SigningKey, sealed: bytes) -> bytes:
    """Open a sealed box addressed to ``recipient``; :class:`AuthenticationFailed` if it is not for us or altered."""
    box = _nacl_public.SealedBox(recipient._sk.to_curve25519_private_key())
    try:
        return box.decrypt(sealed)
    except (_nacl_exc.CryptoError, ValueError, TypeError):
        raise AuthenticationFailed("sealed box does not open") from None


# ---------------------------------------------------------------------------------------------------- AEAD
class Aead:
    """AES-256-GCM under one key. Reuse one instance for many segments (key setup is not free)."""

    __slots__ = ("_aes",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aes = _AESGCM(key)

    def encrypt(self, nonce: bytes, plaintext: bytes | memoryview, aad: bytes | None) -> bytes:
        """Ciphertext followed by the 16-byte tag."""
        return self._aes.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes | memoryview, aad: bytes | None) -> bytes:
        try:
            return self._aes.decrypt(nonce, ciphertext, aad)
        except _InvalidTag:
            raise AuthenticationFailed("AES-GCM tag does not verify") from None
        except ValueError as e:  # e.g. ciphertext shorter than a tag
            raise AuthenticationFailed(f"AES-GCM input rejected: {e}") from None


XNONCE_LEN = 24  # XChaCha20-Poly1305 nonce: long enough to draw at random for every message


def xchacha_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """XChaCha20-Poly1305 (IETF, libsodium): ciphertext followed by the 16-byte tag."""
    import nacl.bindings as _nacl_bindings

    if len(key) != KEY_LEN or len(nonce) != XNONCE_LEN:
        raise ValueError("XChaCha20-Poly1305 needs a 32-byte key and a 24-byte nonce")
    return _nacl_bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def xchacha_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Open :func:`xchacha_encrypt`; :class:`AuthenticationFailed` when the key, nonce, AAD or bytes differ."""
    import nacl.bindings as _nacl_bindings

    if len(key) != KEY_LEN or len(nonce) != XNONCE_LEN:
        raise ValueError("XChaCha20-Poly1305 needs a 32-byte key and a 24-byte nonce")
    try:
        return _nacl_bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key)
    except (_nacl_exc.CryptoError, ValueError, TypeError):
        raise AuthenticationFailed("XChaCha20-Poly1305 tag does not verify") from None


# ---------------------------------------------------------------------------------------------------- KDF
def hkdf_sha256(material: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    """HKDF-SHA256 (RFC 5869) without salt (a zero salt): a subkey of ``material`` bound to ``info``."""
    return _HKDF(algorithm=_hashes.SHA256(), length=length, salt=None, info=info).derive(material)


SCRYPT_MAX_LOG2_N = 22
SCRYPT_MAX_R = 32
SCRYPT_MAX_P = 16


def scrypt(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int, length: int = KEY_LEN) -> bytes:
    """scrypt with bounded parameters (they may come from a file)."""
    if not (1 <= log2_n <= SCRYPT_MAX_LOG2_N and 1 <= r <= SCRYPT_MAX_R and 1 <= p <= SCRYPT_MAX_P):
        raise DecodeError("scrypt parameters out of range")
    return _Scrypt(salt=salt, length=length, n=1 << log2_n, r=r, p=p).derive(passphrase)


# ---------------------------------------------------------------------------------------------------- sealing (injected randomness)
def seal_with_ephemeral(recipient_signing_public: bytes, plaintext: bytes, ephemeral_secret: bytes) -> bytes:
    """A NaCl sealed box (byte-compatible with :func:`seal`, opened by :func:`unseal`) whose ephemeral X25519
    secret is supplied by the caller instead of drawn here.

    Exists so record builders can take injected randomness and test vectors are reproducible. Security equals
    :func:`seal` only if ``ephemeral_secret`` is 32 fresh random bytes used once.
    Layout (libsodium crypto_box_seal): ephemeral public (32) || crypto_box(plaintext, nonce, recipient, eph),
    nonce = BLAKE2b-192(ephemeral public || recipient public).
    """
    import nacl.bindings as _nacl_bindings
    import nacl.encoding as _nacl_encoding
    import nacl.hash as _nacl_hash

    if len(ephemeral_secret) != KEY_LEN:
        raise ValueError("an ephemeral X25519 secret is 32 bytes")
    try:
        recipient = bytes(_nacl_signing.VerifyKey(recipient_signing_public).to_curve25519_public_key())
    except (_nacl_exc.CryptoError, ValueError, TypeError):
        raise DecodeError("not a valid Ed25519 public key") from None
    eph_secret = _nacl_public.PrivateKey(ephemeral_secret)
    eph_public = bytes(eph_secret.public_key)
    nonce = _nacl_hash.blake2b(eph_public + recipient, digest_size=24, encoder=_nacl_encoding.RawEncoder)
    return eph_public + _nacl_bindings.crypto_box(plaintext, nonce, recipient, bytes(eph_secret))

