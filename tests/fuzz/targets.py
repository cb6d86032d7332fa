"""Every decoder that reads bytes from outside, as a fuzz target (issue 18, item 4).

A :class:`Target` pairs a decoder with the one domain error it may raise on bad input and with seed inputs that
it accepts. Seeds come from the committed test vectors (every hex string in tests/vectors/*.json that the decoder
accepts) or are built here from the public encoders; a target without a single accepted seed is an error, so the
fuzzer never silently mutates garbage only.

Inputs that are text on the outside (tickets, peer addresses) are fuzzed as their UTF-8 bytes, decoded with
``errors="replace"``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from anysyncfs.core import acl_records, address, address_record, bao, blob, change, encoding, keyring, keys, ops
from anysyncfs.core import reconcile
from anysyncfs.core import ids, signed_heads, space, ticket, vault
from anysyncfs.core.acl_records import Role
from anysyncfs.errors import BadSignature, DecodeError, IntegrityError, KeyringError, ProtocolError, UsageError
from anysyncfs.protocol import frames
from anysyncfs.protocol import messages as m

VECTORS = Path(__file__).resolve().parents[1] / "vectors"


@dataclass
class Target:
    name: str
    decode: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]  # the domain error(s) a bad input may raise; anything else is a bug
    extra_seeds: Callable[[], list[bytes]] = field(default=lambda: [])

    @property
    def seeds(self) -> list[bytes]:
        return _seeds(self.name)


def _hex_strings(node: object) -> Iterator[bytes]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _hex_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _hex_strings(value)
    elif isinstance(node, str) and len(node) >= 8 and len(node) % 2 == 0:
        try:
            yield bytes.fromhex(node)
        except ValueError:
            pass
    if isinstance(node, str) and node.startswith(("anysync:", "anysync://")):
        yield node.encode()


@cache
def vector_inputs() -> tuple[bytes, ...]:
    found: list[bytes] = []
    for path in sorted(VECTORS.glob("*.json")):
        found.extend(_hex_strings(json.loads(path.read_text())))
    return tuple(dict.fromkeys(found))  # unique, in a stable order


@cache
def _seeds(name: str) -> list[bytes]:
    target = TARGETS[name]
    accepted = []
    for raw in (*vector_inputs(), *target.extra_seeds()):
        try:
            target.decode(raw)
        except target.allowed as e:  # a body seed still fails its (zeroed) signature, after every other check
            if not (name.endswith("_body") and raw in target.extra_seeds() and isinstance(e, BadSignature)):
                continue
        except Exception:  # noqa: BLE001 - a seed is only what the decoder accepts
            continue
        accepted.append(raw)
    if not accepted:
        raise AssertionError(f"fuzz target {name}: no seed input is accepted by its decoder")
    return accepted


# ---------------------------------------------------------------------------------------------- decoders
def _frames(data: bytes) -> None:
    """A stream, fed in two pieces (the split point is the data's first byte), read frame by frame."""
    decoder = frames.FrameDecoder()
    cut = data[0] % (len(data) + 1) if data else 0
    for piece in (data[:cut], data[cut:]):
        decoder.receive_data(piece)
        while decoder.next_frame() is not None:
            pass


_ENVELOPES = (m.Request, m.Response, m.ErrorReply, m.Notify, m.Close, m.Hello, m.Auth)


def _messages(data: bytes) -> None:
    """Every envelope type; the first byte picks which (so one input exercises one decoder deterministically)."""
    if not data:
        raise ProtocolError("empty message")
    m.decode(data[1:], _ENVELOPES[data[0] % len(_ENVELOPES)])


def _message_seeds() -> list[bytes]:
    space_id, blob_id = bytes(range(32)), bytes(range(32, 64))
    bodies: list[object] = [
        m.Request(1, m.OpenSpace(space_id)), m.Request(2, m.GetChanges(space_id, [blob_id])),
        m.Request(3, m.PutBlob(space_id, blob_id, b"x" * 40)), m.Request(4, m.HasBlobs(space_id, [blob_id] * 3)),
        m.Request(5, m.GetBlobRanges(space_id, blob_id, [(0, 4096), (65536, 10)])),
        m.Request(6, m.Reconcile(space_id, 2, b"\x00\x01")), m.Response(7, m.Ok()),
        m.ErrorReply(8, 2, "not found"), m.Close("bye"),
    ]  # fmt: skip
    out = []
    for body in bodies:
        index = next(i for i, t in enumerate(_ENVELOPES) if isinstance(body, t))
        out.append(bytes([index]) + m.encode(body))  # type: ignore[arg-type]
    return out


def _reconcile_seeds() -> list[bytes]:
    ids = [bytes([i]) * 32 for i in range(40)]
    return [reconcile.Reconciler(reconcile.IdSet(ids[:n]), initiator=True).initiate() for n in (0, 1, 40)]


def _ops_seeds() -> list[bytes]:
    node, entry = b"n" * 16, b"e" * 16
    ref = ops.ChunkRef(b"b" * 32, b"k" * 32, 100)
    return [ops.encode_payload([
        ops.Create(node, entry, b"\x00" * 16, b"name.txt", 1, 0o644, 0, 0, 1),
        ops.Write(node, ops.Content(100, extents=[ops.Extent(0, ref)]), 2), ops.SetAttr(node, mode=0o600),
        ops.Rename(entry, b"\x00" * 16, b"other"), ops.Unlink(entry),
    ])]  # fmt: skip


@cache
def _blob_vector() -> tuple[blob.ChunkRef, bytes]:
    small = json.loads((VECTORS / "blob.json").read_text())["blobs"]["small"]
    ref = ops.ChunkRef(bytes.fromhex(small["blob_id_hex"]), bytes.fromhex(small["chunk_key_hex"]),
                       small["plaintext_len"])  # fmt: skip
    return ref, bytes.fromhex(small["blob_hex"])


def _blob(data: bytes) -> None:
    """An envelope as a provider serves it for a known ChunkRef (the ID check off, so the header and segment
    checks themselves are reached)."""
    ref, _ = _blob_vector()
    blob.open_chunk(data, ref, verify_id=False)


KEYRING_PASSPHRASE = b"correct horse"


def _keyring(data: bytes) -> None:
    log2_n, _r, _p = keyring.read_kdf_params(data)
    if log2_n <= 4:  # costlier parameters are legitimate and bounded; they only slow the fuzzer down
        keyring.open_keyring(data, KEYRING_PASSPHRASE)


def _keyring_contents(data: bytes) -> None:
    keyring.identity_from_contents(keys.decode_strict(data, keyring.KeyringContents, "keyring contents"))


def _vault_contents(data: bytes) -> None:
    vault.check_contents(keys.decode_strict(data, vault.VaultContents, "vault contents"))


def _bao_slice(data: bytes) -> None:
    """A slice for the range [0, 20000) of the vector blob whose root is first in the data."""
    if len(data) < 32:
        raise DecodeError("no root")
    bao.decode_slice(data[:32], data[32:], [(0, 20000)])


def _bao_seeds() -> list[bytes]:
    content = bytes(i % 251 for i in range(50_000))
    root, nodes = bao.outboard_nodes(content)
    want = bao.wanted(len(content), [(0, 20000)])
    return [root + bao.encode_slice(lambda at, size: content[at : at + size], nodes, len(content), want)]


def _ticket(data: bytes) -> None:
    """The version byte and body of a ticket, sealed with a correct checksum so mutations reach the body decoder
    (a damaged text is refused by its checksum, which the ``ticket_text`` target covers)."""
    ticket.parse_ticket(ticket.PREFIX + ids.b32(data + ticket._checksum(data)))


def _ticket_seeds() -> list[bytes]:
    peer = address.parse_address(f"anysync://{ids.device_text(bytes(range(32)))}@192.0.2.7:7733")
    text = ticket.encode_ticket(ticket.Ticket(bytes(range(32)), Role.WRITER, b"s" * 32, 0, (peer,)))
    payload = text[len(ticket.PREFIX):].upper()
    raw = base64.b32decode(payload + "=" * (-len(payload) % 8))
    return [raw[: -ticket.CHECKSUM_LEN]]


def _ticket_text_seeds() -> list[bytes]:
    data = _ticket_seeds()[0]
    return [(ticket.PREFIX + ids.b32(data + ticket._checksum(data))).encode()]


def _text(parse: Callable[[str], object]) -> Callable[[bytes], object]:
    return lambda data: parse(data.decode("utf-8", errors="replace"))


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("frames", _frames, (ProtocolError,),
           lambda: [frames.encode_frame(frames.FrameType.CLOSE, m.encode(m.Close("bye")))]),
    Target("messages", _messages, (ProtocolError,), _message_seeds),
    Target("reconcile", reconcile.decode_message, (ProtocolError,), _reconcile_seeds),
    Target("change", change.parse_change, (IntegrityError,)),
    Target("payload", ops.decode_payload, (DecodeError,), _ops_seeds),
    Target("acl_record", acl_records.parse_record, (IntegrityError,)),
    Target("space_header", space.parse_space_header, (IntegrityError,)),
    Target("device_cert", keys.parse_device_cert, (IntegrityError,)),
    Target("signed_heads", signed_heads.parse_signed_heads, (IntegrityError,)),
    Target("address_record", address_record.parse_address_record, (IntegrityError,)),
    Target("vault_record", vault.parse_vault_record, (IntegrityError,)),
    Target("vault_contents", _vault_contents, (DecodeError,)),
    Target("keyring", _keyring, (KeyringError,)),
    Target("keyring_contents", _keyring_contents, (IntegrityError, KeyringError)),
    Target("blob", _blob, (IntegrityError,)),
    Target("bao_slice", _bao_slice, (IntegrityError,), _bao_seeds),
    Target("ticket", _ticket, (UsageError, DecodeError), _ticket_seeds),
    Target("ticket_text", _text(ticket.parse_ticket), (UsageError, DecodeError), _ticket_text_seeds),
    Target("peer_address", _text(address.parse_address), (UsageError,)),
)}  # fmt: skip



