"""Signed heads: a device's signed statement "at counter N my heads of space S were H" (docs/protocol.md 70.9).

A provider could keep back changes from some members without breaking any signature: it just never offers them.
Each device therefore signs its own heads after every sync round, with a counter that only grows, and publishes
the record to its providers. Another device that receives the record from a provider learns that every change it
names exists — and that an honest provider, which stores a record only once it holds every change the record names,
can deliver them. A provider that serves the record but not the changes, or serves an older record than it served
before, is caught (:mod:`anysyncfs.net.withholding` draws the conclusions).

Layout: the common signed-record layout (:mod:`encoding`) with tag ``H``, version 1 and exactly one signature, by the
*device* key named in the embedded device certificate, over ``SIGNED_HEADS_CONTEXT || bytes[0 : 6+L]`` (its own
context: a device key signs nothing else in this layout, and session transcripts use another context).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from ..errors import DecodeError, IdMismatch
from . import crypto, encoding, keys

FORMAT_SIGNED_HEADS = ord("H")
SIGNED_HEADS_VERSION = 1
SIGNED_HEADS_CONTEXT = b"anysyncfs signed heads v1\x00"
MAX_HEADS = 64  # a device with more heads signs the 64 lowest IDs (select_heads)
MAX_COUNTER = 2**63 - 1
MAX_DEVICES_PER_SPACE = 256  # records (one per device) a provider keeps and serves per space
# The longest device certificate: prefix, body bound, signature count and one signature.
MAX_DEVICE_CERT_LEN = encoding.PREFIX_LEN + keys.DEVICE_CERT_MAX_BODY + 1 + crypto.SIGNATURE_LEN  # 327
# Body bound: array header (1), space bin8 (34), certificate bin16 (3 + 327), counter and time as uint64 (9 + 9),
# heads array16 header (3) and 64 bin8 IDs (64 * 34).
MAX_BODY = 1 + 34 + 3 + MAX_DEVICE_CERT_LEN + 9 + 9 + 3 + MAX_HEADS * 34  # 2,562
MAX_RECORD_LEN = encoding.PREFIX_LEN + MAX_BODY + 1 + crypto.SIGNATURE_LEN  # 2,633

Id32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class SignedHeadsBody(encoding.Strict, frozen=True):
    """Body of a signed heads record (a msgpack array, in this order)."""

    space: Id32  # the space the heads belong to
    device_cert: Annotated[bytes, msgspec.Meta(max_length=MAX_DEVICE_CERT_LEN)]  # account -> device (10.2)
    counter: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNTER)]  # strictly increasing per device, never reused
    created_us: keys.TimeUs  # when the device signed, µs since the Unix epoch (informational)
    heads: Annotated[list[Id32], msgspec.Meta(max_length=MAX_HEADS)]  # strictly ascending change IDs


@dataclass(frozen=True, slots=True)
class SignedHeads:
    """A verified signed heads record; ``raw`` are the exact bytes that were verified."""

    space: bytes
    account: bytes  # the account that certified the device
    device: bytes  # the device that signed
    counter: int
    created_us: int
    heads: tuple[bytes, ...]
    raw: bytes = field(repr=False)


def select_heads(heads: Iterable[bytes]) -> tuple[bytes, ...]:
    """The heads a device signs: its heads in ascending order, at most :data:`MAX_HEADS` (the lowest IDs)."""
    return tuple(sorted(set(heads))[:MAX_HEADS])


def _check_heads(heads: list[bytes] | tuple[bytes, ...]) -> None:
    if len(heads) > MAX_HEADS:
        raise DecodeError(f"signed heads: {len(heads)} heads exceed the limit of {MAX_HEADS}")
    if any(a >= b for a, b in zip(heads, heads[1:])):
        raise DecodeError("signed heads: heads are not in strictly ascending order")


def sign_heads(identity: keys.Identity, space_id: bytes, counter: int, heads: Iterable[bytes],
               created_us: int) -> bytes:
    """Encode and sign (with the device key) the record of ``heads`` (taken as :func:`select_heads` gives them).

    Raises :class:`DecodeError` for values :func:`parse_signed_heads` would refuse."""
    chosen = select_heads(heads)
    if len(space_id) != 32 or any(len(h) != 32 for h in chosen):
        raise DecodeError("signed heads: space and change IDs are 32 bytes")
    if not 1 <= counter <= MAX_COUNTER:
        raise DecodeError("signed heads: counter out of range")
    if not 0 <= created_us <= 2**63 - 1:
        raise DecodeError("signed heads: time out of range")
    body = encoding.encode(SignedHeadsBody(space_id, identity.device_cert, counter, created_us, list(chosen)))
    prefix = encoding.PREFIX.pack(FORMAT_SIGNED_HEADS, SIGNED_HEADS_VERSION, len(body))
    signature = identity.device.sign(SIGNED_HEADS_CONTEXT + prefix + body)
    return encoding.pack_signed(FORMAT_SIGNED_HEADS, SIGNED_HEADS_VERSION, body, [signature])


def parse_signed_heads(raw: bytes, space_id: bytes | None = None) -> SignedHeads:
    """Strictly decode and verify a signed heads record (of ``space_id`` when given).

    Order: layout and bounds, strict body decoding, head order (:class:`DecodeError`), the device certificate
    (the account's signature, :class:`BadSignature`), then the device's signature (:class:`BadSignature`); a record
    of another space is :class:`IdMismatch`. Membership of the account is for the caller to judge (it needs an ACL).
    """
    if len(raw) > MAX_RECORD_LEN:
        raise DecodeError(f"signed heads: {len(raw)} bytes exceed the limit of {MAX_RECORD_LEN}")
    record = encoding.unpack_signed(
        raw,
        tag=FORMAT_SIGNED_HEADS,
        versions=frozenset({SIGNED_HEADS_VERSION}),
        max_body=MAX_BODY,
        signature_counts=frozenset({1}),
    )
    body = encoding.decode(record.body, SignedHeadsBody, "signed heads")
    _check_heads(body.heads)
    if space_id is not None and body.space != space_id:
        raise IdMismatch("signed heads of another space")
    cert = keys.parse_device_cert(body.device_cert)
    crypto.verify(cert.device, SIGNED_HEADS_CONTEXT + record.signed_part, record.signatures[0])
    return SignedHeads(body.space, cert.account, cert.device, body.counter, body.created_us, tuple(body.heads),
                       record.raw)


def peek_heads(raw: bytes) -> tuple[bytes, ...]:
    """The heads a *stored* record names, decoded strictly but not verified again (it was verified before it was
    stored; used only to decide whether to serve it — every receiver verifies it anyway)."""
    record = encoding.unpack_signed(raw, tag=FORMAT_SIGNED_HEADS, versions=frozenset({SIGNED_HEADS_VERSION}),
                                    max_body=MAX_BODY, signature_counts=frozenset({1}))
    return tuple(encoding.decode(record.body, SignedHeadsBody, "signed heads").heads)


# ---------------------------------------------------------------------------------------------------- judging
WITHHOLDS = "withholds"
ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Finding:
    """What a provider's signed heads prove against it."""

    kind: str  # WITHHOLDS: it served a record naming changes it did not deliver; ROLLBACK: an older record
    device: bytes  # the device whose record proves it
    counter: int  # that record's counter
    previous: int = 0  # ROLLBACK: the higher counter the provider served (or accepted) before
    missing: tuple[bytes, ...] = ()  # WITHHOLDS: the named changes that are still not here


def judge(served: Iterable[SignedHeads], previous: Mapping[bytes, int], known: Container[bytes],
          me: bytes) -> list[Finding]:
    """Findings against one provider after a sync round with it.

    ``served``: the verified records it served before the round (one per device); ``previous``: device -> the
    highest counter it served or accepted before; ``known``: change IDs stored here now (accepted or rejected);
    ``me``: this device (its own record names only changes it made or holds, so only a rollback can show there).
    An honest provider stores a record only once it holds every change the record names, and never forgets a
    change it accepted, so a named change still missing after the round was kept back."""
    findings: list[Finding] = []
    for record in served:
        before = previous.get(record.device, 0)
        if record.counter < before:
            findings.append(Finding(ROLLBACK, record.device, record.counter, previous=before))
        if record.device != me:
            missing = tuple(h for h in record.heads if h not in known)
            if missing:
                findings.append(Finding(WITHHOLDS, record.device, record.counter, missing=missing))
    return findings
