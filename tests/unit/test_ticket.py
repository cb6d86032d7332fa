"""Invite tickets (core/ticket.py): round trips, the fixed vector of docs/protocol.md 20.7, and strict parsing."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anysyncfs.core import crypto, ids
from anysyncfs.core.acl import Role
from anysyncfs.core.address import PeerAddress
from anysyncfs.core.ticket import (
    CHECKSUM_LEN,
    MAX_PEERS,
    MAX_TEXT_LEN,
    PREFIX,
    TICKET_VERSION,
    Ticket,
    encode_ticket,
    parse_ticket,
)
from anysyncfs.errors import DecodeError, UsageError

DAMAGED = "ticket is damaged (checksum mismatch): check you copied it whole"

# The vector of docs/protocol.md 20.7 (the space ID and keys are byte patterns, not real ones).
VECTOR = Ticket(
    space_id=bytes(range(32)),
    role=Role.WRITER,
    invite_secret=bytes(range(32, 64)),
    expires_us=1_900_000_000_000_000,
    peers=(PeerAddress(bytes([0xAB]) * 32, "node.example.org", 7733),),
)
VECTOR_TEXT = (
    "anysync:agk4iiaaaebagbafaydqqcikbmga2dqpcaireeyuculbogazdinryhi6d4bmiibaeercgjbfeytsqkjkfmwc2lrpgayt"
    "emzugu3doobzhi5typj6h7hqabwabi4rfqaasgj4iiflvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvoyg433e"
    "muxgk6dbnvygyzjon5zgpti6gx7rbdqc"
)

hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
peers = st.builds(PeerAddress, st.binary(min_size=32, max_size=32), hosts, st.integers(1, 65535))
tickets = st.builds(
    Ticket,
    st.binary(min_size=32, max_size=32),
    st.sampled_from([Role.READER, Role.WRITER, Role.ADMIN]),
    st.binary(min_size=32, max_size=32),
    st.one_of(st.just(0), st.integers(1, 2**63 - 1)),
    st.lists(peers, max_size=MAX_PEERS).map(tuple),
)


def _raw_ticket(version: int, body: bytes) -> str:
    """A ticket with any version and body and a correct checksum (to reach the checks after it)."""
    data = bytes([version]) + body
    return PREFIX + ids.b32(data + crypto.blake3(data)[:CHECKSUM_LEN])


def _body(**overrides: object) -> bytes:
    fields: list[object] = [bytes(32), 2, bytes(32), 0, [[bytes(32), "h", 1]]]
    order = ["space", "role", "secret", "expires", "peers"]
    for k, v in overrides.items():
        fields[order.index(k)] = v
    return msgspec.msgpack.encode(fields)


def test_vector() -> None:
    assert encode_ticket(VECTOR) == VECTOR_TEXT
    assert parse_ticket(VECTOR_TEXT) == VECTOR
    raw = base64.b32decode(VECTOR_TEXT[len(PREFIX):].upper() + "=" * (-len(VECTOR_TEXT[len(PREFIX):]) % 8))
    assert raw[0] == TICKET_VERSION == 1
    assert raw[-CHECKSUM_LEN:] == crypto.blake3(raw[:-CHECKSUM_LEN])[:CHECKSUM_LEN]


@given(tickets)
def test_round_trip(ticket: Ticket) -> None:
    text = encode_ticket(ticket)
    assert text.startswith(PREFIX) and text == text.lower() and len(text) <= MAX_TEXT_LEN
    assert parse_ticket(text) == ticket
    # upper case (as a QR code carries it) and whitespace from line wrapping are accepted
    assert parse_ticket(text.upper()) == ticket
    assert parse_ticket("  " + text[:30] + "\n  " + text[30:] + "\n") == ticket


def test_secret_not_in_repr() -> None:
    assert VECTOR.invite_secret.hex() not in repr(VECTOR)
    assert "invite_secret" not in repr(VECTOR)


@given(st.data())
def test_any_changed_character_is_refused(data: st.DataObject) -> None:
    text = VECTOR_TEXT
    pos = data.draw(st.integers(len(PREFIX), len(text) - 1))
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    new = data.draw(st.sampled_from([c for c in alphabet if c != text[pos]]))
    bad = text[:pos] + new + text[pos + 1:]
    with pytest.raises(UsageError) as e:
        parse_ticket(bad)
    assert "damaged" in str(e.value)


def test_flipped_character_message() -> None:
    pos = len(PREFIX) + 20
    bad = VECTOR_TEXT[:pos] + ("a" if VECTOR_TEXT[pos] != "a" else "b") + VECTOR_TEXT[pos + 1:]
    with pytest.raises(UsageError, match=r"checksum mismatch"):
        parse_ticket(bad)
    with pytest.raises(UsageError) as e:
        parse_ticket(bad)
    assert str(e.value) == DAMAGED


def test_truncated_or_extended_ticket_is_refused() -> None:
    for bad in (VECTOR_TEXT[:-1], VECTOR_TEXT[:-8], VECTOR_TEXT + "a", VECTOR_TEXT + "aaaaaaaa", PREFIX + "aaaa"):
        with pytest.raises(UsageError, match="damaged"):
            parse_ticket(bad)


def test_non_canonical_last_character_is_refused() -> None:
    # When the bytes do not fill the last base32 character, setting its spare bits leaves the bytes intact but
    # the text is not what the encoder wrote: refused like any other alteration.
    text = next(t for t in (encode_ticket(Ticket(VECTOR.space_id, VECTOR.role, VECTOR.invite_secret, 0,
                                                 (PeerAddress(bytes(32), "h" * n, 1),))) for n in range(1, 6))
                if len(t[len(PREFIX):]) * 5 % 8)
    payload = text[len(PREFIX):]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    altered = PREFIX + payload[:-1] + alphabet[alphabet.index(payload[-1]) | 1]
    assert altered != text
    assert base64.b32decode(altered[len(PREFIX):].upper() + "=" * (-len(payload) % 8)) == \
        base64.b32decode(payload.upper() + "=" * (-len(payload) % 8))  # the same bytes
    with pytest.raises(UsageError, match="damaged"):
        parse_ticket(altered)


@pytest.mark.parametrize("text, needle", [
    ("", "not an invite ticket"),
    ("anysync://dv-abc@host:1", "a peer address"),
    ("sp-" + "a" * 52, "not an invite ticket"),
    ("anysync:" + "1" * 20, "outside its alphabet"),
    ("anysync:" + "a" * 7000, "longer than"),
    ("x" * 100_000, "longer than"),
])  # fmt: skip
def test_not_a_ticket(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_ticket(text)


def test_unknown_version_says_update() -> None:
    good_body = _body()
    with pytest.raises(UsageError, match="version 2.*update"):
        parse_ticket(_raw_ticket(2, good_body))
    assert parse_ticket(_raw_ticket(TICKET_VERSION, good_body)).role == Role.WRITER


@pytest.mark.parametrize("body", [
    _body(space=bytes(31)),
    _body(secret=bytes(33)),
    _body(role=0),
    _body(role=4),  # nobody is invited as owner
    _body(expires=-1),
    _body(expires=2**63),
    _body(peers=[[bytes(32), "h", 0]]),
    _body(peers=[[bytes(32), "h", 65536]]),
    _body(peers=[[bytes(32), "", 1]]),
    _body(peers=[[bytes(32), "bad host!", 1]]),
    _body(peers=[[bytes(32), "h" * 254, 1]]),
    _body(peers=[[bytes(31), "h", 1]]),
    _body(peers=[[bytes(32), "h", 1, 0]]),
    _body(peers=[[bytes(32), "h", 1]] * (MAX_PEERS + 1)),
    msgspec.msgpack.encode([bytes(32), 2, bytes(32), 0]),  # a field missing
    msgspec.msgpack.encode([bytes(32), 2, bytes(32), 0, [], 0]),  # a field too many
    _body() + b"\x00",  # trailing bytes
    b"",
])  # fmt: skip
def test_malformed_body_is_refused(body: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_ticket(_raw_ticket(TICKET_VERSION, body))


def test_encoder_refuses_what_the_parser_would() -> None:
    base = VECTOR
    bad = [
        Ticket(base.space_id, base.role, base.invite_secret, base.expires_us, base.peers * (MAX_PEERS + 1)),
        Ticket(base.space_id, Role.OWNER, base.invite_secret, base.expires_us, base.peers),
        Ticket(base.space_id[:31], base.role, base.invite_secret, base.expires_us, base.peers),
        Ticket(base.space_id, base.role, base.invite_secret, -1, base.peers),
    ]
    for t in bad:
        with pytest.raises(ValueError):
            encode_ticket(t)
    with pytest.raises((ValueError, UsageError)):
        encode_ticket(Ticket(base.space_id, base.role, base.invite_secret, 0, (PeerAddress(bytes(32), "a b", 1),)))


def test_expiry_and_invite_key() -> None:
    assert not VECTOR.expired(VECTOR.expires_us)
    assert VECTOR.expired(VECTOR.expires_us + 1)
    never = Ticket(VECTOR.space_id, VECTOR.role, VECTOR.invite_secret, 0, ())
    assert not never.expired(2**62)
    assert VECTOR.invite_key.public == crypto.SigningKey(VECTOR.invite_secret).public
