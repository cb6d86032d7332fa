"""Tests for anysyncfs.core.change: layout, encryption binding, strict decoding, bit flips, the test vector."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anysyncfs.core import change as ch
from anysyncfs.core import blob_refs, crypto, encoding, ops, padding
from anysyncfs.core.change import (
    BLOB_REF_COST,
    MAX_BLOB_REFS,
    MAX_CHANGE_SIZE,
    MAX_PARENTS,
    MAX_PAYLOAD_SIZE,
    payload_room,
    ChangeHeader,
    make_change,
    open_payload,
    parse_change,
)
from anysyncfs.errors import AuthenticationFailed, BadSignature, DecodeError, IdMismatch

VECTOR_PATH = Path(__file__).resolve().parent.parent / "vectors" / "change.json"

AUTHOR = crypto.SigningKey(bytes.fromhex("11" * 32))
DEVICE = crypto.SigningKey(bytes.fromhex("22" * 32))
SPACE = crypto.blake3(b"test space")
ACL_HEAD = crypto.blake3(b"test acl head")
EPOCH_KEY = bytes(range(32))
PARENTS = [crypto.blake3(b"parent b"), crypto.blake3(b"parent a")]
REFS = [crypto.blake3(b"blob b"), crypto.blake3(b"blob a")]


def small_payload() -> bytes:
    return ops.encode_payload([ops.Unlink(entry=b"\x07" * 16)])


def small_change(**overrides: object) -> ch.Change:
    args: dict[str, object] = dict(
        author=AUTHOR,
        device_public=DEVICE.public,
        space_id=SPACE,
        parents=PARENTS,
        lamport=7,
        wall_us=1_767_225_600_000_000,
        acl_head=ACL_HEAD,
        epoch=2,
        epoch_key=EPOCH_KEY,
        payload=small_payload(),
        nonce=bytes(12),
    )
    args.update(overrides)
    return make_change(**args)  # type: ignore[arg-type]


def signed_with_header(header: object, ciphertext: bytes = bytes(40), signer: crypto.SigningKey = AUTHOR) -> bytes:
    """A correctly signed change around an arbitrary header value: isolates the decoder's own checks."""
    return ch._assemble(signer, encoding.encode(header), ciphertext)


