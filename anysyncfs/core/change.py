"""Changes: the signed, encrypted records that make up a space's DAG.

A change is a signed record (see :mod:`anysyncfs.core.encoding`) with format tag ``C``, version 2 and exactly one
Ed25519 signature by the author's *account* key. Its body is a two-element msgpack array::

    body = [header, ciphertext]
    header = [space, parents, author, device, lamport, wall_us, acl_head, epoch, blob_refs]   (msgpack array, inline)
    ciphertext = nonce (12 random bytes) || AES-256-GCM(payload, key, aad = header bytes)
    key = BLAKE3-derive_key("anysyncfs 2026 change payload v1", epoch key)

The header is decoded as ``msgspec.Raw`` first, so its exact bytes (as signed and hashed) serve as the AEAD
associated data: nothing is ever re-encoded to verify or open a change. The change ID is BLAKE3 of the whole
encoded change. The payload is padded to a Padmé bucket inside the AEAD (:mod:`.padding`: payload || 0x80 ||
zeros), so a provider learns only the bucket of its length; after decryption and unpadding it is
:func:`anysyncfs.core.ops.decode_payload` input.

``blob_refs`` lists, in clear, every blob the payload's file contents depend on (see :mod:`.blob_refs`): a keyless
provider learns from it which of a space's blobs are still referenced and collects the others.

Acceptance checks made here: size bound, strict decoding (tag, version, lengths, field types and ranges, parents
and blob refs strictly ascending), ID (when the caller knows which ID it asked for) and signature. The DAG checks (parents known,
Lamport value) live in :mod:`anysyncfs.core.dag`; the ACL checks in :mod:`anysyncfs.core.validate`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

import msgspec

from ..errors import DecodeError, IdMismatch
from . import crypto, encoding, padding
from .encoding import Strict

CHANGE_VERSION = 2  # 2: the header carries blob_refs (version 1 changes are refused)
MAX_CHANGE_SIZE = 4 * 1024 * 1024  # bytes of one encoded change, checked before anything is decoded
MAX_PARENTS = 64  # a merge of more heads than this is split into several changes
MAX_BLOB_REFS = 65_536  # blob IDs one change may list (2.2 MB at most); a file of more chunks is refused (EFBIG)
BLOB_REF_COST = 34  # encoded bytes of one blob ref (bin8 prefix + 32 bytes)
LAMPORT_MAX = 2**63 - 1  # msgspec/msgpack signed 64-bit bound
PAYLOAD_KEY_CONTEXT = "anysyncfs 2026 change payload v1"  # BLAKE3 derive_key context for the payload key
NONCE_LEN = crypto.NONCE_LEN  # 12: random AES-GCM nonce prefixed to the ciphertext
MIN_CIPHERTEXT = crypto.NONCE_LEN + crypto.TAG_LEN  # 28: nonce + tag of an empty payload

# Largest encoded header without blob refs (64 parents, every integer at its widest, the refs array's own 5-byte
# prefix) plus the body array, the ciphertext's bin32 length prefix, nonce, tag, record prefix and signature:
# 2449 bytes. Rounded up, so any payload of at most payload_room(len(blob_refs)) bytes always fits in a change (callers split larger sets of ops over several changes).
_MAX_OVERHEAD = 4096
MAX_PAYLOAD_SIZE = padding.bucket_at_most(MAX_CHANGE_SIZE - _MAX_OVERHEAD) - 1  # padded: <= that bucket (4 128 767)


def payload_room(n_refs: int) -> int:
    """The largest payload a change listing ``n_refs`` blobs can carry: its padded form (a Padmé bucket) and the
    header with the refs must fit in :data:`MAX_CHANGE_SIZE` together."""
    return padding.bucket_at_most(MAX_CHANGE_SIZE - _MAX_OVERHEAD - BLOB_REF_COST * n_refs) - 1

Hash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class ChangeHeader(Strict):
    """The cleartext, signed header of a change (a msgpack array of these nine fields, in this order)."""

    space: Hash  # ID of the space this change belongs to
    parents: Annotated[tuple[Hash, ...], msgspec.Meta(max_length=MAX_PARENTS)]  # strictly ascending change IDs
    author: Hash  # Ed25519 public key of the author's account (the signer)
    device: Hash  # Ed25519 public key of the device that made the change (informational, signed)
    lamport: Annotated[int, msgspec.Meta(ge=1, le=LAMPORT_MAX)]  # 1 + max(parents' lamport), 1 without parents
    wall_us: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # author's wall clock, µs since the epoch
    acl_head: Hash  # ID of the ACL record the author's write permission is checked at
    epoch: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]  # key epoch whose key encrypts the payload
    # Strictly ascending IDs of every blob the payload's Write contents depend on (manifests and chunks), in clear
    # so that a keyless provider knows which blobs are referenced; receivers check them against the payload.
    blob_refs: Annotated[tuple[Hash, ...], msgspec.Meta(max_length=MAX_BLOB_REFS)]


class _ChangeBody(Strict):
    """The record body: the header kept as raw bytes (the AEAD associated data) and the ciphertext."""

    header: msgspec.Raw
    ciphertext: Annotated[bytes, msgspec.Meta(min_length=MIN_CIPHERTEXT, max_length=MAX_CHANGE_SIZE)]


@dataclass(frozen=True, slots=True)
class Change:
    """A decoded, signature-checked change. ``raw`` is stored and sent verbatim; ``id`` = BLAKE3(raw)."""

    id: bytes
    raw: bytes
    header: ChangeHeader
    header_raw: bytes  # the header's exact encoded bytes (signed, and the AEAD associated data)
    ciphertext: bytes  # nonce || AES-256-GCM ciphertext || tag

    def __repr__(self) -> str:
        return f"Change(id={self.id.hex()[:16]}…, lamport={self.header.lamport}, parents={len(self.header.parents)})"


def payload_key(epoch_key: bytes) -> bytes:
    """The AES-256-GCM key for change payloads of one key epoch."""
    if len(epoch_key) != crypto.KEY_LEN:
        raise ValueError("an epoch key is 32 bytes")
    return crypto.derive_key(PAYLOAD_KEY_CONTEXT, epoch_key)


def strictly_ascending(ids: Iterable[bytes]) -> bool:
    """True when every ID is greater than the one before (sorted, no duplicates)."""
    prev: bytes | None = None
    for cur in ids:
        if prev is not None and cur <= prev:
            return False
        prev = cur
    return True


def _check_len(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


def _assemble(author: crypto.SigningKey, header_raw: bytes, ciphertext: bytes) -> bytes:
    """Body + record prefix + the author's signature. No checks: make_change (and tests) decide what goes in."""
    body = encoding.encode(_ChangeBody(msgspec.Raw(header_raw), ciphertext))
    signature = author.sign(encoding.signing_message(encoding.FORMAT_CHANGE, CHANGE_VERSION, body))
    return encoding.pack_signed(encoding.FORMAT_CHANGE, CHANGE_VERSION, body, [signature])


