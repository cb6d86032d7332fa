"""Address records: a device's reachable addresses, signed by it and readable by members only (protocol.md 70.13).

A provider (or any member's device) keeps the newest record of each member device of a space and serves them to
members; it cannot read them: the addresses are encrypted (AES-256-GCM) under a key derived from the space's key of
the epoch the record names, so only members holding that epoch key learn where a device listens. The signature (by
the device key named in the embedded device certificate) lets a keyless provider check that a record comes from a
member's device, and lets members trust the addresses; the dialler then pins that device key anyway.

Layout: the common signed-record layout (:mod:`encoding`) with tag ``P``, version 1 and exactly one signature by
the *device* key over ``ADDRESS_RECORD_CONTEXT || bytes[0 : 6+L]``.
Body (msgpack array): space (32 B), device certificate (10.2), counter (µs since the Unix epoch when signed; a
holder keeps the highest per device), epoch (u32), nonce (12 B, random), ciphertext (AES-256-GCM of the
plaintext, tag appended).
Plaintext (msgpack array, ≤ ``MAX_ADDRESSES``): ``[host (text ≤ 253), port (1..65535)]`` pairs.
Key: ``derive_key("anysyncfs address record v1 key", epoch key || space)``.
AAD: ``"anysyncfs address record v1 aad\\0" || space || device key || counter (u64 BE) || epoch (u32 BE)``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from ..errors import AuthenticationFailed, DecodeError, IdMismatch
from . import crypto, encoding, keys
from .signed_heads import MAX_COUNTER, MAX_DEVICE_CERT_LEN

FORMAT_ADDRESS_RECORD = ord("P")
ADDRESS_RECORD_VERSION = 1
ADDRESS_RECORD_CONTEXT = b"anysyncfs address record v1\x00"
KEY_CONTEXT = "anysyncfs address record v1 key"
AAD_CONTEXT = b"anysyncfs address record v1 aad\x00"
NONCE_LEN = 12
MAX_ADDRESSES = 8
MAX_HOST_LEN = 253
MAX_PLAINTEXT = 1 + MAX_ADDRESSES * (1 + 2 + MAX_HOST_LEN + 3)  # 2,073
MAX_CIPHERTEXT = MAX_PLAINTEXT + 16
# Body bound: array header (1), space bin8 (34), certificate bin16 (3 + 327), counter uint64 (9), epoch uint32 (5),
# nonce bin8 (14), ciphertext bin16 (3 + 2,089).
MAX_BODY = 1 + 34 + 3 + MAX_DEVICE_CERT_LEN + 9 + 5 + 2 + NONCE_LEN + 3 + MAX_CIPHERTEXT  # 2,484
MAX_RECORD_LEN = encoding.PREFIX_LEN + MAX_BODY + 1 + crypto.SIGNATURE_LEN
MAX_RECORDS_PER_SPACE = 256  # one per device, as for signed heads

Id32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class AddressRecordBody(encoding.Strict, frozen=True):
    space: Id32
    device_cert: Annotated[bytes, msgspec.Meta(max_length=MAX_DEVICE_CERT_LEN)]
    counter: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNTER)]
    epoch: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
    nonce: Annotated[bytes, msgspec.Meta(min_length=NONCE_LEN, max_length=NONCE_LEN)]
    ciphertext: Annotated[bytes, msgspec.Meta(min_length=16, max_length=MAX_CIPHERTEXT)]


class HostPort(encoding.Strict, frozen=True):
    host: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_HOST_LEN)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


@dataclass(frozen=True, slots=True)
class AddressRecord:
    """A record whose signature verified (its addresses are still sealed); ``raw``: the verified bytes."""

    space: bytes
    account: bytes
    device: bytes
    counter: int
    epoch: int
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    raw: bytes = field(repr=False)


def _key(epoch_key: bytes, space_id: bytes) -> bytes:
    return crypto.derive_key(KEY_CONTEXT, epoch_key + space_id)


def _aad(space_id: bytes, device: bytes, counter: int, epoch: int) -> bytes:
    return AAD_CONTEXT + space_id + device + struct.pack(">QI", counter, epoch)


def sign_addresses(identity: keys.Identity, space_id: bytes, epoch: int, epoch_key: bytes,
                   addresses: Sequence[tuple[str, int]], counter: int, nonce: bytes | None = None) -> bytes:
    """Encrypt ``addresses`` (at most :data:`MAX_ADDRESSES`: the first ones are kept) and sign the record.
    ``nonce``: fresh random bytes unless given (vectors only)."""
    pairs = [HostPort(h, p) for h, p in list(addresses)[:MAX_ADDRESSES]]
    if not 1 <= counter <= MAX_COUNTER:
        raise DecodeError("address record: counter out of range")
    nonce = nonce if nonce is not None else crypto.random_bytes(NONCE_LEN)
    plaintext = encoding.encode(pairs)
    ciphertext = crypto.Aead(_key(epoch_key, space_id)).encrypt(
        nonce, plaintext, _aad(space_id, identity.device.public, counter, epoch))
    body = encoding.encode(AddressRecordBody(space_id, identity.device_cert, counter, epoch, nonce, ciphertext))
    prefix = encoding.PREFIX.pack(FORMAT_ADDRESS_RECORD, ADDRESS_RECORD_VERSION, len(body))
    signature = identity.device.sign(ADDRESS_RECORD_CONTEXT + prefix + body)
    return encoding.pack_signed(FORMAT_ADDRESS_RECORD, ADDRESS_RECORD_VERSION, body, [signature])


def parse_address_record(raw: bytes, space_id: bytes | None = None) -> AddressRecord:
    """Strictly decode and verify (bounds, body, device certificate, device signature; another space:
    :class:`IdMismatch`). Membership of the account is for the caller to judge."""
    if len(raw) > MAX_RECORD_LEN:
        raise DecodeError(f"address record: {len(raw)} bytes exceed the limit of {MAX_RECORD_LEN}")
    record = encoding.unpack_signed(raw, tag=FORMAT_ADDRESS_RECORD, versions=frozenset({ADDRESS_RECORD_VERSION}),
                                    max_body=MAX_BODY, signature_counts=frozenset({1}))
    body = encoding.decode(record.body, AddressRecordBody, "address record")
    if space_id is not None and body.space != space_id:
        raise IdMismatch("address record of another space")
    cert = keys.parse_device_cert(body.device_cert)
    crypto.verify(cert.device, ADDRESS_RECORD_CONTEXT + record.signed_part, record.signatures[0])
    return AddressRecord(body.space, cert.account, cert.device, body.counter, body.epoch, body.nonce,
                         body.ciphertext, record.raw)


def open_addresses(record: AddressRecord, epoch_keys: Mapping[int, bytes]) -> list[tuple[str, int]]:
    """The addresses of a verified record (:class:`AuthenticationFailed` when they do not open: no key for its
    epoch, or bytes not sealed by a member)."""
    key = epoch_keys.get(record.epoch)
    if key is None:
        raise AuthenticationFailed(f"address record of epoch {record.epoch}: no key for it here")
    plaintext = crypto.Aead(_key(key, record.space)).decrypt(
        record.nonce, record.ciphertext, _aad(record.space, record.device, record.counter, record.epoch))
    pairs = encoding.decode(plaintext, list[HostPort], "address record addresses")
    if len(pairs) > MAX_ADDRESSES:
        raise DecodeError("address record: too many addresses")
    return [(p.host, p.port) for p in pairs]