def valid_header(**overrides: object) -> ChangeHeader:
    fields: dict[str, object] = dict(
        space=SPACE,
        parents=tuple(sorted(PARENTS)),
        author=AUTHOR.public,
        device=DEVICE.public,
        lamport=7,
        wall_us=5,
        acl_head=ACL_HEAD,
        epoch=0,
        blob_refs=(),
    )
    fields.update(overrides)
    return ChangeHeader(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- round trip
def test_round_trip_and_fields() -> None:
    c = small_change()
    assert c.id == crypto.blake3(c.raw)
    parsed = parse_change(c.raw, c.id)
    assert parsed == c
    assert parse_change(bytearray(c.raw)) == c
    h = parsed.header
    assert h.space == SPACE
    assert h.parents == tuple(sorted(PARENTS))
    assert h.author == AUTHOR.public and h.device == DEVICE.public
    assert (h.lamport, h.wall_us, h.acl_head, h.epoch) == (7, 1_767_225_600_000_000, ACL_HEAD, 2)
    assert h.blob_refs == ()
    assert ops.decode_payload(open_payload(parsed, EPOCH_KEY)) == [ops.Unlink(entry=b"\x07" * 16)]
    # The layout: tag, version, one signature at the very end, header bytes verbatim inside the record.
    assert c.raw[0] == ord("C") and c.raw[1] == 2
    assert c.raw[-65] == 1
    assert c.header_raw in c.raw and c.header_raw == encoding.encode(h)
    assert c.ciphertext[:12] == bytes(12)
    assert 250 < len(c.raw) < 400  # small enough for the exhaustive bit-flip test below


def test_parents_are_sorted_and_deduplicated() -> None:
    c = small_change(parents=PARENTS + PARENTS[:1])
    assert c.header.parents == tuple(sorted(PARENTS))
    assert small_change(parents=[]).header.parents == ()


def test_blob_refs_are_sorted_deduplicated_and_signed() -> None:
    c = small_change(blob_refs=REFS + REFS[:1])
    assert c.header.blob_refs == tuple(sorted(REFS))
    parsed = parse_change(c.raw, c.id)
    assert parsed.header.blob_refs == tuple(sorted(REFS))
    # The refs are in the header, so in the AEAD associated data: the payload does not open under other refs.
    moved = parse_change(signed_with_header(valid_header(wall_us=c.header.wall_us, epoch=2, parents=c.header.parents,
                                                         lamport=7, blob_refs=tuple(sorted(REFS))[:1]), c.ciphertext))
    with pytest.raises(AuthenticationFailed):
        open_payload(moved, EPOCH_KEY)
    assert open_payload(parsed, EPOCH_KEY) == small_payload()


def test_most_blob_refs_fit_with_the_room_left_for_the_payload() -> None:
    refs = [crypto.blake3(i.to_bytes(4, "big")) for i in range(MAX_BLOB_REFS)]
    parents = [crypto.blake3(bytes([i])) for i in range(MAX_PARENTS)]
    room = payload_room(MAX_BLOB_REFS)
    c = make_change(AUTHOR, DEVICE.public, SPACE, parents, 2**63 - 1, -(2**63), ACL_HEAD, 2**32 - 1, EPOCH_KEY,
                    bytes(room), blob_refs=refs)
    assert len(c.raw) <= MAX_CHANGE_SIZE
    assert parse_change(c.raw, c.id).header.blob_refs == tuple(sorted(refs))
    with pytest.raises(ValueError, match="exceeds"):
        make_change(AUTHOR, DEVICE.public, SPACE, [], 1, 0, ACL_HEAD, 0, EPOCH_KEY, bytes(room + 1), blob_refs=refs)
    with pytest.raises(ValueError, match="at most"):
        small_change(blob_refs=refs + [crypto.blake3(b"one more")])
    # A header listing one ref too many is refused by the decoder, however it is signed.
    too_many = tuple(sorted(refs + [crypto.blake3(b"one more")]))
    with pytest.raises(DecodeError):
        parse_change(signed_with_header(valid_header(blob_refs=too_many)))


def test_random_nonce_differs() -> None:
    a, b = small_change(nonce=None), small_change(nonce=None)
    assert a.ciphertext[:12] != b.ciphertext[:12] and a.id != b.id
    assert open_payload(a, EPOCH_KEY) == open_payload(b, EPOCH_KEY) == small_payload()


def test_payload_opens_only_with_the_right_epoch_key() -> None:
    c = small_change()
    with pytest.raises(AuthenticationFailed):
        open_payload(c, bytes(32))
    with pytest.raises(AuthenticationFailed):
        open_payload(c, EPOCH_KEY[:-1] + b"\x00")
    with pytest.raises(ValueError):
        open_payload(c, EPOCH_KEY[:16])


def test_header_is_bound_as_associated_data() -> None:
    a = small_change(payload=small_payload())
    b = small_change(payload=ops.encode_payload([ops.Unlink(entry=b"\x08" * 16)]), lamport=8)
    # Swap ciphertexts and re-sign correctly: the records verify, but the payloads no longer open.
    forged_a = parse_change(ch._assemble(AUTHOR, a.header_raw, b.ciphertext))
    forged_b = parse_change(ch._assemble(AUTHOR, b.header_raw, a.ciphertext))
    for forged in (forged_a, forged_b):
        with pytest.raises(AuthenticationFailed):
            open_payload(forged, EPOCH_KEY)
    # Changing any single header field (here the epoch number) under the same ciphertext also fails.
    assert valid_header(wall_us=a.header.wall_us, epoch=2) == a.header
    moved = parse_change(signed_with_header(valid_header(wall_us=a.header.wall_us, epoch=3), a.ciphertext))
    with pytest.raises(AuthenticationFailed):
        open_payload(moved, EPOCH_KEY)


@settings(max_examples=60, deadline=None)
@given(
    parents=st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PARENTS, unique=True),
    lamport=st.integers(1, 2**63 - 1),
    wall_us=st.integers(-(2**63), 2**63 - 1),
    epoch=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=2000),
    key=st.binary(min_size=32, max_size=32),
    refs=st.lists(st.binary(min_size=32, max_size=32), max_size=300),
)
def test_round_trip_property(
    parents: list[bytes], lamport: int, wall_us: int, epoch: int, payload: bytes, key: bytes, refs: list[bytes]
) -> None:
    c = make_change(AUTHOR, DEVICE.public, SPACE, parents, lamport, wall_us, ACL_HEAD, epoch, key, payload,
                    blob_refs=refs)
    parsed = parse_change(c.raw, c.id)
    assert parsed == c
    assert list(parsed.header.parents) == sorted(parents)
    assert list(parsed.header.blob_refs) == sorted(set(refs))
    assert open_payload(parsed, key) == payload