def _signed_body(outer: Target) -> Target:
    """The body of a signed record (encoding.unpack_signed layout) fuzzed on its own: every input is wrapped in a
    prefix of the right tag, version and length and followed by as many (wrong) signatures as the seed record
    carries, so mutations reach the strict body and field checks instead of stopping at the length check. The
    signature check that follows them refuses every input (BadSignature): the domain error."""

    @cache
    def layout() -> tuple[int, int, int]:
        raw = outer.seeds[0]
        tag, version, body_len = encoding.PREFIX.unpack_from(raw)
        return tag, version, raw[encoding.PREFIX_LEN + body_len]

    def decode(data: bytes) -> object:
        tag, version, signatures = layout()
        return outer.decode(encoding.PREFIX.pack(tag, version, len(data)) + data + bytes([signatures])
                            + bytes(64) * signatures)  # fmt: skip

    def bodies() -> list[bytes]:
        out = []
        for raw in outer.seeds:
            _tag, _version, body_len = encoding.PREFIX.unpack_from(raw)
            out.append(raw[encoding.PREFIX_LEN : encoding.PREFIX_LEN + body_len])
        return out

    return Target(f"{outer.name}_body", decode, outer.allowed, bodies)


for _outer in ("change", "acl_record", "space_header", "device_cert", "signed_heads", "address_record",
               "vault_record"):  # fmt: skip
    _body_target = _signed_body(TARGETS[_outer])
    TARGETS[_body_target.name] = _body_target

if os.environ.get("ANYSYNCFS_FUZZ_ONLY"):
    TARGETS = {k: v for k, v in TARGETS.items() if k in os.environ["ANYSYNCFS_FUZZ_ONLY"].split(",")}
