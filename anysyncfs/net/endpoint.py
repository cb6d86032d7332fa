"""Dialling and accepting: TLS, then the session handshake, producing an established :class:`Connection`."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import trio

from ..core.address import PeerAddress
from ..core.keys import Identity
from ..errors import AuthenticationFailed, IntegrityError, NetworkError, ProtocolError
from ..protocol.session import Role, Session
from .connection import Connection, Handler, NotifyHandler, Timeouts
from .limits import ConnectionLimits, ConnectionSlots
from .tls import TlsIdentity, make_tls_identity, open_tls_stream, server_stream, verify_cert_issuer

TLS_RENEW_S = 86400.0

log = logging.getLogger(__name__)


class Endpoint:
    """This device's (or node's) network identity: its keys plus an ephemeral TLS certificate."""

    def __init__(self, identity: Identity, tls: TlsIdentity | None = None, *, timeouts: Timeouts | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        self.identity = identity
        self._tls = tls or make_tls_identity(identity.device)
        self._tls_made = time.monotonic()
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or ConnectionLimits()

    @property
    def tls(self) -> TlsIdentity:
        """The TLS certificate, renewed daily (a certificate is valid for 30 days; a node runs for months)."""
        if time.monotonic() - self._tls_made > TLS_RENEW_S:
            self._tls = make_tls_identity(self.identity.device)
            self._tls_made = time.monotonic()
        return self._tls

    def _session(self, role: Role, *, pinned: bytes | None = None, observed: bytes | None = None) -> Session:
        return Session(role, self.identity.device, self.identity.device_cert, self._tls.cert_der,
                       verify_cert_issuer, pinned_device=pinned, observed_peer_cert=observed,
                       max_incoming=self.limits.max_in_flight_requests,
                       max_incoming_bytes=self.limits.max_in_flight_bytes)

    async def dial(
        self, address: PeerAddress, *, handler: Handler | None = None, on_notify: NotifyHandler | None = None
    ) -> Connection:
        """Connect, pin the listener's device key, authenticate both sides. NetworkError / AuthenticationFailed."""
        stream, peer_der = await open_tls_stream(address.host, address.port, self.tls, address.device,
                                                 timeout=self.timeouts.handshake)
        conn = Connection(stream, self._session(Role.DIALLER, pinned=address.device, observed=peer_der),
                          label=str(address), handler=handler, on_notify=on_notify, timeouts=self.timeouts,
                          max_reply_bytes=self.limits.max_in_flight_bytes)
        try:
            await conn.handshake()
        except BaseException:
            await conn.abort("handshake failed")
            raise
        return conn

    async def accept(
        self, tcp: trio.SocketStream, *, handler: Handler | None = None, on_notify: NotifyHandler | None = None
    ) -> Connection | None:
        """Run TLS and the handshake on an accepted TCP stream; None (logged) when the peer fails them."""
        try:
            host, port = tcp.socket.getpeername()[:2]
            label = f"{host}:{port}"
        except OSError:
            label = "peer"
        stream = server_stream(tcp, self.tls)
        conn = Connection(stream, self._session(Role.LISTENER), label=label, handler=handler, on_notify=on_notify,
                          timeouts=self.timeouts, max_reply_bytes=self.limits.max_in_flight_bytes)
        try:
            with trio.fail_after(self.timeouts.handshake):
                await stream.do_handshake()
            await conn.handshake()
        except trio.TooSlowError:
            log.info("%s: handshake timed out", label)
        except (NetworkError, ProtocolError, AuthenticationFailed, IntegrityError) as e:
            log.info("%s: handshake failed after %d bytes: %s", label, conn.bytes_in, e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.info("%s: TLS handshake failed: %s", label, type(e).__name__)
        else:
            return conn
        await conn.abort("handshake failed")
        return None


ConnectionHandler = Callable[[Connection], Awaitable[None]]


async def serve_tcp(
    endpoint: Endpoint,
    host: str,
    port: int,
    on_connection: ConnectionHandler,
    *,
    handler: Handler | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port; every authenticated connection goes to ``on_connection`` in its own task.

    Connections over the endpoint's limits per address or in total (:class:`~.limits.ConnectionSlots`) are closed
    at accept, before TLS, with a log line."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    slots = ConnectionSlots(endpoint.limits)

    async def one(tcp: trio.SocketStream) -> None:
        try:
            host = str(tcp.socket.getpeername()[0])
        except OSError:
            host = "?"
        refused = slots.acquire(host)
        if refused is not None:
            if slots.should_log(host):
                log.warning("%s: connection refused: %s (%d refused since start)", host, refused, slots.refused)
            await trio.aclose_forcefully(tcp)
            return
        try:
            conn = await endpoint.accept(tcp, handler=handler)
            if conn is not None:
                await on_connection(conn)
        finally:
            slots.release(host)

    async with trio.open_nursery() as nursery:
        for ln in listeners:
            nursery.start_soon(_accept_loop, ln, one, nursery)
        task_status.started(listeners)


async def _accept_loop(
    listener: trio.SocketListener, one: Callable[[trio.SocketStream], Awaitable[None]], nursery: trio.Nursery
) -> None:
    async with listener:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as e:  # EMFILE and friends: wait and retry rather than die
                log.warning("accept failed: %s", e)
                await trio.sleep(0.5)
                continue
            nursery.start_soon(one, tcp)
