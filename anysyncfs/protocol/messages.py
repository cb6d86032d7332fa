"""Wire messages (docs/protocol.md, 70.4): msgpack arrays decoded strictly with msgspec, every field bounded.

A frame's type says which envelope its body is (:class:`Hello`, :class:`Auth`, :class:`Request`, ...). Requests,
responses and notifications carry a tagged body: a msgpack array whose first element is the integer tag below,
then the fields in order. Unknown tags, missing or extra fields, wrong types and values over a bound are all
:class:`~anysyncfs.errors.ProtocolError`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, TypeVar, Union

import msgspec

from ..core import bao
from ..core.blob import MAX_BLOB_LEN
from ..core.change import MAX_CHANGE_SIZE
from ..core.signed_heads import MAX_DEVICES_PER_SPACE as MAX_SIGNED_HEADS
from ..core.address_record import MAX_RECORD_LEN as MAX_ADDRESS_RECORD_LEN
from ..core.address_record import MAX_RECORDS_PER_SPACE as MAX_ADDRESS_RECORDS
from ..core.signed_heads import MAX_RECORD_LEN as MAX_SIGNED_HEADS_LEN
from ..core.vault import MAX_RECORD_LEN as MAX_VAULT_LEN
from ..errors import ProtocolError

PROTOCOL_VERSION = 1  # the only version so far; Hello carries a [min, max] range for later ones
NONCE_LEN = 32
MAX_IDS = 4096  # IDs in one request or response list
MAX_BATCH = 256  # changes or ACL records in one message
MAX_BATCH_BYTES = 8 << 20  # total bytes of changes in one response (the responder stops before it)
MAX_RECONCILE_LEN = 1 << 20  # one set-reconciliation message
MAX_TEXT = 256  # error messages, close reasons, agent strings
MAX_CERT_LEN = 4096  # TLS certificate DER
MAX_DEVICE_CERT_LEN = 512  # account-signed device certificate
MAX_ACL_RECORD_LEN = 64 * 1024
MAX_HEADER_LEN = 4096

U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
Id32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Ids = Annotated[list[Id32], msgspec.Meta(max_length=MAX_IDS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Signature = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
ChangeBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_CHANGE_SIZE)]
RecordBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_ACL_RECORD_LEN)]
BlobBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_BLOB_LEN)]
MAX_OUTBOARD_LEN = bao.parent_count(MAX_BLOB_LEN) * bao.NODE_LEN  # 67,520 bytes
MAX_RANGES = 64  # byte ranges in one GetBlobRanges
MAX_SLICE_GROUPS = 256  # 16 KiB groups one BlobSlice may carry (4 MiB): the asker splits larger fetches
MAX_SLICE_LEN = 8 + 2048 * 64 + (MAX_SLICE_GROUPS + 1) * 16 * 1024  # length, proof nodes, groups (+ the last)
Offset = Annotated[int, msgspec.Meta(ge=0, le=MAX_BLOB_LEN)]
RangeLen = Annotated[int, msgspec.Meta(ge=1, le=MAX_BLOB_LEN)]


class _Msg(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """Positional msgpack array; unknown or missing fields rejected."""


class _Tagged(_Msg, frozen=True, tag_field="t"):
    """A request, response or notification body: [tag, fields...]."""


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1  # malformed or not allowed in this state
    NOT_FOUND = 2  # unknown space, change or blob
    FORBIDDEN = 3  # the peer's account may not do this in this space
    INVALID = 4  # the data failed verification or the ACL rules (the sender is misbehaving)
    QUOTA = 5  # the space is over the provider's quota
    INTERNAL = 6  # the responder failed; try another peer
    UNAVAILABLE = 7  # the responder is shutting down or busy


class SetKind(enum.IntEnum):
    ACL = 1  # ACL record IDs of a space
    CHANGES = 2  # accepted change IDs of a space
    BLOBS = 3  # blob IDs a provider holds for a space


# ---------------------------------------------------------------------------------------------- handshake
class Hello(_Msg, frozen=True):
    version_min: U16  # lowest protocol version the sender speaks
    version_max: U16  # highest protocol version the sender speaks
    nonce: Annotated[bytes, msgspec.Meta(min_length=NONCE_LEN, max_length=NONCE_LEN)]  # fresh random bytes
    cert: Annotated[bytes, msgspec.Meta(max_length=MAX_CERT_LEN)]  # the sender's TLS certificate (DER)
    device_cert: Annotated[bytes, msgspec.Meta(max_length=MAX_DEVICE_CERT_LEN)]  # account -> device certificate
    agent: Text  # software name and version, informational


class Auth(_Msg, frozen=True):
    version: U16  # the protocol version the sender computed (both sides must agree)
    signature: Signature  # device-key signature of the transcript (session.transcript)


class Close(_Msg, frozen=True):
    reason: Text


# ---------------------------------------------------------------------------------------------- requests
class OpenSpace(_Tagged, frozen=True, tag=1):
    """Ask for a space's signed header and ACL and subscribe to its head announcements.

    A member needs no proof. Someone about to join sends ``invite_proof``: the signature by an outstanding
    invite's key over :func:`invite_proof_message` — that lets it read the header and ACL (to build its join
    record), nothing else."""

    space: Id32
    invite_proof: Annotated[bytes, msgspec.Meta(max_length=64)] = b""  # empty, or an Ed25519 signature (64 B)
    with_acl: bool = True  # False: SpaceInfo.acl stays empty (a member syncing reconciles ACL IDs by ranges)


class Reconcile(_Tagged, frozen=True, tag=2):
    """One set-reconciliation message (docs/protocol.md 70.3) from the initiator."""

    space: Id32
    set: Annotated[int, msgspec.Meta(ge=1, le=3)]  # SetKind
    message: Annotated[bytes, msgspec.Meta(max_length=MAX_RECONCILE_LEN)]


class GetChanges(_Tagged, frozen=True, tag=3):
    space: Id32
    ids: Ids


class PutChanges(_Tagged, frozen=True, tag=4):
    space: Id32
    changes: Annotated[list[ChangeBytes], msgspec.Meta(max_length=MAX_BATCH)]


class PutAcl(_Tagged, frozen=True, tag=5):
    space: Id32
    records: Annotated[list[RecordBytes], msgspec.Meta(max_length=MAX_BATCH)]


class GetBlob(_Tagged, frozen=True, tag=6):
    space: Id32
    blob: Id32


class PutBlob(_Tagged, frozen=True, tag=7):
    space: Id32
    blob: Id32
    data: BlobBytes
    # The blob's outboard nodes (50.8, no length prefix), or empty: the receiver checks them against the ID (one
    # hash per node) instead of computing them from the bytes; wrong ones are replaced by computed ones.
    outboard: Annotated[bytes, msgspec.Meta(max_length=MAX_OUTBOARD_LEN)] = b""


class HasBlobs(_Tagged, frozen=True, tag=8):
    space: Id32
    ids: Ids


class PushSpace(_Tagged, frozen=True, tag=9):
    """Offer a space the responder does not hold yet: its signed header and ACL (the responder verifies both and
    accepts only if the sender's account is a member)."""

    header: Annotated[bytes, msgspec.Meta(max_length=MAX_HEADER_LEN)]
    acl: Annotated[list[RecordBytes], msgspec.Meta(max_length=4 * MAX_BATCH)]


class GetAcl(_Tagged, frozen=True, tag=10):
    """ACL records by ID (the ones set reconciliation found missing)."""

    space: Id32
    ids: Annotated[list[Id32], msgspec.Meta(max_length=4 * MAX_BATCH)]


class PutHeads(_Tagged, frozen=True, tag=11):
    """Offer a device's signed heads record (docs/protocol.md 70.9); the reply's ``missing`` lists the changes it
    names that the responder does not hold (it then keeps its older record)."""

    space: Id32
    record: Annotated[bytes, msgspec.Meta(max_length=MAX_SIGNED_HEADS_LEN)]


class GetHeads(_Tagged, frozen=True, tag=12):
    """The newest signed heads record of every member device the responder holds for a space."""

    space: Id32


class GetBlobRanges(_Tagged, frozen=True, tag=70):
    """Byte ranges of a blob as a verified-streaming slice (docs/protocol.md 70.12): the 16 KiB groups covering
    them and the last byte, with the proof nodes, answered by :class:`BlobSlice`."""

    space: Id32
    blob: Id32
    ranges: Annotated[list[tuple[Offset, RangeLen]], msgspec.Meta(min_length=1, max_length=MAX_RANGES)]


class PutVault(_Tagged, frozen=True, tag=40):
    """Store an account vault record (docs/protocol.md 25) under its discovery ID; anyone may (the signature and
    the node's vault quotas decide)."""

    record: Annotated[bytes, msgspec.Meta(max_length=MAX_VAULT_LEN)]


class GetVault(_Tagged, frozen=True, tag=41):
    """The vault record held under a discovery ID (NOT_FOUND: none)."""

    discovery_id: Id32


class PutAddresses(_Tagged, frozen=True, tag=50):
    """Offer a device's address record (docs/protocol.md 70.13): signed by the device, sealed for members."""

    space: Id32
    record: Annotated[bytes, msgspec.Meta(max_length=MAX_ADDRESS_RECORD_LEN)]


class GetAddresses(_Tagged, frozen=True, tag=51):
    """The newest address record of every member device the responder holds for a space."""

    space: Id32


RequestBody = Union[OpenSpace, Reconcile, GetChanges, PutChanges, PutAcl, GetBlob, PutBlob, HasBlobs, PushSpace,
                    GetAcl, PutHeads, GetHeads, GetBlobRanges, PutVault, GetVault, PutAddresses, GetAddresses]


# ---------------------------------------------------------------------------------------------- responses
class SpaceInfo(_Tagged, frozen=True, tag=101):
    header: Annotated[bytes, msgspec.Meta(max_length=MAX_HEADER_LEN)]  # the signed space header
    acl: Annotated[list[RecordBytes], msgspec.Meta(max_length=4 * MAX_BATCH)]  # every ACL record, any order
    heads: Ids  # the responder's current heads


class ReconcileReply(_Tagged, frozen=True, tag=102):
    message: Annotated[bytes, msgspec.Meta(max_length=MAX_RECONCILE_LEN)]  # empty: reconciliation is done


class Changes(_Tagged, frozen=True, tag=103):
    changes: Annotated[list[ChangeBytes], msgspec.Meta(max_length=MAX_IDS)]  # in the order asked; may stop early


class Accepted(_Tagged, frozen=True, tag=104):
    accepted: U32  # newly stored and valid
    known: U32  # already held
    missing: Ids  # parents the responder lacks (send them first)


class Blob(_Tagged, frozen=True, tag=105):
    data: BlobBytes


class Ok(_Tagged, frozen=True, tag=106):
    pass


class Bits(_Tagged, frozen=True, tag=107):
    bits: Annotated[bytes, msgspec.Meta(max_length=MAX_IDS // 8)]  # bit i (LSB first) set: the i-th ID is held


class AclRecords(_Tagged, frozen=True, tag=108):
    records: Annotated[list[RecordBytes], msgspec.Meta(max_length=4 * MAX_BATCH)]  # those asked that are held


class HeadsRecords(_Tagged, frozen=True, tag=109):
    records: Annotated[list[Annotated[bytes, msgspec.Meta(max_length=MAX_SIGNED_HEADS_LEN)]],
                       msgspec.Meta(max_length=MAX_SIGNED_HEADS)]  # signed heads records, one per device


class BlobSlice(_Tagged, frozen=True, tag=170):
    slice: Annotated[bytes, msgspec.Meta(max_length=MAX_SLICE_LEN)]  # the slice (50.8), verified by the asker


class VaultRecordReply(_Tagged, frozen=True, tag=140):
    record: Annotated[bytes, msgspec.Meta(max_length=MAX_VAULT_LEN)]  # the newest record held, verbatim


class VaultStored(_Tagged, frozen=True, tag=141):
    stored: bool  # False: the node holds this version or a newer one (it kept that)
    version: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]  # the version held now


class AddressRecords(_Tagged, frozen=True, tag=151):
    records: Annotated[list[Annotated[bytes, msgspec.Meta(max_length=MAX_ADDRESS_RECORD_LEN)]],
                       msgspec.Meta(max_length=MAX_ADDRESS_RECORDS)]  # address records, one per device


ResponseBody = Union[SpaceInfo, ReconcileReply, Changes, Accepted, Blob, Ok, Bits, AclRecords, HeadsRecords,
                     BlobSlice, VaultRecordReply, VaultStored, AddressRecords]


# ---------------------------------------------------------------------------------------------- notifications
class Heads(_Tagged, frozen=True, tag=201):
    """Live push: the sender's heads of a space changed (the receiver reconciles if it lacks any)."""

    space: Id32
    heads: Annotated[list[Id32], msgspec.Meta(max_length=256)]


NotifyBody = Union[Heads]


# ---------------------------------------------------------------------------------------------- envelopes
class Request(_Msg, frozen=True):
    id: U32
    body: RequestBody


class Response(_Msg, frozen=True):
    id: U32
    body: ResponseBody


class ErrorReply(_Msg, frozen=True):
    id: U32
    code: Annotated[int, msgspec.Meta(ge=1, le=255)]
    message: Text


class Notify(_Msg, frozen=True):
    body: NotifyBody


INVITE_PROOF_CONTEXT = b"anysyncfs invite proof v1\x00"


def invite_proof_message(space: bytes, account: bytes, device: bytes) -> bytes:
    """What an invite key signs to let ``account``'s ``device`` read a space's header and ACL before joining."""
    return INVITE_PROOF_CONTEXT + space + account + device


T = TypeVar("T")
_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def encode(msg: _Msg) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes, type_: type[T]) -> T:
    """Strict decoding; every failure is a :class:`ProtocolError` naming the message type."""
    dec = _decoders.get(type_)
    if dec is None:
        dec = _decoders[type_] = msgspec.msgpack.Decoder(type_)
    try:
        return dec.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as e:
        raise ProtocolError(f"malformed {type_.__name__}: {e}") from None


def bits_of(flags: list[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, f in enumerate(flags):
        if f:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def flags_of(bits: bytes, count: int) -> list[bool]:
    if len(bits) != (count + 7) // 8:
        raise ProtocolError(f"bitmap of {len(bits)} bytes for {count} IDs")
    return [bool(bits[i // 8] >> (i % 8) & 1) for i in range(count)]
