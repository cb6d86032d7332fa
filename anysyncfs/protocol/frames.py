"""Length-prefixed typed frames (docs/protocol.md, 70.2).

Frame layout (all integers big-endian)::

    offset  size  field
    0       4     length: bytes that follow this field (type + body), 1 .. MAX_FRAME_LEN
    4       1     frame type (FrameType)
    5       n     body: msgpack of the message for that type (length - 1 bytes)

Every frame type has its own body limit (a Hello is small; only responses and requests that carry a blob may be
large), checked from the length field before the body is buffered, so a peer can never make us hold more than
one bounded frame. Before the session is authenticated only HELLO, AUTH and CLOSE are allowed at all
(:data:`PRE_AUTH_BODY`), each with a limit of a few KiB: a stranger cannot make us buffer a large frame.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping

from ..core.blob import MAX_BLOB_LEN
from ..errors import ProtocolError

LENGTH = struct.Struct(">I")  # the length field
HEADER_LEN = LENGTH.size + 1  # length + type byte
MESSAGE_OVERHEAD = 4096  # msgpack envelope around the largest payload (ids, field headers)
# A PutBlob carrying one blob of the largest size with its outboard (protocol.md 50.8: 64 B per 16 KiB group).
MAX_FRAME_LEN = MAX_BLOB_LEN + (-(-MAX_BLOB_LEN // 16384) - 1) * 64 + MESSAGE_OVERHEAD
SMALL_FRAME_LEN = 64 * 1024  # errors, notifications, close
# Handshake frames. The largest legal Hello (TLS certificate of 4,096 B, device certificate of 512 B, agent of 256
# four-byte characters) encodes to 5,678 bytes; a real one is about 700. An Auth is at most 70 bytes, a Close at
# most 1,028 (a reason of 256 four-byte characters).
HELLO_FRAME_LEN = 6 * 1024
AUTH_FRAME_LEN = 256
PRE_AUTH_CLOSE_LEN = 2 * 1024


class FrameType(enum.IntEnum):
    HELLO = 0x01  # first frame of each side: versions, nonce, certificates
    AUTH = 0x02  # second frame of each side: chosen version + transcript signature
    REQUEST = 0x10  # [request id, request body]
    RESPONSE = 0x11  # [request id, response body]
    ERROR = 0x12  # [request id, error code, message]: the request failed
    NOTIFY = 0x13  # [notification body]: no reply expected (live push of heads)
    CLOSE = 0x20  # [reason]: the sender is closing the connection


MAX_BODY = {
    FrameType.HELLO: HELLO_FRAME_LEN,
    FrameType.AUTH: AUTH_FRAME_LEN,
    FrameType.REQUEST: MAX_FRAME_LEN,
    FrameType.RESPONSE: MAX_FRAME_LEN,
    FrameType.ERROR: SMALL_FRAME_LEN,
    FrameType.NOTIFY: SMALL_FRAME_LEN,
    FrameType.CLOSE: SMALL_FRAME_LEN,
}

# Before authentication: the only frames a correct peer sends, and how large they may be. Any other type is refused
# from its header, before its body is read.
PRE_AUTH_BODY = {
    FrameType.HELLO: HELLO_FRAME_LEN,
    FrameType.AUTH: AUTH_FRAME_LEN,
    FrameType.CLOSE: PRE_AUTH_CLOSE_LEN,
}
PRE_AUTH_MAX_FRAME = HEADER_LEN + max(PRE_AUTH_BODY.values())  # bytes a handshake read needs at most


def encode_frame(kind: FrameType, body: bytes) -> bytes:
    if len(body) > MAX_BODY[kind]:
        raise ProtocolError(f"{kind.name} frame of {len(body)} bytes exceeds its limit of {MAX_BODY[kind]}")
    return LENGTH.pack(len(body) + 1) + bytes((kind,)) + body


class FrameDecoder:
    """Accumulates received bytes and yields complete frames; raises :class:`ProtocolError` as soon as a header
    is invalid (unknown type, a type :attr:`limits` does not allow, length over that type's limit), before
    buffering the body. The session sets :attr:`limits` (:data:`PRE_AUTH_BODY` until authenticated)."""

    def __init__(self, limits: Mapping[FrameType, int] = MAX_BODY) -> None:
        self.limits = limits
        self._buf = bytearray()
        self._need: tuple[FrameType, int] | None = None  # type and body length of the frame being received
        self.completed = 0  # frames returned so far (a caller timing each frame sees when a new one begins)

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def mid_frame(self) -> bool:
        """True when part of a frame has arrived (a peer that stalls here is timed out by the caller)."""
        return bool(self._buf) or self._need is not None

    def header(self) -> tuple[FrameType, int] | None:
        """Type and body length of the next frame once its header has arrived (checked against :attr:`limits`);
        None while fewer than 5 bytes of it are here."""
        if self._need is None:
            if len(self._buf) < HEADER_LEN:
                return None
            (length,) = LENGTH.unpack_from(self._buf)
            type_byte = self._buf[4]
            try:
                kind = FrameType(type_byte)
            except ValueError:
                raise ProtocolError(f"unknown frame type 0x{type_byte:02x}") from None
            limit = self.limits.get(kind)
            if limit is None:
                raise ProtocolError(f"{kind.name} frame not allowed before authentication")
            if length < 1 or length - 1 > limit:
                raise ProtocolError(f"{kind.name} frame of {length - 1} bytes exceeds its limit of {limit}")
            self._need = (kind, length - 1)
            del self._buf[:HEADER_LEN]
        return self._need

    def next_frame(self) -> tuple[FrameType, bytes] | None:
        if self.header() is None:
            return None
        assert self._need is not None
        kind, size = self._need
        if len(self._buf) < size:
            return None
        body = bytes(self._buf[:size])
        del self._buf[:size]
        self._need = None
        self.completed += 1
        return kind, body