# ---------------------------------------------------------------------------------------------------- padding
def sealed_with_padded(padded: bytes, nonce: bytes = bytes(12)) -> ch.Change:
    """A correctly signed and encrypted change whose plaintext is ``padded`` as given (a member could make it)."""
    h = small_change().header_raw
    ciphertext = nonce + crypto.Aead(ch.payload_key(EPOCH_KEY)).encrypt(nonce, padded, h)
    return parse_change(ch._assemble(AUTHOR, h, ciphertext))


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 300_000))
def test_ciphertext_length_is_a_bucket(size: int) -> None:
    """A provider sees the ciphertext length: it reveals only the Padmé bucket of the payload's length."""
    payload = bytes(size)
    c = small_change(payload=payload)
    sealed_length = len(c.ciphertext) - ch.NONCE_LEN - crypto.TAG_LEN
    assert padding.is_bucket(sealed_length)
    assert sealed_length == padding.padded_length(size) and sealed_length - size <= size // 8 + 2
    assert open_payload(c, EPOCH_KEY) == payload


def test_payloads_in_one_bucket_give_equal_lengths() -> None:
    lengths = {len(small_change(payload=bytes(n)).raw) for n in range(3000, 3071)}
    assert len(lengths) == 1  # payloads of 2944..3071 bytes are all padded to 3072: one observable length


def test_malformed_payload_padding_is_rejected() -> None:
    data = small_payload()
    bucket = padding.padded_length(len(data))
    assert open_payload(sealed_with_padded(padding.pad(data)), EPOCH_KEY) == data  # the helper is faithful
    bad = {
        "no padding at all": data,
        "no marker": data + bytes(bucket - len(data)),
        "marker not last non-zero": padding.pad_to(data, bucket)[:-1] + b"\x01",
        "larger bucket than needed": padding.pad_to(data, padding.padme(bucket + 1)),
        "empty": b"",
    }
    for name, padded in bad.items():
        with pytest.raises(DecodeError):
            open_payload(sealed_with_padded(padded), EPOCH_KEY)
            pytest.fail(name)


# ---------------------------------------------------------------------------------------------------- corruption
def test_every_bit_flip_is_rejected() -> None:
    c = small_change()
    seen: dict[type, int] = {}
    for pos in range(len(c.raw)):
        for bit in range(8):
            bad = bytearray(c.raw)
            bad[pos] ^= 1 << bit
            bad_bytes = bytes(bad)
            with pytest.raises(IdMismatch):
                parse_change(bad_bytes, c.id)
            try:
                parse_change(bad_bytes)
            except (DecodeError, BadSignature) as e:
                seen[type(e)] = seen.get(type(e), 0) + 1
            else:
                pytest.fail(f"flip of bit {bit} at byte {pos} was accepted")
    assert sum(seen.values()) == 8 * len(c.raw)
    assert seen.get(DecodeError, 0) > 0 and seen.get(BadSignature, 0) > 0


