"""One authenticated connection: a trio stream driven by a sans-I/O :class:`~anysyncfs.protocol.Session`.

The connection owns the I/O and the clocks the session does not have: a handshake deadline, a deadline for a
frame that started arriving (a peer that stalls mid-frame is cut off), a deadline per request. Incoming requests
are served concurrently (each in its own task) by a handler; replies to our requests wake exactly the task
waiting for them. Anything that breaks the protocol or fails verification closes the connection; the caller
(peer manager, node) logs it and backs the peer off.

Back-pressure: while the session is :attr:`~anysyncfs.protocol.session.Session.blocked` (the peer's requests in
flight are at their bound) the connection reads nothing more until one of them is answered, so TCP flow control
holds the peer back; the stall clock of the frame in progress restarts afterwards (we were the ones not reading).
A request handler must therefore never wait for a request of its own on the same connection. Replies are bounded
too: a handler about to build a large reply (a blob, a batch of changes) first reserves its size
(:meth:`Connection.reserve_reply`), and waits while the replies being built or sent on this connection would
exceed ``max_reply_bytes`` — so small requests that ask for large answers cannot pin memory either.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from ..errors import AnysyncError, IntegrityError, NetworkError, ProtocolError
from ..protocol import messages as m
from ..protocol.frames import PRE_AUTH_MAX_FRAME
from ..protocol.session import (
    Closed,
    Established,
    ErrorReceived,
    NotifyReceived,
    RequestReceived,
    ResponseReceived,
    Session,
    State,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

RECEIVE_SIZE = 256 * 1024
HANDSHAKE_RECEIVE_SIZE = PRE_AUTH_MAX_FRAME  # before authentication, read no more than one handshake frame at once


@dataclass
class Timeouts:
    handshake: float = 10.0  # TLS + Hello/Auth
    frame: float = 30.0  # from the first byte of a frame to its last
    request: float = 60.0  # one request to its reply (a blob of 16 MiB on a slow link fits)


class RemoteError(AnysyncError):
    """The peer answered a request with an error frame."""

    exit_code = 14

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"peer refused: {message} (code {code})")
        self.code = code
        self.remote_message = message


class ServiceError(AnysyncError):
    """Raised by a request handler: sent back to the peer as an error frame; the connection stays up."""

    def __init__(self, code: m.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    reply: ResponseReceived | ErrorReceived | None = None


Handler = Callable[["Connection", Any], Awaitable[Any]]
NotifyHandler = Callable[["Connection", Any], Awaitable[None]]


class Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        session: Session,
        *,
        label: str,
        handler: Handler | None = None,
        on_notify: NotifyHandler | None = None,
        timeouts: Timeouts | None = None,
        max_reply_bytes: int | None = None,
    ) -> None:
        self.stream = stream
        self.session = session
        self.label = label
        self.handler = handler
        self.on_notify = on_notify
        self.timeouts = timeouts or Timeouts()
        self.peer: Established | None = None
        self.closed = trio.Event()
        self.close_reason = ""
        self._send_lock = trio.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._nursery: trio.Nursery | None = None
        self._room = trio.Event()  # set when a reply frees room for a blocked request
        self.max_reply_bytes = max_reply_bytes  # None: replies are not bounded
        self._reply_bytes = 0  # reserved by handlers whose replies are being built or sent
        self._reserved: dict[trio.lowlevel.Task, int] = {}
        self._reply_freed = trio.Event()
        self.peak_reply_bytes = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # ------------------------------------------------------------------------------------------ lifecycle
    async def _send(self, data: bytes) -> None:
        if not data:
            return
        async with self._send_lock:
            try:
                with trio.fail_after(self.timeouts.request):
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as e:
                raise NetworkError(f"{self.label}: connection lost while sending ({type(e).__name__})") from None
        self.bytes_out += len(data)

    async def _receive(self, deadline: float, max_bytes: int = RECEIVE_SIZE) -> bytes:
        try:
            with trio.fail_at(deadline):
                data = await self.stream.receive_some(max_bytes)
        except trio.TooSlowError:
            raise NetworkError(f"{self.label}: peer stalled") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise NetworkError(f"{self.label}: connection lost ({type(e).__name__})") from None
        if not data:
            raise NetworkError(f"{self.label}: connection closed by the peer")
        self.bytes_in += len(data)
        return bytes(data)

    async def handshake(self) -> Established:
        """Send our Hello, read until the session is established (within the handshake deadline)."""
        deadline = trio.current_time() + self.timeouts.handshake
        await self._send(self.session.data_to_send())
        while self.peer is None:
            data = await self._receive(deadline, HANDSHAKE_RECEIVE_SIZE)
            self.session.receive_data(data)
            while self.peer is None:
                event = self.session.next_event()  # raises ProtocolError / AuthenticationFailed
                await self._send(self.session.data_to_send())
                if event is None:
                    break
                if isinstance(event, Established):
                    self.peer = event
                elif isinstance(event, Closed):
                    raise NetworkError(f"{self.label}: peer closed the connection: {event.reason}")
        return self.peer

    async def serve(self) -> None:
        """Read and dispatch frames until the connection ends. Returns normally on a clean close; raises
        NetworkError / ProtocolError / IntegrityError otherwise (the connection is closed either way)."""
        assert self.peer is not None, "handshake first"
        failure: AnysyncError | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._read_loop(nursery)
                except (NetworkError, ProtocolError, IntegrityError) as e:
                    # Caught inside the nursery: trio's strict nurseries would wrap it in an exception group,
                    # which no caller's ``except ProtocolError`` matches.
                    failure = e
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            if failure is not None and not self.close_reason:
                self.close_reason = str(failure)  # our Close frame and our waiting requests say why
            await self._shutdown()
        if failure is not None:
            raise failure

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        deadline, frame_no = math.inf, -1
        while True:
            while True:
                event = self.session.next_event()
                if event is None:
                    break
                if isinstance(event, RequestReceived):
                    nursery.start_soon(self._serve_request, event)
                elif isinstance(event, (ResponseReceived, ErrorReceived)):
                    waiter = self._waiters.get(event.id)
                    if waiter is not None:
                        waiter.reply = event
                        waiter.event.set()
                elif isinstance(event, NotifyReceived):
                    if self.on_notify is not None:
                        nursery.start_soon(self._notify, event.body)
                elif isinstance(event, Closed):
                    self.close_reason = event.reason
                    return
            if self.session.blocked:  # the peer's requests in flight are at their bound: read nothing more
                self._room = trio.Event()
                await self._room.wait()
                frame_no = -1  # the frame in progress gets a fresh stall clock
                continue
            # Between frames a connection may be idle for ever; once a frame has started it must be complete
            # within the frame timeout, counted from its first byte (a peer dripping a byte at a time must not
            # keep one frame open for ever).
            if not self.session.mid_frame:
                deadline, frame_no = math.inf, -1
            elif frame_no != self.session.frames_received:  # the frame in progress is a new one
                deadline, frame_no = trio.current_time() + self.timeouts.frame, self.session.frames_received
            data = await self._receive(deadline)
            self.session.receive_data(data)

    async def _notify(self, body: Any) -> None:
        assert self.on_notify is not None
        try:
            await self.on_notify(self, body)
        except (NetworkError, ProtocolError, IntegrityError) as e:
            await self.abort(str(e))
        except Exception:  # noqa: BLE001 - a notification must not take the connection down
            log.exception("%s: handling a notification failed", self.label)

    async def _serve_request(self, event: RequestReceived) -> None:
        answered = False  # the session has stopped counting this request (it made our reply frame)
        try:
            if self.handler is None:
                raise ServiceError(m.ErrorCode.BAD_REQUEST, "this peer serves no requests")
            body = await self.handler(self, event.body)
            if self.session.state is State.CLOSED:
                return  # the peer hung up while we served it: nobody to answer (not its fault, nothing to log)
            frame = self.session.send_response(event.id, body)
            answered = True
            await self._send(frame)
        except ServiceError as e:
            answered = await self._send_error(event.id, e.code, str(e)) or answered
        except (ProtocolError, IntegrityError) as e:
            # The peer sent forged or malformed data: tell it, then hang up (the caller backs it off).
            log.warning("%s: %s: closing", self.label, e)
            answered = await self._send_error(event.id, m.ErrorCode.INVALID, str(e)) or answered
            await self.abort(f"invalid data: {e}")
        except NetworkError:
            await self.abort("connection lost")
        except Exception as e:  # noqa: BLE001 - one failed request must not take the connection down
            log.exception("%s: serving %s failed", self.label, type(event.body).__name__)
            answered = await self._send_error(event.id, m.ErrorCode.INTERNAL,
                                              f"internal error: {type(e).__name__}") or answered
        finally:
            if not answered:  # it never will be (the connection is ending): stop counting it all the same
                self.session.release(event.id)
            self._room.set()  # room for a request the session held back
            reserved = self._reserved.pop(trio.lowlevel.current_task(), 0)
            if reserved:
                self._reply_bytes -= reserved
                self._reply_freed.set()
                self._reply_freed = trio.Event()

    async def reserve_reply(self, size: int) -> None:
        """(In a request handler, before building a reply of about ``size`` bytes.) Wait until it fits the
        connection's reply budget — or nothing else is reserved — and hold it until the reply has been sent."""
        if self.max_reply_bytes is None or size <= 0:
            return
        while self._reply_bytes and self._reply_bytes + size > self.max_reply_bytes:
            await self._reply_freed.wait()
        task = trio.lowlevel.current_task()
        self._reserved[task] = self._reserved.get(task, 0) + size
        self._reply_bytes += size
        self.peak_reply_bytes = max(self.peak_reply_bytes, self._reply_bytes)

    async def _send_error(self, request_id: int, code: m.ErrorCode, message: str) -> bool:
        """Answer with an error frame; whether the session made one (sending it may still fail)."""
        try:
            frame = self.session.send_error(request_id, code, message)
        except (ProtocolError, ValueError):
            return False
        try:
            await self._send(frame)
        except NetworkError:
            pass
        return True

    # ------------------------------------------------------------------------------------------ requests
    async def request(self, body: Any, *, timeout: float | None = None) -> Any:
        """Send a request and wait for its reply body; RemoteError for an error reply, NetworkError when the
        connection ends or the reply is late."""
        if self.closed.is_set():
            raise NetworkError(f"{self.label}: connection is closed")
        rid, frame = self.session.send_request(body)
        waiter = self._waiters[rid] = _Waiter()
        try:
            await self._send(frame)
            with trio.move_on_after(timeout if timeout is not None else self.timeouts.request) as scope:
                await waiter.event.wait()  # set by the reply, or by _shutdown when the connection ends
            if scope.cancelled_caught:
                self.session.abandon(rid)
                raise NetworkError(f"{self.label}: no reply to {type(body).__name__} in time")
        finally:
            self._waiters.pop(rid, None)
        reply = waiter.reply
        if reply is None:
            raise NetworkError(f"{self.label}: connection closed ({self.close_reason or 'no reason given'})")
        if isinstance(reply, ErrorReceived):
            raise RemoteError(reply.code, reply.message)
        return reply.body

    async def notify(self, body: Any) -> None:
        await self._send(self.session.send_notify(body))

    # ------------------------------------------------------------------------------------------ closing
    async def abort(self, reason: str) -> None:
        """Close now (protocol violation, shutdown): a Close frame if possible, then the stream."""
        if not self.close_reason:
            self.close_reason = reason
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for w in self._waiters.values():
            w.event.set()
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                frame = self.session.send_close(self.close_reason or "closing")
                if frame:
                    async with self._send_lock:
                        await self.stream.send_all(frame)
            except Exception:  # noqa: BLE001 - best effort
                pass
            try:
                await self.stream.aclose()
            except Exception:  # noqa: BLE001
                pass



