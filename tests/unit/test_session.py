"""The sans-I/O session, byte by byte, with no sockets: handshake, multiplexed requests, and every way a peer can
break the protocol."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anysyncfs.core import crypto, keys
from anysyncfs.errors import AuthenticationFailed, ProtocolError
from anysyncfs.protocol import messages as m
from anysyncfs.protocol.frames import MAX_BODY, FrameDecoder, FrameType, encode_frame
from anysyncfs.protocol.session import (
    Closed,
    Established,
    ErrorReceived,
    NotifyReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    Session,
    State,
)

SPACE = bytes(range(32))


class Party:
    def __init__(self, name: str) -> None:
        self.account = crypto.SigningKey.generate()
        self.device = crypto.SigningKey.generate()
        self.cert = keys.issue_device_cert(self.account, self.device.public, name, 1)
        self.tls_cert = b"tls-cert-of-" + name.encode()  # stands in for a DER certificate


def issuer_check(issued: dict[bytes, bytes]):
    """A fake of net.tls.verify_cert_issuer: the 'certificate' must have been issued by that device."""

    def verify(der: bytes, device: bytes) -> None:
        if issued.get(der) != device:
            raise AuthenticationFailed("certificate not issued by that device")

    return verify


def pair(dialler: Party | None = None, listener: Party | None = None, *, pinned: bytes | None = None,
         observed: bytes | None = None) -> tuple[Session, Session, Party, Party]:
    d = dialler or Party("dialler")
    li = listener or Party("listener")
    verify = issuer_check({d.tls_cert: d.device.public, li.tls_cert: li.device.public})
    sd = Session(Role.DIALLER, d.device, d.cert, d.tls_cert, verify,
                 pinned_device=pinned or li.device.public, observed_peer_cert=observed or li.tls_cert)
    sl = Session(Role.LISTENER, li.device, li.cert, li.tls_cert, verify)
    return sd, sl, d, li


def pump(a: Session, b: Session, *, byte_by_byte: bool = False) -> tuple[list, list]:
    """Move bytes both ways until quiet; return the events each side saw."""
    ea: list = []
    eb: list = []
    for _ in range(20):
        moved = False
        for src, dst, events in ((a, b, eb), (b, a, ea)):
            data = src.data_to_send()
            if data:
                moved = True
                chunks = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
                for c in chunks:
                    dst.receive_data(c)
                    while (ev := dst.next_event()) is not None:
                        events.append(ev)
        if not moved:
            break
    return ea, eb


def established() -> tuple[Session, Session, Party, Party]:
    sd, sl, d, li = pair()
    ed, el = pump(sd, sl)
    assert isinstance(ed[0], Established) and isinstance(el[0], Established)
    return sd, sl, d, li


def test_handshake_byte_by_byte() -> None:
    sd, sl, d, li = pair()
    ed, el = pump(sd, sl, byte_by_byte=True)
    assert ed == [Established(li.device.public, li.account.public, "listener", 1)]
    assert el == [Established(d.device.public, d.account.public, "dialler", 1)]
    assert sd.state is sl.state is State.ESTABLISHED


def test_requests_are_multiplexed_and_matched_by_id() -> None:
    sd, sl, *_ = established()
    r1, f1 = sd.send_request(m.GetBlob(SPACE, b"\x01" * 32))
    r2, f2 = sd.send_request(m.HasBlobs(SPACE, [b"\x02" * 32]))
    assert r1 != r2
    sl.receive_data(f1 + f2)
    got = [sl.next_event(), sl.next_event()]
    assert [type(e) for e in got] == [RequestReceived, RequestReceived]
    assert got[0].body == m.GetBlob(SPACE, b"\x01" * 32)
    # answered out of order
    sd.receive_data(sl.send_response(r2, m.Bits(b"\x01")) + sl.send_error(r1, m.ErrorCode.NOT_FOUND, "no"))
    assert sd.next_event() == ResponseReceived(r2, m.Bits(b"\x01"))
    assert sd.next_event() == ErrorReceived(r1, int(m.ErrorCode.NOT_FOUND), "no")
    sl.receive_data(sd.send_notify(m.Heads(SPACE, [b"\x03" * 32])))
    assert sl.next_event() == NotifyReceived(m.Heads(SPACE, [b"\x03" * 32]))


def test_reply_to_unknown_request_is_a_protocol_error() -> None:
    sd, sl, *_ = established()
    rid, frame = sd.send_request(m.OpenSpace(SPACE))
    sl.receive_data(frame)
    sl.next_event()
    reply = sl.send_response(rid, m.Ok())
    sd.receive_data(reply)
    assert isinstance(sd.next_event(), ResponseReceived)
    sd.receive_data(reply)  # the same reply again
    with pytest.raises(ProtocolError, match="never sent"):
        sd.next_event()
    assert sd.state is State.CLOSED


def test_late_reply_to_an_abandoned_request_is_dropped() -> None:
    sd, sl, *_ = established()
    rid, frame = sd.send_request(m.OpenSpace(SPACE))
    sl.receive_data(frame)
    sl.next_event()
    sd.abandon(rid)
    sd.receive_data(sl.send_response(rid, m.Ok()))
    assert sd.next_event() is None
    assert sd.state is State.ESTABLISHED


def test_duplicate_and_too_many_incoming_requests() -> None:
    sd, sl, *_ = established()
    frame = encode_frame(FrameType.REQUEST, m.encode(m.Request(7, m.OpenSpace(SPACE))))
    sl.receive_data(frame + frame)
    assert isinstance(sl.next_event(), RequestReceived)
    with pytest.raises(ProtocolError, match="already in flight"):
        sl.next_event()
    sd, sl, *_ = established()
    sl.receive_data(b"".join(encode_frame(FrameType.REQUEST, m.encode(m.Request(i, m.OpenSpace(SPACE))))
                             for i in range(1, 66)))
    with pytest.raises(ProtocolError, match="in flight"):
        while sl.next_event() is not None:
            pass


def test_dialler_rejects_a_listener_with_another_device_key() -> None:
    other = Party("other")
    sd, sl, d, li = pair(pinned=other.device.public)
    with pytest.raises(AuthenticationFailed, match="expected"):
        pump(sd, sl)


def test_dialler_rejects_a_hello_naming_another_certificate_than_tls_showed() -> None:
    sd, sl, d, li = pair(observed=b"some other cert")
    with pytest.raises(AuthenticationFailed, match="another certificate"):
        pump(sd, sl)


def test_listener_rejects_a_forged_auth_signature() -> None:
    sd, sl, d, li = pair()
    sl.receive_data(sd.data_to_send())
    assert sl.next_event() is None  # Hello processed, Auth queued
    sd.receive_data(sl.data_to_send())
    assert isinstance(sd.next_event(), Established)  # listener's Hello, then its Auth
    auth = sd.data_to_send()
    forged = auth[:-1] + bytes([auth[-1] ^ 1])  # flip a bit of the signature
    sl.receive_data(forged)
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        sl.next_event()


def test_relayed_signature_does_not_verify_on_another_connection() -> None:
    """A man in the middle relaying the dialler's Auth to the real listener fails: the transcript differs."""
    d, li = Party("dialler"), Party("listener")
    sd1, sl1, *_ = pair(d, li)
    sd2, sl2, *_ = pair(d, li)
    sl1.receive_data(sd1.data_to_send())
    sl1.next_event()
    sd1.receive_data(sl1.data_to_send())
    assert isinstance(sd1.next_event(), Established)
    auth1 = sd1.data_to_send()
    sl2.receive_data(sd2.data_to_send())  # second connection's Hello (another nonce)
    sl2.next_event()
    sl2.receive_data(auth1)
    with pytest.raises(AuthenticationFailed):
        sl2.next_event()


