"""The byte format of the keyring file (``master.keys``): this device's secrets, encrypted under a passphrase.

Pure: bytes in, bytes out. Whoever writes the file does so atomically with mode 0600.

File layout (all integers unsigned big-endian)::

    offset  size  field
    0       4     magic b"ASKR"
    4       1     format version = 1
    5       1     KDF id: 1 = scrypt
    6       1     log2(N) of scrypt (N = 2**log2_n)
    7       1     scrypt r (block size)
    8       1     scrypt p (parallelism)
    9       16    scrypt salt (random per seal)
    25      12    AES-256-GCM nonce (random per seal)
    37      4     ciphertext length C (includes the 16-byte GCM tag)
    41      C     AES-256-GCM(key = scrypt(passphrase, salt, N, r, p, 32 bytes), nonce,
                  plaintext = msgpack KeyringContents, associated data = bytes[0:41])
    41+C    32    checksum = BLAKE3(bytes[0:41+C])

The checksum is not a MAC (anyone can recompute it); it only separates an accidentally damaged file
(:class:`KeyringCorrupt`) from a wrong passphrase (:class:`WrongPassphrase`): with an intact checksum, a GCM tag
failure means the key, hence the passphrase, is wrong. Everything about the bytes (size, magic, version, KDF id,
KDF cost, exact length, checksum) is checked before scrypt runs, so a crafted header cannot make us burn memory.
"""

from __future__ import annotations

import struct
from typing import Annotated

import msgspec

from ..errors import AuthenticationFailed, DecodeError, KeyringCorrupt, KeyringError, WrongPassphrase
from . import crypto, encoding
from .keys import DEVICE_CERT_MAX_BODY, Identity, decode_strict

MAGIC = b"ASKR"
FORMAT_VERSION = 1
KDF_SCRYPT = 1
SALT_LEN = 16
NONCE_LEN = crypto.NONCE_LEN  # 12
CHECKSUM_LEN = crypto.HASH_LEN  # 32
# magic (4s) | version (B) | kdf id (B) | log2_n (B) | r (B) | p (B) | salt (16s) | nonce (12s) | ciphertext len (I)
HEADER = struct.Struct(">4sBBBBB16s12sI")
HEADER_LEN = HEADER.size  # 41
MIN_FILE_LEN = HEADER_LEN + crypto.TAG_LEN + CHECKSUM_LEN  # an empty plaintext still has a tag
MAX_FILE_LEN = 16 * 1024 * 1024

# scrypt defaults (N = 16384, r = 8, p = 1: 16 MiB of memory) and the most a file may ask for. The caps leave
# room to raise the cost later while keeping a hostile header from exhausting memory or time.
DEFAULT_LOG2_N = 14
DEFAULT_R = 8
DEFAULT_P = 1
SCRYPT_MAX_MEMORY = 1 << 30  # bytes; scrypt needs 128 * r * N
SCRYPT_MAX_WORK = 1 << 26  # N * r * p; the default is 1 << 17

SpaceId = Annotated[bytes, msgspec.Meta(min_length=crypto.HASH_LEN, max_length=crypto.HASH_LEN)]
Key32 = Annotated[bytes, msgspec.Meta(min_length=crypto.KEY_LEN, max_length=crypto.KEY_LEN)]
Epoch = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
MAX_DEVICE_CERT = encoding.PREFIX_LEN + DEVICE_CERT_MAX_BODY + 1 + crypto.SIGNATURE_LEN  # one signed cert


class KeyringContents(encoding.Strict, frozen=True):
    """The plaintext of the keyring (a msgpack array, in this order). Never logged: ``repr`` hides the secrets.

    Treat it as immutable: the helpers below return updated copies with sorted maps.
    """

    account_seed: Key32  # Ed25519 seed of the account key (derived from the recovery phrase)
    device_seed: Key32  # Ed25519 seed of this device's key (random)
    device_cert: Annotated[bytes, msgspec.Meta(max_length=MAX_DEVICE_CERT)]  # account -> device certificate
    device_name: str  # this device's name (as in the certificate)
    spaces: dict[SpaceId, dict[Epoch, Key32]]  # space ID -> key epoch -> 32-byte space key of that epoch

    def __repr__(self) -> str:
        return f"KeyringContents(device_name={self.device_name!r}, spaces={len(self.spaces)})"

    def identity(self) -> Identity:
        """The Identity these secrets describe (:class:`KeyringCorrupt` if the certificate does not match)."""
        return identity_from_contents(self)