async def while_serving(conn: Connection, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` (which makes requests on ``conn``) while ``conn``'s frames are read; stop reading after it.

    Errors come out as themselves, never wrapped in an exception group (trio's nurseries are strict): first a
    violation the peer committed that the reader found (ProtocolError / IntegrityError: callers back such a peer
    off), then what ``work`` raised, then NetworkError when the connection ended before ``work`` finished."""
    done: list[T] = []
    read_failure: AnysyncError | None = None
    work_failure: Exception | None = None

    async def read(scope: trio.CancelScope) -> None:
        nonlocal read_failure
        try:
            await conn.serve()
        except (NetworkError, ProtocolError, IntegrityError) as e:
            log.info("%s: %s", conn.label, e)
            read_failure = e
        scope.cancel()  # the connection is over: so is ``work``

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, nursery.cancel_scope)
        try:
            done.append(await work())
        except Exception as e:  # noqa: BLE001 - re-raised as itself below, outside the nursery
            work_failure = e
        nursery.cancel_scope.cancel()
    if isinstance(read_failure, IntegrityError):  # ProtocolError is one
        raise read_failure
    if work_failure is not None:
        raise work_failure
    if not done:
        raise NetworkError(f"{conn.label}: connection closed ({conn.close_reason or 'no reason given'})")
    return done[0]