def test_truncated_and_trailing_rejected() -> None:
    c = small_change()
    for n in range(len(c.raw)):
        with pytest.raises(DecodeError):
            parse_change(c.raw[:n])
        with pytest.raises(IdMismatch):
            parse_change(c.raw[:n], c.id)
    for extra in (b"\x00", b"\xc0", bytes(64)):
        with pytest.raises(DecodeError):
            parse_change(c.raw + extra)


def test_oversized_rejected_before_decoding() -> None:
    with pytest.raises(DecodeError, match="exceeds"):
        parse_change(b"C\x01" + bytes(MAX_CHANGE_SIZE))
    # A prefix announcing a body over the bound is refused without reading it.
    c = small_change()
    big = bytearray(c.raw)
    big[2:6] = (MAX_CHANGE_SIZE + 1).to_bytes(4, "big")
    with pytest.raises(DecodeError):
        parse_change(bytes(big))


def test_largest_payload_fits() -> None:
    parents = [crypto.blake3(bytes([i])) for i in range(MAX_PARENTS)]
    c = make_change(
        AUTHOR, DEVICE.public, SPACE, parents, 2**63 - 1, -(2**63), ACL_HEAD, 2**32 - 1, EPOCH_KEY,
        bytes(MAX_PAYLOAD_SIZE),
    )
    assert len(c.raw) <= MAX_CHANGE_SIZE
    assert len(parse_change(c.raw, c.id).header.parents) == MAX_PARENTS
    with pytest.raises(ValueError):
        make_change(AUTHOR, DEVICE.public, SPACE, [], 1, 0, ACL_HEAD, 0, EPOCH_KEY, bytes(MAX_PAYLOAD_SIZE + 1))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(valid_header(parents=tuple(sorted(PARENTS, reverse=True))), id="unsorted-parents"),
        pytest.param(valid_header(parents=(PARENTS[0], PARENTS[0])), id="duplicate-parents"),
        pytest.param(
            valid_header(parents=tuple(sorted(crypto.blake3(bytes([i])) for i in range(MAX_PARENTS + 1)))),
            id="too-many-parents",
        ),
        pytest.param(valid_header(parents=(b"\x01" * 31,)), id="short-parent"),
        pytest.param(valid_header(space=b"\x01" * 33), id="long-space"),
        pytest.param(valid_header(lamport=0), id="lamport-zero"),
        pytest.param(valid_header(lamport=-1), id="lamport-negative"),
        pytest.param(valid_header(epoch=2**32), id="epoch-too-large"),
        pytest.param(valid_header(epoch=-1), id="epoch-negative"),
        pytest.param(valid_header(blob_refs=tuple(sorted(REFS, reverse=True))), id="unsorted-refs"),
        pytest.param(valid_header(blob_refs=(REFS[0], REFS[0])), id="duplicate-refs"),
        pytest.param(valid_header(blob_refs=(b"\x01" * 31,)), id="short-ref"),
        pytest.param(valid_header(blob_refs=(b"\x01" * 33,)), id="long-ref"),
        pytest.param([SPACE, [], AUTHOR.public, DEVICE.public, 1, 0, ACL_HEAD, 0, ["x" * 32]], id="text-ref"),
        pytest.param([SPACE, [], AUTHOR.public, DEVICE.public, 1, 0, ACL_HEAD, 0, b""], id="refs-not-array"),
        pytest.param([SPACE, [], AUTHOR.public, DEVICE.public, 1, 0, ACL_HEAD, 0], id="missing-refs"),
        pytest.param([SPACE, [], AUTHOR.public, DEVICE.public, 1, 0, ACL_HEAD], id="missing-field"),
        pytest.param([SPACE, [], AUTHOR.public, DEVICE.public, 1, 0, ACL_HEAD, 0, [], 0], id="extra-field"),
        pytest.param([SPACE, [], AUTHOR.public, DEVICE.public, 1.0, 0, ACL_HEAD, 0, []], id="float-lamport"),
        pytest.param([SPACE, [], AUTHOR.public, DEVICE.public, True, 0, ACL_HEAD, 0, []], id="bool-lamport"),
        pytest.param(
            {"space": SPACE, "parents": [], "author": AUTHOR.public, "device": DEVICE.public, "lamport": 1,
             "wall_us": 0, "acl_head": ACL_HEAD, "epoch": 0, "blob_refs": []},
            id="map-not-array",
        ),
        pytest.param(b"not a header", id="bytes-header"),
    ],
)
def test_malformed_header_rejected_even_when_signed(header: object) -> None:
    with pytest.raises(DecodeError):
        parse_change(signed_with_header(header))


