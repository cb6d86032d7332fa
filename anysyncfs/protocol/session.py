"""The sans-I/O session: handshake and multiplexed requests over one connection (docs/protocol.md, 70.5).

Bytes in (:meth:`Session.receive_data`), events out (:meth:`Session.next_event`), bytes to send out
(:meth:`Session.data_to_send` and the ``send_*`` methods). No sockets, no tasks, no clocks: the caller owns I/O
and timeouts (:mod:`anysyncfs.net.connection`).

Handshake (after TLS 1.3; both sides act the same way, without waiting for each other)::

    each side:  send Hello{versions, nonce, own TLS cert, account->device cert}
    on Hello:   check the peer's device certificate (account signature), that its TLS certificate was issued
                by that device key (dialler: that it IS the certificate TLS showed, and that the device is the
                pinned one), pick the version; send Auth{version, signature over the transcript}
    on Auth:    same version; the peer's device key signed the transcript with the peer's role byte -> Established

The transcript hashes both Hello bodies (so both nonces and both certificates): a signature can't be replayed on
another connection, and a relaying server can't pass one off, since it would name the relay's certificate.

Limits. Until the peer is authenticated only HELLO, AUTH and CLOSE frames of a few KiB are accepted
(:data:`~anysyncfs.protocol.frames.PRE_AUTH_BODY`). Afterwards the peer's requests in flight (received, not yet
answered) are bounded in number and in body bytes: a REQUEST frame that would go over either bound is not read
— :meth:`Session.next_event` returns None with :attr:`Session.blocked` set, before the frame's body is buffered —
until replies free room (the caller then stops reading the socket, so TCP slows the peer down). A frame that
alone exceeds the byte bound is admitted when nothing else is in flight.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import crypto, ids, keys
from ..errors import AuthenticationFailed, BadSignature, DecodeError, ProtocolError
from . import messages as m
from .frames import MAX_BODY, PRE_AUTH_BODY, FrameDecoder, FrameType, encode_frame

TRANSCRIPT_CONTEXT = b"anysyncfs session transcript v1\x00"
AUTH_CONTEXT = b"anysyncfs session auth v1\x00"
MAX_INCOMING = 64  # requests the peer may have in flight at once (default)
MAX_INCOMING_BYTES = 32 * 1024 * 1024  # request body bytes the peer may have in flight at once (default)
MAX_ABANDONED = 4096  # request IDs we gave up on whose late replies are dropped quietly
AGENT = "anysyncfs/0.1"

CertVerifier = Callable[[bytes, bytes], None]  # (TLS cert DER, device key) -> None or raises IntegrityError


class Role(enum.IntEnum):
    DIALLER = 1  # opened the connection; pins the listener's device key
    LISTENER = 2  # accepted it


class State(enum.Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_AUTH = "await-auth"
    ESTABLISHED = "established"
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class Established:
    peer_device: bytes
    peer_account: bytes
    peer_name: str
    version: int


@dataclass(frozen=True, slots=True)
class RequestReceived:
    id: int
    body: m.RequestBody


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    id: int
    body: m.ResponseBody


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    id: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class NotifyReceived:
    body: m.NotifyBody


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


Event = Established | RequestReceived | ResponseReceived | ErrorReceived | NotifyReceived | Closed


def transcript(version: int, dialler_hello: bytes, listener_hello: bytes) -> bytes:
    return crypto.blake3(TRANSCRIPT_CONTEXT + version.to_bytes(2, "big") + crypto.blake3(dialler_hello)
                         + crypto.blake3(listener_hello))


def auth_message(role: Role, digest: bytes) -> bytes:
    return AUTH_CONTEXT + bytes((role,)) + digest


class Session:
    """One side of one connection. Raises :class:`ProtocolError` / :class:`AuthenticationFailed` from
    :meth:`next_event` on anything a correct peer would not send; the session is then closed."""

    def __init__(
        self,
        role: Role,
        device: crypto.SigningKey,
        device_cert: bytes,
        own_cert: bytes,
        verify_cert: CertVerifier,
        *,
        pinned_device: bytes | None = None,
        observed_peer_cert: bytes | None = None,
        nonce: bytes | None = None,
        versions: tuple[int, int] = (m.PROTOCOL_VERSION, m.PROTOCOL_VERSION),
        max_incoming: int = MAX_INCOMING,
        max_incoming_bytes: int = MAX_INCOMING_BYTES,
    ) -> None:
        if role is Role.DIALLER and (pinned_device is None or observed_peer_cert is None):
            raise ValueError("a dialler needs the pinned device key and the certificate TLS showed")
        self.role = role
        self.state = State.AWAIT_HELLO
        self._device = device
        self._verify_cert = verify_cert
        self._pinned = pinned_device
        self._observed = observed_peer_cert
        self._versions = versions
        self._hello = m.encode(m.Hello(versions[0], versions[1], nonce or crypto.random_bytes(m.NONCE_LEN), own_cert,
                                       device_cert, AGENT))
        self._peer_hello = b""
        self._peer: keys.DeviceCert | None = None
        self.version = 0
        self.peer: Established | None = None
        self._frames = FrameDecoder(PRE_AUTH_BODY)
        self._out = bytearray(encode_frame(FrameType.HELLO, self._hello))
        self._next_id = 1
        self._outstanding: set[int] = set()
        self._abandoned: OrderedDict[int, None] = OrderedDict()
        self.max_incoming = max_incoming
        self.max_incoming_bytes = max_incoming_bytes
        self._incoming: dict[int, int] = {}  # request id -> body bytes, for requests received and not answered
        self._incoming_bytes = 0  # sum of those, plus the body of a request frame admitted and still arriving
        self._admitted = False  # the frame whose header the decoder holds is a request already counted
        self.blocked = False  # the next frame is a request that does not fit: read nothing until a reply is sent
        self.peak_incoming_bytes = 0  # high-water mark of incoming_bytes (tests and diagnostics)
        self.close_reason = ""

    # ------------------------------------------------------------------------------------------ bytes
    def receive_data(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self._frames.receive_data(data)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def mid_frame(self) -> bool:
        return self._frames.mid_frame

    @property
    def incoming_bytes(self) -> int:
        """Body bytes of the peer's requests in flight, the one being received included."""
        return self._incoming_bytes

    @property
    def incoming_requests(self) -> int:
        return len(self._incoming)

    @property
    def frames_received(self) -> int:
        """Complete frames received so far (the one in progress, if any, is number ``frames_received``)."""
        return self._frames.completed

    # ------------------------------------------------------------------------------------------ events
    def next_event(self) -> Event | None:
        if self.state is State.CLOSED:
            return None
        try:
            while self.state is not State.CLOSED:  # frames that produce no event (Hello, dropped replies) loop
                head = self._frames.header()  # checked against the limits of the current state
                if head is None:
                    return None
                if head[0] is FrameType.REQUEST and self.state is State.ESTABLISHED and not self._admitted:
                    if not self._fits(head[1]):
                        self.blocked = True
                        return None
                    self._admitted = True
                    self._incoming_bytes += head[1]
                    self.peak_incoming_bytes = max(self.peak_incoming_bytes, self._incoming_bytes)
                self.blocked = False
                frame = self._frames.next_frame()
                if frame is None:
                    return None
                self._admitted = False
                kind, body = frame
                handler = _TRANSITIONS.get((self.state, kind))
                if handler is None:
                    if kind is FrameType.CLOSE:
                        return self._on_close(body)
                    raise ProtocolError(f"unexpected {kind.name} frame while {self.state.value}")
                event = handler(self, body)
                if event is not None:
                    return event
            return None
        except (ProtocolError, AuthenticationFailed):
            self.state = State.CLOSED
            raise

    def _fits(self, body_len: int) -> bool:
        """Whether one more request of ``body_len`` bytes stays within the in-flight bounds (one request alone
        always fits: the frame limit bounds it)."""
        if len(self._incoming) >= self.max_incoming:
            return False
        return not self._incoming or self._incoming_bytes + body_len <= self.max_incoming_bytes

    def _on_hello(self, body: bytes) -> Event | None:
        hello = m.decode(body, m.Hello)
        try:
            cert = keys.parse_device_cert(hello.device_cert)
        except (DecodeError, BadSignature) as e:
            raise AuthenticationFailed(f"peer's device certificate is invalid: {e}") from None
        if self.role is Role.DIALLER:
            assert self._pinned is not None and self._observed is not None
            if not crypto.ct_equal(cert.device, self._pinned):
                raise AuthenticationFailed(f"peer is {ids.device_text(cert.device)}, expected "
                                           f"{ids.device_text(self._pinned)}")
            if not crypto.ct_equal(hello.cert, self._observed):
                raise AuthenticationFailed("peer's Hello names another certificate than its TLS handshake")
        self._verify_cert(hello.cert, cert.device)
        low = max(self._versions[0], hello.version_min)
        high = min(self._versions[1], hello.version_max)
        if high < low:
            raise ProtocolError(f"no common protocol version (we speak {self._versions[0]}..{self._versions[1]}, "
                                f"the peer {hello.version_min}..{hello.version_max})")
        self.version = high
        self._peer_hello = body
        self._peer = cert
        self.state = State.AWAIT_AUTH
        signature = self._device.sign(auth_message(self.role, self._transcript()))
        self._out += encode_frame(FrameType.AUTH, m.encode(m.Auth(self.version, signature)))
        return None

    def _transcript(self) -> bytes:
        if self.role is Role.DIALLER:
            return transcript(self.version, self._hello, self._peer_hello)
        return transcript(self.version, self._peer_hello, self._hello)

    def _on_auth(self, body: bytes) -> Event:
        auth = m.decode(body, m.Auth)
        assert self._peer is not None
        if auth.version != self.version:
            raise ProtocolError(f"peer chose protocol version {auth.version}, we chose {self.version}")
        peer_role = Role.LISTENER if self.role is Role.DIALLER else Role.DIALLER
        try:
            crypto.verify(self._peer.device, auth_message(peer_role, self._transcript()), auth.signature)
        except BadSignature:
            raise AuthenticationFailed("peer's session signature does not verify") from None
        self.state = State.ESTABLISHED
        self._frames.limits = MAX_BODY
        self.peer = Established(self._peer.device, self._peer.account, self._peer.name, self.version)
        return self.peer

    def _on_request(self, body: bytes) -> Event:
        req = m.decode(body, m.Request)
        if req.id in self._incoming:
            raise ProtocolError(f"request id {req.id} is already in flight")
        self._incoming[req.id] = len(body)  # counted in _incoming_bytes since its header was admitted
        return RequestReceived(req.id, req.body)

    def _settle(self, request_id: int) -> bool:
        """Whether a reply to ``request_id`` is expected (False: one we abandoned; drop it)."""
        if request_id in self._outstanding:
            self._outstanding.discard(request_id)
            return True
        if request_id in self._abandoned:
            del self._abandoned[request_id]
            return False
        raise ProtocolError(f"reply to request id {request_id}, which was never sent")

    def _on_response(self, body: bytes) -> Event | None:
        resp = m.decode(body, m.Response)
        return ResponseReceived(resp.id, resp.body) if self._settle(resp.id) else None

    def _on_error(self, body: bytes) -> Event | None:
        err = m.decode(body, m.ErrorReply)
        return ErrorReceived(err.id, err.code, err.message) if self._settle(err.id) else None

    def _on_notify(self, body: bytes) -> Event:
        return NotifyReceived(m.decode(body, m.Notify).body)

    def _on_close(self, body: bytes) -> Event:
        reason = m.decode(body, m.Close).reason
        self.state = State.CLOSED
        self.close_reason = reason
        return Closed(reason)

    # ------------------------------------------------------------------------------------------ sending
    def _require_established(self) -> None:
        if self.state is not State.ESTABLISHED:
            raise ProtocolError(f"cannot send while {self.state.value}")

    def send_request(self, body: Any) -> tuple[int, bytes]:
        self._require_established()
        rid = self._next_id
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        while rid in self._outstanding or rid in self._abandoned:
            rid = self._next_id
            self._next_id = self._next_id % 0xFFFFFFFF + 1
        self._outstanding.add(rid)
        return rid, encode_frame(FrameType.REQUEST, m.encode(m.Request(rid, body)))

    def abandon(self, request_id: int) -> None:
        """We stopped waiting for ``request_id`` (timeout, cancellation): a late reply is dropped, not an error."""
        if request_id in self._outstanding:
            self._outstanding.discard(request_id)
            self._abandoned[request_id] = None
            while len(self._abandoned) > MAX_ABANDONED:
                self._abandoned.popitem(last=False)

    def _reply_to(self, request_id: int) -> None:
        self._require_established()
        if request_id not in self._incoming:
            raise ValueError(f"no request {request_id} is waiting for a reply")
        self.release(request_id)

    def release(self, request_id: int) -> None:
        """Stop counting a request in flight (it is answered, or will never be: its handler ended without a
        reply). Frees room for a blocked request; no-op for an ID not in flight."""
        size = self._incoming.pop(request_id, None)
        if size is not None:
            self._incoming_bytes -= size

    def send_response(self, request_id: int, body: Any) -> bytes:
        self._reply_to(request_id)
        return encode_frame(FrameType.RESPONSE, m.encode(m.Response(request_id, body)))

    def send_error(self, request_id: int, code: m.ErrorCode, message: str) -> bytes:
        self._reply_to(request_id)
        return encode_frame(FrameType.ERROR, m.encode(m.ErrorReply(request_id, int(code), message[: m.MAX_TEXT])))

    def send_notify(self, body: Any) -> bytes:
        self._require_established()
        return encode_frame(FrameType.NOTIFY, m.encode(m.Notify(body)))

    def send_close(self, reason: str) -> bytes:
        if self.state is State.CLOSED:
            return b""
        self.state = State.CLOSED
        return encode_frame(FrameType.CLOSE, m.encode(m.Close(reason[: m.MAX_TEXT])))


_TRANSITIONS: dict[tuple[State, FrameType], Callable[[Session, bytes], Event | None]] = {
    (State.AWAIT_HELLO, FrameType.HELLO): Session._on_hello,
    (State.AWAIT_AUTH, FrameType.AUTH): Session._on_auth,
    (State.ESTABLISHED, FrameType.REQUEST): Session._on_request,
    (State.ESTABLISHED, FrameType.RESPONSE): Session._on_response,
    (State.ESTABLISHED, FrameType.ERROR): Session._on_error,
    (State.ESTABLISHED, FrameType.NOTIFY): Session._on_notify,
}
