"""ACL records: the wire format of one entry of a space's ACL log, and its strict, verifying parser.

An ACL record is a signed record (see :mod:`.encoding`) with tag ``A`` and version 1. Body (one msgpack array)::

    index  field        type         meaning
    0      space_id     bin 32       the space this record belongs to (BLAKE3 of its header)
    1      prev         bin 32       ID of the previous record on the chain; 32 zero bytes for the genesis
    2      author       bin 32       Ed25519 account public key of the author (first signer)
    3      created_us   uint         author's clock, microseconds since the Unix epoch (invite expiry only)
    4      kind         array        [kind tag, fields...], one of the kinds below

Kinds (tag: fields)::

    1 Genesis      header (bin, the signed space header), sealed_key (bin 80: epoch-0 key sealed to the owner)
    2 Invite       invite_public (bin 32), role (1..3), expires_us (uint, 0 = never),
                   sealed_key (bin 0 or 80: the current epoch key sealed to invite_public; empty = no offline join)
    3 Join         invite_id (bin 32), invite_public (bin 32, must equal the invite's), sealed_self (bin 80: the
                   current epoch key sealed to the joiner's own account key)
    4 RoleChange   member (bin 32), role (1..3), last_changes ([bin 32...], strictly ascending, at most 1024: the
                   member's last accepted changes when the role drops below WRITER; empty otherwise)
    5 Remove       member (bin 32), new_epoch (uint >= 1), sealed_keys ([[recipient bin 32, sealed bin 80]...],
                   strictly ascending by recipient), prev_key (bin 48: previous epoch key, AES-256-GCM under
                   derive_key(EPOCH_CHAIN_CONTEXT, new key), nonce = new_epoch as 12-byte big-endian,
                   AAD = space_id), last_changes ([bin 32...], strictly ascending, at most 1024)
    6 RevokeInvite invite_id (bin 32)

Signatures: exactly one, by ``author``; a Join carries two: the joiner's (author) then the invite key's.

:func:`parse_record` checks everything a record can prove on its own (layout, bounds, ID, signatures, genesis
header). Whether a record is allowed by the ACL state it extends is decided by :mod:`.acl_fold`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Union

import msgspec

from ..errors import DecodeError, IdMismatch, IntegrityError
from . import crypto, encoding
from .space import HEADER_MAX_BODY, SpaceHeader, parse_space_header


class Role(IntEnum):
    """Member roles, ordered by power."""

    READER = 1
    WRITER = 2
    ADMIN = 3
    OWNER = 4


RECORD_VERSION = 1
RECORD_MAX_BODY = 1 << 20  # 1 MiB: bounds a removal's recipient list and last-changes list
ZERO_ID = bytes(32)  # ``prev`` of the genesis
SEALED_KEY_LEN = crypto.KEY_LEN + crypto.SEAL_OVERHEAD  # 80: a 32-byte epoch key in a NaCl sealed box
WRAPPED_KEY_LEN = crypto.KEY_LEN + crypto.TAG_LEN  # 48: a 32-byte epoch key under AES-256-GCM
MAX_LAST_CHANGES = 1024
MAX_SEALED_KEYS = 8000  # 8000 * ~117 B stays under RECORD_MAX_BODY
HEADER_MAX_LEN = encoding.PREFIX_LEN + HEADER_MAX_BODY + 1 + crypto.SIGNATURE_LEN
EPOCH_CHAIN_CONTEXT = "anysyncfs 2026 epoch chain v1"  # derive_key context for a removal's prev_key

_I64 = 2**63 - 1  # msgspec bounds are int64
Id32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Micros = Annotated[int, msgspec.Meta(ge=0, le=_I64)]
GrantableRole = Annotated[int, msgspec.Meta(ge=int(Role.READER), le=int(Role.ADMIN))]  # nobody grants OWNER
SealedKey = Annotated[bytes, msgspec.Meta(min_length=SEALED_KEY_LEN, max_length=SEALED_KEY_LEN)]
MaybeSealedKey = Annotated[bytes, msgspec.Meta(max_length=SEALED_KEY_LEN)]  # 0 or 80, checked in parse
WrappedKey = Annotated[bytes, msgspec.Meta(min_length=WRAPPED_KEY_LEN, max_length=WRAPPED_KEY_LEN)]
HeaderBytes = Annotated[bytes, msgspec.Meta(max_length=HEADER_MAX_LEN)]
Epoch = Annotated[int, msgspec.Meta(ge=1, le=0xFFFFFFFF)]  # as a change header's epoch field


class Genesis(encoding.Strict, tag=1):
    """Root of the chain: the signed space header and the epoch-0 key sealed to the owner."""

    header: HeaderBytes
    sealed_key: SealedKey


class Invite(encoding.Strict, tag=2):
    """A single-use invitation for whoever holds the secret of ``invite_public``."""

    invite_public: Id32
    role: GrantableRole
    expires_us: Micros  # 0 = never; compared with the Join's created_us
    sealed_key: MaybeSealedKey  # empty when the inviter does not allow joins without an admin online


class Join(encoding.Strict, tag=3):
    """The joiner (author) takes up an invite; co-signed by the invite key."""

    invite_id: Id32
    invite_public: Id32  # repeated from the Invite so the second signature verifies without the chain
    sealed_self: SealedKey


class RoleChange(encoding.Strict, tag=4):
    """Sets ``member``'s role. A reduction below WRITER names the member's last accepted changes, as a Remove
    does, so it cannot go on writing by citing an older ACL head."""

    member: Id32
    role: GrantableRole
    last_changes: Annotated[list[Id32], msgspec.Meta(max_length=MAX_LAST_CHANGES)]


class SealedFor(encoding.Strict):
    """One recipient of a new epoch key."""

    recipient: Id32  # an account public key or an outstanding invite public key
    sealed: SealedKey


class Remove(encoding.Strict, tag=5):
    """Removes ``member`` and starts epoch ``new_epoch`` for everyone else."""

    member: Id32
    new_epoch: Epoch
    sealed_keys: Annotated[list[SealedFor], msgspec.Meta(max_length=MAX_SEALED_KEYS)]
    prev_key: WrappedKey
    last_changes: Annotated[list[Id32], msgspec.Meta(max_length=MAX_LAST_CHANGES)]


class RevokeInvite(encoding.Strict, tag=6):
    invite_id: Id32


Kind = Union[Genesis, Invite, Join, RoleChange, Remove, RevokeInvite]


class RecordBody(encoding.Strict):
    """The msgpack body of an ACL record (field order is the wire order)."""

    space_id: Id32
    prev: Id32
    author: Id32
    created_us: Micros
    kind: Kind


@dataclass(frozen=True, slots=True)
class AclRecord:
    """A parsed, self-consistent, signature-verified ACL record. ``raw`` is verbatim; ``id`` = BLAKE3(raw)."""

    id: bytes
    raw: bytes
    space_id: bytes
    prev: bytes
    author: bytes
    created_us: int
    kind: Kind
    header: SpaceHeader | None  # the parsed space header of a Genesis, else None

    def __repr__(self) -> str:
        return f"AclRecord({type(self.kind).__name__}, id={self.id.hex()[:16]}…)"


def signature_count(kind: Kind) -> int:
    return 2 if isinstance(kind, Join) else 1


def _strictly_ascending(items: list[bytes]) -> bool:
    return all(a < b for a, b in zip(items, items[1:]))


def parse_record(raw: bytes, expected_id: bytes | None = None) -> AclRecord:
    """Strictly decode an ACL record and verify its ID, its signatures and its self-contained rules.

    Raises :class:`IdMismatch` (ID differs from ``expected_id``), :class:`DecodeError` (any malformed byte or
    self-inconsistent field), :class:`BadSignature` (a signature does not verify).
    """
    raw = bytes(raw)
    rid = crypto.blake3(raw)
    if expected_id is not None and not crypto.ct_equal(rid, expected_id):
        raise IdMismatch("ACL record does not hash to the expected ID")
    rec = encoding.unpack_signed(
        raw,
        tag=encoding.FORMAT_ACL_RECORD,
        versions=frozenset({RECORD_VERSION}),
        max_body=RECORD_MAX_BODY,
        signature_counts=frozenset({1, 2}),
    )
    body = encoding.decode(rec.body, RecordBody, "ACL record")
    kind = body.kind
    if len(rec.signatures) != signature_count(kind):
        raise DecodeError(f"ACL record: a {type(kind).__name__} carries {signature_count(kind)} signature(s)")
    message = rec.signing_message()
    crypto.verify(body.author, message, rec.signatures[0])
    if isinstance(kind, Join):
        crypto.verify(kind.invite_public, message, rec.signatures[1])
    header = _check_self_contained(body)
    return AclRecord(rid, raw, body.space_id, body.prev, body.author, body.created_us, kind, header)


def _check_self_contained(body: RecordBody) -> SpaceHeader | None:
    """Rules a record satisfies on its own, whatever the chain. Returns the parsed header of a genesis."""
    kind = body.kind
    is_root = body.prev == ZERO_ID
    if isinstance(kind, Genesis) != is_root:
        raise DecodeError("ACL record: a genesis, and only a genesis, has a zero previous record")
    if isinstance(kind, Genesis):
        try:
            header = parse_space_header(kind.header, expected_id=body.space_id)
        except IdMismatch:
            raise DecodeError("ACL genesis: header does not hash to the record's space ID") from None
        except IntegrityError as e:
            raise DecodeError(f"ACL genesis: bad space header ({e})") from None
        if header.owner != body.author:
            raise DecodeError("ACL genesis: author is not the space owner")
        return header
    if isinstance(kind, Invite):
        if len(kind.sealed_key) not in (0, SEALED_KEY_LEN):
            raise DecodeError("ACL invite: sealed key must be empty or 80 bytes")
        if kind.invite_public == body.author:
            raise DecodeError("ACL invite: invite key equals the author's key")
    elif isinstance(kind, Join):
        if kind.invite_public == body.author:
            raise DecodeError("ACL join: invite key equals the joiner's key")
    elif isinstance(kind, Remove):
        if not _strictly_ascending([s.recipient for s in kind.sealed_keys]):
            raise DecodeError("ACL remove: sealed keys not strictly ascending by recipient")
        if not _strictly_ascending(kind.last_changes):
            raise DecodeError("ACL remove: last changes not strictly ascending")
    elif isinstance(kind, RoleChange):
        if not _strictly_ascending(kind.last_changes):
            raise DecodeError("ACL role change: last changes not strictly ascending")
    return None


def encode_record(author: crypto.SigningKey, body: RecordBody, co_signer: crypto.SigningKey | None = None) -> bytes:
    """Encode and sign a record body (``co_signer`` is the invite key of a Join)."""
    if body.author != author.public:
        raise ValueError("body author is not the signing key")
    payload = encoding.encode(body)
    message = encoding.signing_message(encoding.FORMAT_ACL_RECORD, RECORD_VERSION, payload)
    signatures = [author.sign(message)]
    if isinstance(body.kind, Join):
        if co_signer is None or co_signer.public != body.kind.invite_public:
            raise ValueError("a join is co-signed by its invite key")
        signatures.append(co_signer.sign(message))
    return encoding.pack_signed(encoding.FORMAT_ACL_RECORD, RECORD_VERSION, payload, signatures)