def test_signed_valid_header_is_accepted() -> None:
    # The control case for the test above: the helper itself builds acceptable changes.
    assert parse_change(signed_with_header(valid_header())).header == valid_header()
    with_refs = valid_header(blob_refs=tuple(sorted(REFS)))
    assert parse_change(signed_with_header(with_refs)).header == with_refs


@pytest.mark.parametrize("ciphertext_len", [0, 27])
def test_short_ciphertext_rejected(ciphertext_len: int) -> None:
    with pytest.raises(DecodeError):
        parse_change(signed_with_header(valid_header(), bytes(ciphertext_len)))


def test_body_shape_rejected() -> None:
    header_raw = encoding.encode(valid_header())
    for body in (
        encoding.encode([msgspec.Raw(header_raw), bytes(40), 0]),  # trailing element
        encoding.encode([msgspec.Raw(header_raw)]),  # missing ciphertext
        encoding.encode([msgspec.Raw(header_raw), "x" * 40]),  # text, not bytes
        header_raw,  # no body array
    ):
        sig = AUTHOR.sign(encoding.signing_message(encoding.FORMAT_CHANGE, ch.CHANGE_VERSION, body))
        with pytest.raises(DecodeError):
            parse_change(encoding.pack_signed(encoding.FORMAT_CHANGE, ch.CHANGE_VERSION, body, [sig]))


def test_record_framing_rejected() -> None:
    c = small_change()
    body = c.raw[6:-65]
    sig = c.raw[-64:]
    for raw in (
        encoding.pack_signed(encoding.FORMAT_ACL_RECORD, 2, body, [sig]),  # wrong tag
        encoding.pack_signed(encoding.FORMAT_CHANGE, 1, body, [sig]),  # version 1 (no blob refs): refused
        encoding.pack_signed(encoding.FORMAT_CHANGE, 3, body, [sig]),  # unknown version
        encoding.pack_signed(encoding.FORMAT_CHANGE, 2, body, [sig, sig]),  # two signatures
    ):
        with pytest.raises(DecodeError):
            parse_change(raw)


def test_signature_must_be_the_authors() -> None:
    impostor = crypto.SigningKey(bytes.fromhex("33" * 32))
    with pytest.raises(BadSignature):
        parse_change(signed_with_header(valid_header(), signer=impostor))
    # ... and the impostor naming itself as author is fine for this module (the ACL decides who may write).
    assert parse_change(signed_with_header(valid_header(author=impostor.public), signer=impostor))


def test_make_change_argument_checks() -> None:
    for bad in (
        dict(parents=[b"\x01" * 31]),
        dict(parents=[crypto.blake3(bytes([i])) for i in range(MAX_PARENTS + 1)]),
        dict(lamport=0),
        dict(lamport=2**63),
        dict(epoch=2**32),
        dict(wall_us=2**63),
        dict(space_id=b"\x00" * 31),
        dict(acl_head=b"\x00" * 33),
        dict(device_public=b"\x00" * 31),
        dict(nonce=bytes(11)),
        dict(epoch_key=bytes(31)),
        dict(blob_refs=[b"\x01" * 31]),
    ):
        with pytest.raises(ValueError):
            small_change(**bad)