def make_change(
    author: crypto.SigningKey,
    device_public: bytes,
    space_id: bytes,
    parents: Iterable[bytes],
    lamport: int,
    wall_us: int,
    acl_head: bytes,
    epoch: int,
    epoch_key: bytes,
    payload: bytes,
    nonce: bytes | None = None,
    *,
    blob_refs: Iterable[bytes] = (),
) -> Change:
    """Encrypt ``payload`` and sign a new change. ``parents`` and ``blob_refs`` are sorted and de-duplicated here.

    ``nonce`` is injectable for test vectors only; normal callers leave it random. Invalid arguments (a caller
    bug, never remote data) raise ``ValueError``, as does a payload larger than :data:`MAX_PAYLOAD_SIZE` less
    the bytes of the blob refs.
    """
    _check_len("device public key", device_public, crypto.PUBLIC_KEY_LEN)
    _check_len("space ID", space_id, crypto.HASH_LEN)
    _check_len("ACL head", acl_head, crypto.HASH_LEN)
    parent_ids = tuple(sorted(set(parents)))
    for p in parent_ids:
        _check_len("parent ID", p, crypto.HASH_LEN)
    if len(parent_ids) > MAX_PARENTS:
        raise ValueError(f"a change has at most {MAX_PARENTS} parents, got {len(parent_ids)}")
    if not 1 <= lamport <= LAMPORT_MAX:
        raise ValueError("lamport out of range")
    if not -(2**63) <= wall_us < 2**63:
        raise ValueError("wall_us out of range")
    if not 0 <= epoch <= 0xFFFFFFFF:
        raise ValueError("epoch out of range")
    refs = tuple(sorted(set(blob_refs)))
    for r in refs:
        _check_len("blob ref", r, crypto.HASH_LEN)
    if len(refs) > MAX_BLOB_REFS:
        raise ValueError(f"a change lists at most {MAX_BLOB_REFS} blobs, got {len(refs)}")
    room = payload_room(len(refs))
    if len(payload) > room:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the limit of {room}; split the ops")
    if nonce is None:
        nonce = crypto.random_bytes(NONCE_LEN)
    _check_len("nonce", nonce, NONCE_LEN)

    header = ChangeHeader(space_id, parent_ids, author.public, device_public, lamport, wall_us, acl_head, epoch, refs)
    header_raw = encoding.encode(header)
    ciphertext = nonce + crypto.Aead(payload_key(epoch_key)).encrypt(nonce, padding.pad(payload), header_raw)
    raw = _assemble(author, header_raw, ciphertext)
    return Change(crypto.blake3(raw), raw, header, header_raw, ciphertext)