def contents_from_identity(identity: Identity) -> KeyringContents:
    """Fresh keyring contents for an identity, holding no space keys yet."""
    return KeyringContents(
        identity.account.seed, identity.device.seed, identity.device_cert, identity.device_name, {}
    )


def identity_from_contents(contents: KeyringContents) -> Identity:
    """Rebuild the Identity; :class:`KeyringCorrupt` if the stored certificate does not fit the stored seeds."""
    try:
        return Identity(
            crypto.SigningKey(contents.account_seed),
            crypto.SigningKey(contents.device_seed),
            contents.device_cert,
            contents.device_name,
        )
    except (ValueError, KeyringError) as e:  # Identity checks the certificate against the keys and the name
        raise KeyringCorrupt(f"keyring identity is inconsistent: {e}") from None


def with_space_keys(contents: KeyringContents, space_id: bytes, epoch_keys: dict[int, bytes]) -> KeyringContents:
    """A copy of ``contents`` that also holds ``epoch_keys`` for ``space_id`` (merged with what it held).

    Raises ``ValueError`` for a malformed ID or key, or for a key that differs from one already held for the
    same epoch (epoch keys never change, so that is a caller bug). Maps are kept sorted so that sealing the same
    contents always gives the same plaintext.
    """
    if len(space_id) != crypto.HASH_LEN:
        raise ValueError("a space ID is 32 bytes")
    merged = dict(contents.spaces.get(space_id, {}))
    for epoch, key in epoch_keys.items():
        if not 0 <= epoch <= 2**63 - 1 or len(key) != crypto.KEY_LEN:
            raise ValueError("an epoch key is a non-negative epoch and 32 bytes")
        old = merged.get(epoch)
        if old is not None and not crypto.ct_equal(old, key):
            raise ValueError("a different key is already stored for this space epoch")
        merged[epoch] = bytes(key)
    spaces = dict(contents.spaces)
    spaces[bytes(space_id)] = merged
    return msgspec.structs.replace(contents, spaces=_sorted_spaces(spaces))


def without_space(contents: KeyringContents, space_id: bytes) -> KeyringContents:
    """A copy of ``contents`` without any key of ``space_id`` (forgetting a space)."""
    spaces = {k: v for k, v in contents.spaces.items() if k != space_id}
    return msgspec.structs.replace(contents, spaces=spaces)


def space_keys(contents: KeyringContents, space_id: bytes) -> dict[int, bytes]:
    """The epoch keys held for ``space_id`` (empty when none)."""
    return dict(contents.spaces.get(space_id, {}))


def _sorted_spaces(spaces: dict[bytes, dict[int, bytes]]) -> dict[bytes, dict[int, bytes]]:
    return {sid: dict(sorted(epochs.items())) for sid, epochs in sorted(spaces.items())}


# ---------------------------------------------------------------------------------------------------- sealing
def _check_kdf_params(log2_n: int, r: int, p: int) -> None:
    """Bounds on the scrypt cost a file may ask for (raises DecodeError)."""
    in_range = 1 <= log2_n <= crypto.SCRYPT_MAX_LOG2_N and 1 <= r <= crypto.SCRYPT_MAX_R
    if not (in_range and 1 <= p <= crypto.SCRYPT_MAX_P):
        raise DecodeError(f"scrypt parameters out of range (log2 N={log2_n}, r={r}, p={p})")
    if 128 * r * (1 << log2_n) > SCRYPT_MAX_MEMORY or (1 << log2_n) * r * p > SCRYPT_MAX_WORK:
        raise DecodeError(f"scrypt cost too high (log2 N={log2_n}, r={r}, p={p})")