# ---------------------------------------------------------------------------------------------------- vector
VECTOR_OPS = [
    ops.Create(
        node=bytes.fromhex("a1" * 16), entry=bytes.fromhex("b2" * 16), parent=bytes(16), name=b"hello.txt",
        kind=ops.KIND_FILE, mode=0o644, uid=1000, gid=1000, time_ns=1_767_225_600_000_000_000,
    ),
    ops.Write(node=bytes.fromhex("a1" * 16), content=ops.Content(size=6, inline=b"hello\n"),
              mtime_ns=1_767_225_600_000_000_000),
    ops.Write(
        node=bytes.fromhex("c3" * 16),
        content=ops.Content(size=10_000, extents=[
            ops.Extent(0, ops.ChunkRef(crypto.blake3(b"anysyncfs test vector blob 0"), bytes.fromhex("d4" * 32), 6000)),
            ops.Extent(6000, ops.ChunkRef(crypto.blake3(b"anysyncfs test vector blob 1"), bytes.fromhex("e5" * 32),
                                          4000)),
        ]),
        mtime_ns=1_767_225_600_000_000_000,
    ),
]


def vector_inputs() -> dict[str, object]:
    return {
        "author_seed": "11" * 32,
        "device_seed": "22" * 32,
        "space_id": crypto.blake3(b"anysyncfs test vector space").hex(),
        "parents": sorted(crypto.blake3(b"anysyncfs test vector parent %d" % i).hex() for i in range(2)),
        "lamport": 42,
        "wall_us": 1_767_225_600_123_456,
        "acl_head": crypto.blake3(b"anysyncfs test vector acl head").hex(),
        "epoch": 1,
        "epoch_key": "e0" * 32,
        "nonce": "4e" * 12,
        "payload": ops.encode_payload(VECTOR_OPS).hex(),
        "blob_refs": sorted(crypto.blake3(b"anysyncfs test vector blob %d" % i).hex() for i in range(2)),
    }


def build_vector(inputs: dict[str, object]) -> ch.Change:
    h = lambda k: bytes.fromhex(str(inputs[k]))  # noqa: E731
    return make_change(
        crypto.SigningKey(h("author_seed")),
        crypto.SigningKey(h("device_seed")).public,
        h("space_id"),
        [bytes.fromhex(p) for p in inputs["parents"]],  # type: ignore[attr-defined]
        int(inputs["lamport"]),  # type: ignore[arg-type]
        int(inputs["wall_us"]),  # type: ignore[arg-type]
        h("acl_head"),
        int(inputs["epoch"]),  # type: ignore[arg-type]
        h("epoch_key"),
        h("payload"),
        nonce=h("nonce"),
        blob_refs=[bytes.fromhex(r) for r in inputs["blob_refs"]],  # type: ignore[attr-defined]
    )


def test_vector() -> None:
    if os.environ.get("ANYSYNCFS_WRITE_VECTORS") == "1":
        inputs = vector_inputs()
        c = build_vector(inputs)
        doc = {
            "format": "change (signed record, tag 'C', version 2)",
            "inputs": inputs,
            "header_hex": c.header_raw.hex(),
            "encoded_hex": c.raw.hex(),
            "id_hex": c.id.hex(),
        }
        VECTOR_PATH.parent.mkdir(parents=True, exist_ok=True)
        VECTOR_PATH.write_text(json.dumps(doc, indent=2) + "\n")
    doc = json.loads(VECTOR_PATH.read_text())
    # The payload bytes are an input here (their format belongs to ops.py, checked by decoding them below).
    assert {k: v for k, v in doc["inputs"].items() if k != "payload"} == {
        k: v for k, v in vector_inputs().items() if k != "payload"
    }
    c = build_vector(doc["inputs"])
    assert c.raw.hex() == doc["encoded_hex"]
    assert c.header_raw.hex() == doc["header_hex"]
    assert c.id.hex() == doc["id_hex"]
    parsed = parse_change(bytes.fromhex(doc["encoded_hex"]), bytes.fromhex(doc["id_hex"]))
    payload = ops.decode_payload(open_payload(parsed, bytes.fromhex(doc["inputs"]["epoch_key"])))
    assert payload == VECTOR_OPS
    assert blob_refs.check_refs(parsed.header.blob_refs, payload) is None
