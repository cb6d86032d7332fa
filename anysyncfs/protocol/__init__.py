"""Wire protocol: frames, messages and the sans-I/O session state machine (bytes in, events out).

Nothing here opens a socket or starts a task: :mod:`anysyncfs.net` moves the bytes.
"""

from .frames import FrameDecoder, FrameType, encode_frame
from .messages import ErrorCode
from .session import (
    Closed,
    Established,
    ErrorReceived,
    Event,
    NotifyReceived,
    RequestReceived,
    ResponseReceived,
    Role,
    Session,
)

__all__ = [
    "FrameDecoder", "FrameType", "encode_frame", "ErrorCode", "Closed", "Established", "ErrorReceived", "Event",
    "NotifyReceived", "RequestReceived", "ResponseReceived", "Role", "Session",
]