def test_version_negotiation() -> None:
    d, li = Party("dialler"), Party("listener")
    verify = issuer_check({d.tls_cert: d.device.public, li.tls_cert: li.device.public})
    sd = Session(Role.DIALLER, d.device, d.cert, d.tls_cert, verify, pinned_device=li.device.public,
                 observed_peer_cert=li.tls_cert, versions=(1, 3))
    sl = Session(Role.LISTENER, li.device, li.cert, li.tls_cert, verify, versions=(1, 2))
    ed, _ = pump(sd, sl)
    assert ed[0].version == 2
    sd = Session(Role.DIALLER, d.device, d.cert, d.tls_cert, verify, pinned_device=li.device.public,
                 observed_peer_cert=li.tls_cert, versions=(3, 4))
    sl = Session(Role.LISTENER, li.device, li.cert, li.tls_cert, verify, versions=(1, 2))
    with pytest.raises(ProtocolError, match="no common protocol version"):
        pump(sd, sl)


def test_requests_before_the_handshake_are_refused() -> None:
    sd, sl, *_ = pair()
    sl.receive_data(encode_frame(FrameType.REQUEST, m.encode(m.Request(1, m.OpenSpace(SPACE)))))
    with pytest.raises(ProtocolError, match="unexpected REQUEST"):
        sl.next_event()
    with pytest.raises(ProtocolError):
        sd.send_request(m.OpenSpace(SPACE))