def parse_change(raw: bytes | bytearray | memoryview, expected_id: bytes | None = None) -> Change:
    """Strictly decode and verify an encoded change.

    Raises :class:`DecodeError` (size, layout, fields), :class:`IdMismatch` (``expected_id`` given and not the
    BLAKE3 of ``raw``) or :class:`BadSignature` (not signed by ``header.author``). The payload stays encrypted.
    """
    if len(raw) > MAX_CHANGE_SIZE:
        raise DecodeError(f"change of {len(raw)} bytes exceeds the limit of {MAX_CHANGE_SIZE}")
    data = bytes(raw)
    change_id = crypto.blake3(data)
    if expected_id is not None and not crypto.ct_equal(change_id, expected_id):
        raise IdMismatch("change bytes do not hash to the requested change ID")
    record = encoding.unpack_signed(
        data,
        tag=encoding.FORMAT_CHANGE,
        versions=frozenset({CHANGE_VERSION}),
        max_body=MAX_CHANGE_SIZE,
        signature_counts=frozenset({1}),
    )
    body = encoding.decode(record.body, _ChangeBody, "change body")
    header_raw = bytes(body.header)
    header = encoding.decode(header_raw, ChangeHeader, "change header")
    if not strictly_ascending(header.parents):
        raise DecodeError("change header: parents are not strictly ascending")
    if not strictly_ascending(header.blob_refs):
        raise DecodeError("change header: blob refs are not strictly ascending")
    crypto.verify(header.author, record.signing_message(), record.signatures[0])
    return Change(change_id, data, header, header_raw, body.ciphertext)


def open_payload(change: Change, epoch_key: bytes) -> bytes:
    """Decrypt and unpad the payload with the key of the change's epoch; :class:`AuthenticationFailed` if it does
    not open, :class:`DecodeError` if its padding is not the canonical form."""
    nonce, sealed = change.ciphertext[:NONCE_LEN], change.ciphertext[NONCE_LEN:]
    padded = crypto.Aead(payload_key(epoch_key)).decrypt(nonce, sealed, change.header_raw)
    try:
        return padding.unpad(padded)
    except DecodeError as e:
        raise DecodeError(f"change payload: {e}") from None


__all__ = [
    "BLOB_REF_COST",
    "CHANGE_VERSION",
    "MAX_BLOB_REFS",
    "MAX_CHANGE_SIZE",
    "MAX_PARENTS",
    "MAX_PAYLOAD_SIZE",
    "payload_room",
    "PAYLOAD_KEY_CONTEXT",
    "Change",
    "ChangeHeader",
    "make_change",
    "open_payload",
    "parse_change",
    "payload_key",
    "strictly_ascending",
]
