"""The account vault (docs/protocol.md 25): an encrypted, signed list of the spaces of an account, so that the
recovery phrase alone brings every space back.

Three keys come from the account seed with HKDF-SHA256, each under its own ``info``:

* the **vault key** (XChaCha20-Poly1305) encrypts the list;
* the **vault signing key** (Ed25519) signs the record. It is *not* the account key, so the provider that
  verifies the signature learns a public key it cannot link to the account (the account's own public key is in
  every ACL and device certificate);
* the **discovery ID**, under which providers keep the record, is HKDF-SHA256 of that signing public key: a
  provider checks that a record is stored under the ID its signer owns, so nobody can take another vault's ID.

The list is a state-based CRDT: one entry per space, the newest by (Lamport counter, device key) wins, and leaving
a space is a tombstone entry. Merging is commutative, associative and idempotent, so two devices that add spaces
offline both keep theirs once their records meet. Each record also carries a **version** (strictly increasing per
discovery ID on a provider) so that a device notices a provider serving an older record than one it has seen.

Pure: no I/O. Randomness (the nonce) is passed in by the caller.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from ..errors import DecodeError, IdMismatch
from . import crypto, encoding
from .address import parse_address

FORMAT_VAULT = ord("V")
VAULT_VERSION = 1
SIGNING_CONTEXT = b"anysyncfs vault record v1\x00"  # the vault signing key signs nothing else
AAD_CONTEXT = b"anysyncfs vault v1\x00"
KEY_INFO = b"anysyncfs vault key v1"
SIGNING_INFO = b"anysyncfs vault signing key v1"
ID_INFO = b"anysyncfs vault id v1"

MAX_ENTRIES = 1024  # spaces (tombstones included) one vault lists
MAX_NAME = 255  # bytes of UTF-8 of a local space name
MAX_PEERS = 16  # peer addresses per space
MAX_ADDRESS = 300  # characters of one peer address
MAX_PINS = 256  # pinned node IDs per space
MAX_PLAINTEXT = 256 * 1024  # bytes of the msgpack list (well above MAX_ENTRIES entries of typical size)
MAX_CIPHERTEXT = MAX_PLAINTEXT + 16
MAX_BODY = MAX_CIPHERTEXT + 128  # the other body fields take < 100 bytes
MAX_RECORD_LEN = encoding.PREFIX_LEN + MAX_BODY + 1 + crypto.SIGNATURE_LEN
MAX_COUNTER = 2**63 - 1

Id32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Counter = Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNTER)]


class VaultBody(encoding.Strict, frozen=True):
    """The signed body of a vault record (what a provider can read)."""

    discovery_id: Id32  # HKDF-SHA256(signer, ID_INFO)
    signer: Id32  # the vault signing public key (derived from the account seed; unlinkable to the account key)
    version: Counter  # strictly increasing per discovery ID
    nonce: Annotated[bytes, msgspec.Meta(min_length=crypto.XNONCE_LEN, max_length=crypto.XNONCE_LEN)]
    ciphertext: Annotated[bytes, msgspec.Meta(min_length=16, max_length=MAX_CIPHERTEXT)]


class VaultEntry(encoding.Strict, frozen=True):
    """One space of the account, as last written by some device (the newest ``(lamport, device)`` wins)."""

    space: Id32  # space ID
    lamport: Counter  # Lamport counter of this write (greater than every counter the writer had seen)
    device: Id32  # device key of the writer (breaks ties between equal counters)
    left: bool  # True: a tombstone; the account left the space (name, peers and pins are empty)
    name: Annotated[str, msgspec.Meta(max_length=MAX_NAME)]  # local name (checked in bytes below)
    peers: Annotated[list[Annotated[str, msgspec.Meta(max_length=MAX_ADDRESS)]], msgspec.Meta(max_length=MAX_PEERS)]
    pins: Annotated[list[Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]],
                    msgspec.Meta(max_length=MAX_PINS)]  # node IDs the user pinned (kept on a restored device)

    def order_key(self) -> tuple[int, bytes, bytes]:
        """Which of two writes of one space wins: counter, then device, then the bytes (total, deterministic)."""
        return (self.lamport, self.device, encoding.encode(self))


class VaultContents(encoding.Strict, frozen=True):
    """The plaintext: every entry, strictly ascending by space ID."""

    entries: Annotated[list[VaultEntry], msgspec.Meta(max_length=MAX_ENTRIES)]

    def live(self) -> list[VaultEntry]:
        """The spaces the account holds (tombstones left out)."""
        return [e for e in self.entries if not e.left]

    def entry(self, space_id: bytes) -> VaultEntry | None:
        return next((e for e in self.entries if e.space == space_id), None)

    def max_lamport(self) -> int:
        return max((e.lamport for e in self.entries), default=0)


EMPTY = VaultContents([])


@dataclass(frozen=True)
class VaultKeys:
    """What the account seed gives for its vault. ``repr`` never shows a secret."""

    key: bytes = field(repr=False)  # XChaCha20-Poly1305 key
    signing: crypto.SigningKey = field(repr=False)
    discovery_id: bytes

    @classmethod
    def from_account_seed(cls, account_seed: bytes) -> VaultKeys:
        if len(account_seed) != crypto.KEY_LEN:
            raise ValueError("an account seed is 32 bytes")
        signing = crypto.SigningKey(crypto.hkdf_sha256(account_seed, SIGNING_INFO))
        return cls(crypto.hkdf_sha256(account_seed, KEY_INFO), signing, discovery_id_of(signing.public))


def discovery_id_of(signer: bytes) -> bytes:
    """The discovery ID a vault signing public key owns."""
    return crypto.hkdf_sha256(signer, ID_INFO)


@dataclass(frozen=True)
class VaultRecord:
    """A parsed record whose signature verified (its plaintext is still sealed)."""

    discovery_id: bytes
    signer: bytes
    version: int
    nonce: bytes
    ciphertext: bytes
    raw: bytes = field(repr=False)


def _aad(discovery_id: bytes, version: int) -> bytes:
    return AAD_CONTEXT + discovery_id + struct.pack(">Q", version)


# ---------------------------------------------------------------------------------------------------- records
def seal_vault(contents: VaultContents, keys: VaultKeys, version: int, nonce: bytes) -> bytes:
    """The signed record of ``contents`` at ``version``. ``nonce``: 24 fresh random bytes (never reused)."""
    check_contents(contents)
    if not 1 <= version <= MAX_COUNTER:
        raise ValueError("vault version out of range")
    plaintext = encoding.encode(contents)
    if len(plaintext) > MAX_PLAINTEXT:
        raise DecodeError(f"the vault would be {len(plaintext)} bytes, more than the limit of {MAX_PLAINTEXT}")
    ciphertext = crypto.xchacha_encrypt(keys.key, nonce, plaintext, _aad(keys.discovery_id, version))
    body = encoding.encode(VaultBody(keys.discovery_id, keys.signing.public, version, nonce, ciphertext))
    prefix = encoding.PREFIX.pack(FORMAT_VAULT, VAULT_VERSION, len(body))
    signature = keys.signing.sign(SIGNING_CONTEXT + prefix + body)
    return encoding.pack_signed(FORMAT_VAULT, VAULT_VERSION, body, [signature])


def parse_vault_record(raw: bytes, expected_id: bytes | None = None) -> VaultRecord:
    """Check a record as a provider can (no keys): bounds, layout, strict body, that the discovery ID is the
    signer's (``DecodeError``), that it is ``expected_id`` (``IdMismatch``), and the signature (``BadSignature``)."""
    if len(raw) > MAX_RECORD_LEN:
        raise DecodeError(f"vault record of {len(raw)} bytes exceeds the limit of {MAX_RECORD_LEN}")
    rec = encoding.unpack_signed(raw, tag=FORMAT_VAULT, versions=frozenset({VAULT_VERSION}), max_body=MAX_BODY,
                                 signature_counts=frozenset({1}))
    body = encoding.decode(rec.body, VaultBody, "vault record")
    if not crypto.ct_equal(discovery_id_of(body.signer), body.discovery_id):
        raise DecodeError("vault record: its discovery ID is not its signer's")
    if expected_id is not None and body.discovery_id != expected_id:
        raise IdMismatch("vault record: stored under another discovery ID")
    crypto.verify(body.signer, SIGNING_CONTEXT + rec.signed_part, rec.signatures[0])
    return VaultRecord(body.discovery_id, body.signer, body.version, body.nonce, body.ciphertext, bytes(raw))