def test_close_frame() -> None:
    sd, sl, *_ = established()
    sl.receive_data(sd.send_close("bye"))
    assert sl.next_event() == Closed("bye")
    assert sl.state is State.CLOSED and sd.state is State.CLOSED


def test_frame_limits_are_checked_from_the_header() -> None:
    dec = FrameDecoder()
    dec.receive_data((MAX_BODY[FrameType.HELLO] + 2).to_bytes(4, "big") + bytes([FrameType.HELLO]))
    with pytest.raises(ProtocolError, match="exceeds"):
        dec.next_frame()
    dec = FrameDecoder()
    dec.receive_data(b"\x00\x00\x00\x01\x99")
    with pytest.raises(ProtocolError, match="unknown frame type"):
        dec.next_frame()
    dec = FrameDecoder()
    dec.receive_data(b"\x00\x00\x00\x00\x01")
    with pytest.raises(ProtocolError):
        dec.next_frame()
    with pytest.raises(ProtocolError):
        encode_frame(FrameType.NOTIFY, bytes(MAX_BODY[FrameType.NOTIFY] + 1))


def test_mid_frame_is_reported_for_stall_detection() -> None:
    dec = FrameDecoder()
    assert not dec.mid_frame
    dec.receive_data(b"\x00\x00")
    assert dec.mid_frame
    dec.receive_data(b"\x00\x03\x13\x01")
    assert dec.next_frame() is None and dec.mid_frame
    dec.receive_data(b"\x02")
    assert dec.next_frame() == (FrameType.NOTIFY, b"\x01\x02")
    assert not dec.mid_frame


@given(st.binary(max_size=2000))
def test_fuzz_garbage_after_handshake_is_only_ever_a_protocol_error(data: bytes) -> None:
    _, sl, *_ = established()
    sl.receive_data(data)
    try:
        while sl.next_event() is not None:
            pass
    except ProtocolError:
        assert sl.state is State.CLOSED


@given(st.binary(max_size=600))
def test_fuzz_garbage_handshake_is_a_protocol_or_authentication_error(data: bytes) -> None:
    _, sl, *_ = pair()
    sl.receive_data(data)
    try:
        while sl.next_event() is not None:
            pass
    except (ProtocolError, AuthenticationFailed):
        pass


MESSAGE_TYPES = [m.Hello, m.Auth, m.Close, m.Request, m.Response, m.ErrorReply, m.Notify]


@given(st.sampled_from(MESSAGE_TYPES), st.binary(max_size=400))
def test_fuzz_message_decoders(kind: type, data: bytes) -> None:
    try:
        m.decode(data, kind)
    except ProtocolError:
        pass


VALID = [
    m.encode(m.Request(1, m.PutChanges(SPACE, [b"x" * 10]))),
    m.encode(m.Response(2, m.SpaceInfo(b"h", [b"r"], [b"\x05" * 32]))),
    m.encode(m.Notify(m.Heads(SPACE, [b"\x06" * 32]))),
]


@given(st.sampled_from(VALID), st.integers(0, 10_000), st.integers(0, 255))
def test_fuzz_mutated_valid_messages(valid: bytes, pos: int, value: int) -> None:
    data = bytearray(valid)
    data[pos % len(data)] = value
    for kind in (m.Request, m.Response, m.Notify):
        try:
            m.decode(bytes(data), kind)
        except ProtocolError:
            pass
