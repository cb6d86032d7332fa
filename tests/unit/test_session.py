"""The sans-I/O session, byte by byte, with no sockets: handshake, multiplexed requests, and every way a peer can
break the protocol."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anysyncfs.core import crypto, keys
from anysyncfs.errors import AuthenticationFailed, ProtocolError
from anysyncfs.protocol import messages as m
from anysyncfs.protocol.frames import LENGTH, MAX_BODY, PRE_AUTH_BODY, FrameDecoder, FrameType, encode_frame
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


def request_frame(rid: int, data_len: int = 0) -> bytes:
    body = m.PutBlob(SPACE, b"\x07" * 32, bytes(data_len)) if data_len else m.OpenSpace(SPACE)
    return encode_frame(FrameType.REQUEST, m.encode(m.Request(rid, body)))


def drain(session: Session) -> list:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def test_requests_beyond_the_count_in_flight_wait_for_replies() -> None:
    sd, sl, *_ = established()
    sl.receive_data(b"".join(request_frame(i) for i in range(1, 66)))
    got = drain(sl)
    assert [e.id for e in got] == list(range(1, 65)) and sl.blocked and sl.incoming_requests == 64
    assert sl.state is State.ESTABLISHED  # a pipelining peer is slowed down, not cut off
    sl.send_response(5, m.Ok())
    assert [e.id for e in drain(sl)] == [65] and not sl.blocked


def test_request_bytes_in_flight_are_bounded_byte_by_byte() -> None:
    """A request whose header would take the bytes in flight over the bound is not read: not one byte of its body
    is buffered until a reply frees room. One request alone always fits."""
    d, li = Party("dialler"), Party("listener")
    verify = issuer_check({d.tls_cert: d.device.public, li.tls_cert: li.device.public})
    sd = Session(Role.DIALLER, d.device, d.cert, d.tls_cert, verify, pinned_device=li.device.public,
                 observed_peer_cert=li.tls_cert)
    sl = Session(Role.LISTENER, li.device, li.cert, li.tls_cert, verify, max_incoming_bytes=10_000)
    pump(sd, sl)
    big, small = request_frame(1, 20_000), request_frame(2, 3_000)
    events = []
    for i in range(len(big)):  # larger than the bound, but alone: admitted
        sl.receive_data(big[i:i + 1])
        events += drain(sl)
    assert [e.id for e in events] == [1] and sl.incoming_bytes == len(big) - 5
    for i in range(len(small)):
        sl.receive_data(small[i:i + 1])
        assert drain(sl) == []
    assert sl.blocked and sl.incoming_bytes == len(big) - 5  # the small one's body is not counted: not read
    assert sl.mid_frame  # its header was taken; the caller stops reading here
    sl.send_response(1, m.Ok())
    got = drain(sl)
    assert [e.id for e in got] == [2] and not sl.blocked and sl.incoming_bytes == len(small) - 5
    assert sl.peak_incoming_bytes == len(big) - 5
    # two that fit together are both read; a third that would exceed the bound waits for the first reply
    sl.send_error(2, m.ErrorCode.FORBIDDEN, "no")
    sl.receive_data(request_frame(3, 4_000) + request_frame(4, 4_000) + request_frame(5, 4_000))
    assert [e.id for e in drain(sl)] == [3, 4] and sl.blocked
    sl.release(3)  # a handler that ended without replying (the connection is going down) also frees room
    assert [e.id for e in drain(sl)] == [5] and sl.peak_incoming_bytes == len(big) - 5


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
    with pytest.raises(ProtocolError, match="REQUEST frame not allowed before authentication"):
        sl.next_event()
    with pytest.raises(ProtocolError):
        sd.send_request(m.OpenSpace(SPACE))


@pytest.mark.parametrize("kind", [FrameType.REQUEST, FrameType.RESPONSE, FrameType.ERROR, FrameType.NOTIFY])
def test_before_authentication_other_frames_are_refused_from_their_header(kind: FrameType) -> None:
    """A stranger announcing a 16 MiB body is refused once the 5 header bytes are in, byte by byte: the body is
    never waited for."""
    for state in ("await-hello", "await-auth"):
        sd, sl, *_ = pair()
        if state == "await-auth":
            sl.receive_data(sd.data_to_send())
            assert sl.next_event() is None and sl.state is State.AWAIT_AUTH
        header = LENGTH.pack(16 * 1024 * 1024 + 1) + bytes([kind])
        for i in range(4):
            sl.receive_data(header[i:i + 1])
            assert sl.next_event() is None
        sl.receive_data(header[4:])
        with pytest.raises(ProtocolError, match=f"{kind.name} frame not allowed before authentication"):
            sl.next_event()
        assert sl.state is State.CLOSED


@pytest.mark.parametrize(("kind", "limit"), sorted(PRE_AUTH_BODY.items()))
def test_handshake_frames_have_small_limits(kind: FrameType, limit: int) -> None:
    assert limit <= 6 * 1024
    _, sl, *_ = pair()
    sl.receive_data(LENGTH.pack(limit + 2) + bytes([kind]))
    with pytest.raises(ProtocolError, match=f"{kind.name} frame of {limit + 1} bytes exceeds its limit of {limit}"):
        sl.next_event()


def test_the_largest_legal_hello_fits_its_limit() -> None:
    largest = m.encode(m.Hello(0xFFFF, 0xFFFF, bytes(32), bytes(m.MAX_CERT_LEN), bytes(m.MAX_DEVICE_CERT_LEN),
                               "\U0001F600" * m.MAX_TEXT))
    assert len(largest) <= PRE_AUTH_BODY[FrameType.HELLO]
    assert len(m.encode(m.Auth(0xFFFF, bytes(64)))) <= PRE_AUTH_BODY[FrameType.AUTH]
    assert len(m.encode(m.Close("\U0001F600" * m.MAX_TEXT))) <= PRE_AUTH_BODY[FrameType.CLOSE]


def test_a_close_before_authentication_is_accepted() -> None:
    _, sl, *_ = pair()
    sl.receive_data(encode_frame(FrameType.CLOSE, m.encode(m.Close("bye"))))
    assert sl.next_event() == Closed("bye")


def test_after_authentication_the_full_limits_apply() -> None:
    sd, sl, *_ = established()
    rid, frame = sd.send_request(m.PutBlob(SPACE, b"\x07" * 32, bytes(100_000)))
    sl.receive_data(frame)
    assert isinstance(sl.next_event(), RequestReceived)
    sl.receive_data(encode_frame(FrameType.HELLO, bytes(10)))
    with pytest.raises(ProtocolError, match="unexpected HELLO"):
        sl.next_event()


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