def open_vault(record: VaultRecord, keys: VaultKeys) -> VaultContents:
    """The plaintext of a verified record of this account: ``IdMismatch`` for another vault, then
    ``AuthenticationFailed`` (wrong key, or bytes changed), then strict decoding (``DecodeError``)."""
    if record.discovery_id != keys.discovery_id or record.signer != keys.signing.public:
        raise IdMismatch("that vault belongs to another account")
    plaintext = crypto.xchacha_decrypt(keys.key, record.nonce, record.ciphertext,
                                       _aad(record.discovery_id, record.version))
    if len(plaintext) > MAX_PLAINTEXT:
        raise DecodeError("vault plaintext exceeds its limit")
    contents = encoding.decode(plaintext, VaultContents, "vault contents")
    check_contents(contents)
    return contents


def check_contents(contents: VaultContents) -> None:
    """The rules msgspec bounds do not express; ``DecodeError`` naming the first broken one."""
    if len(contents.entries) > MAX_ENTRIES:
        raise DecodeError(f"vault contents: more than {MAX_ENTRIES} spaces")
    previous = b""
    for e in contents.entries:
        if len(e.peers) > MAX_PEERS or len(e.pins) > MAX_PINS or not 1 <= e.lamport <= MAX_COUNTER:
            raise DecodeError("vault contents: an entry is over its bounds")
        if e.space <= previous:
            raise DecodeError("vault contents: entries are not strictly ascending by space ID")
        previous = e.space
        if len(e.name.encode()) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in e.name):
            raise DecodeError("vault contents: a space name is too long or has control characters")
        if e.left and (e.name or e.peers or e.pins):
            raise DecodeError("vault contents: a tombstone carries a name, peers or pins")
        if not e.left and not e.name:
            raise DecodeError("vault contents: a space without a name")
        for text in e.peers:
            try:
                parse_address(text)
            except Exception:  # noqa: BLE001 - UsageError from the address parser: the vault is malformed
                raise DecodeError("vault contents: a peer address does not parse") from None