def seal_keyring(
    contents: KeyringContents,
    passphrase: bytes,
    *,
    log2_n: int = DEFAULT_LOG2_N,
    r: int = DEFAULT_R,
    p: int = DEFAULT_P,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt ``contents`` under ``passphrase`` into keyring file bytes.

    ``salt`` and ``nonce`` are random unless injected (tests and vectors). A low ``log2_n`` (e.g. 4) is for tests
    only; the caller decides when it applies. Raises ``ValueError`` for bad arguments.
    """
    try:
        _check_kdf_params(log2_n, r, p)
    except DecodeError as e:
        raise ValueError(str(e)) from None
    salt = crypto.random_bytes(SALT_LEN) if salt is None else bytes(salt)
    nonce = crypto.random_bytes(NONCE_LEN) if nonce is None else bytes(nonce)
    if len(salt) != SALT_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("keyring salt is 16 bytes and nonce 12 bytes")
    canonical = msgspec.structs.replace(contents, spaces=_sorted_spaces(contents.spaces))
    plaintext = encoding.encode(canonical)
    ciphertext_len = len(plaintext) + crypto.TAG_LEN
    if HEADER_LEN + ciphertext_len + CHECKSUM_LEN > MAX_FILE_LEN:
        raise ValueError("keyring contents too large")
    header = HEADER.pack(MAGIC, FORMAT_VERSION, KDF_SCRYPT, log2_n, r, p, salt, nonce, ciphertext_len)
    key = crypto.scrypt(passphrase, salt, log2_n, r, p)
    ciphertext = crypto.Aead(key).encrypt(nonce, plaintext, header)
    body = header + ciphertext
    return body + crypto.blake3(body)


def _parse_header(data: bytes) -> tuple[int, int, int, bytes, bytes, int]:
    """Check everything about the bytes that needs no key; return (log2_n, r, p, salt, nonce, ciphertext_len).

    Raises :class:`KeyringCorrupt`.
    """
    if len(data) > MAX_FILE_LEN:
        raise KeyringCorrupt(f"keyring file is too large ({len(data)} bytes)")
    if len(data) < MIN_FILE_LEN:
        raise KeyringCorrupt(f"keyring file is truncated ({len(data)} bytes)")
    magic, version, kdf, log2_n, r, p, salt, nonce, ciphertext_len = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise KeyringCorrupt("not a keyring file (bad magic)")
    if version != FORMAT_VERSION:
        raise KeyringCorrupt(f"unsupported keyring format version {version}")
    if kdf != KDF_SCRYPT:
        raise KeyringCorrupt(f"unknown keyring KDF id {kdf}")
    try:
        _check_kdf_params(log2_n, r, p)
    except DecodeError as e:
        raise KeyringCorrupt(f"keyring header: {e}") from None
    if ciphertext_len < crypto.TAG_LEN or len(data) != HEADER_LEN + ciphertext_len + CHECKSUM_LEN:
        raise KeyringCorrupt("keyring file length does not match its header")
    end = HEADER_LEN + ciphertext_len
    if not crypto.ct_equal(crypto.blake3(data[:end]), data[end:]):
        raise KeyringCorrupt("keyring file is damaged (checksum mismatch)")
    return log2_n, r, p, salt, nonce, ciphertext_len


def read_kdf_params(data: bytes) -> tuple[int, int, int]:
    """(log2_n, r, p) of a keyring file, for display; :class:`KeyringCorrupt` if the file is not intact."""
    log2_n, r, p, _salt, _nonce, _len = _parse_header(bytes(data))
    return log2_n, r, p


def open_keyring(data: bytes, passphrase: bytes) -> KeyringContents:
    """Decrypt and strictly decode keyring file bytes.

    Raises :class:`KeyringCorrupt` for anything wrong with the bytes (checked before scrypt runs) or with the
    decrypted contents, and :class:`WrongPassphrase` when only the AES-GCM tag fails.
    """
    data = bytes(data)
    log2_n, r, p, salt, nonce, ciphertext_len = _parse_header(data)
    try:
        key = crypto.scrypt(passphrase, salt, log2_n, r, p)
    except DecodeError as e:  # crypto's own parameter bounds; ours are stricter, so this is a guard
        raise KeyringCorrupt(f"keyring header: {e}") from None
    try:
        plaintext = crypto.Aead(key).decrypt(nonce, data[HEADER_LEN : HEADER_LEN + ciphertext_len], data[:HEADER_LEN])
    except AuthenticationFailed:
        raise WrongPassphrase("wrong passphrase") from None
    try:
        contents = decode_strict(plaintext, KeyringContents, "keyring contents")
    except DecodeError as e:
        raise KeyringCorrupt(str(e)) from None
    identity_from_contents(contents)  # the certificate must fit the seeds
    return contents


__all__ = [
    "KeyringContents",
    "contents_from_identity",
    "identity_from_contents",
    "open_keyring",
    "read_kdf_params",
    "seal_keyring",
    "space_keys",
    "with_space_keys",
    "without_space",
]