# ---------------------------------------------------------------------------------------------------- the CRDT
def merge(*many: VaultContents) -> VaultContents:
    """The join of several vault states: per space, the entry with the greatest ``order_key``."""
    best: dict[bytes, VaultEntry] = {}
    for contents in many:
        for e in contents.entries:
            have = best.get(e.space)
            if have is None or e.order_key() > have.order_key():
                best[e.space] = e
    return VaultContents([best[k] for k in sorted(best)])


def put_entry(contents: VaultContents, device: bytes, space_id: bytes, *, name: str, peers: Sequence[str],
              pins: Iterable[bytes] = ()) -> VaultContents:
    """``contents`` with ``space_id`` (re)written by ``device``: its Lamport counter is one more than any seen.
    Peers and pins beyond the format's bounds are cut (the first ones are kept)."""
    entry = VaultEntry(space_id, contents.max_lamport() + 1, device, False, _fit_name(name),
                       sorted(set(peers))[:MAX_PEERS], sorted(set(pins))[:MAX_PINS])
    return merge(contents, VaultContents([entry]))


def leave_entry(contents: VaultContents, device: bytes, space_id: bytes) -> VaultContents:
    """``contents`` with a tombstone for ``space_id``."""
    entry = VaultEntry(space_id, contents.max_lamport() + 1, device, True, "", [], [])
    return merge(contents, VaultContents([entry]))


def _fit_name(name: str) -> str:
    clean = "".join(c if ord(c) >= 32 and ord(c) != 127 else "?" for c in name) or "?"
    data = clean.encode()[:MAX_NAME]
    return data.decode(errors="ignore") or "?"


def same_entry(a: VaultEntry, space_id: bytes, name: str, peers: Sequence[str], pins: Iterable[bytes]) -> bool:
    """Whether ``a`` already says what a write of these values would (so no new write is needed)."""
    return (a.space == space_id and not a.left and a.name == _fit_name(name)
            and a.peers == sorted(set(peers))[:MAX_PEERS] and a.pins == sorted(set(pins))[:MAX_PINS])
