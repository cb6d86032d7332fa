"""Hostile peers for tests: they run the real TLS 1.3 transport and the real session handshake, so the honest
side authenticates them, and then answer (or ask) whatever a test tells them to.

* :class:`HostileProvider` listens like a node. By default it answers honestly from a :class:`SpaceCopy` (the data
  of another replica of the space); a test replaces the answer to one kind of request with a forged body, raw
  bytes (an oversized or partial frame) or an error. It can also skip TLS or the session and send garbage.
* :class:`RawClient` dials a node like a device would, then writes whatever bytes a test gives it and reports how
  (and how fast) the node hung up.
* :class:`NodeThread` runs a real :class:`~anysyncfs.net.node.Node` in its own thread and trio loop, so that a
  synchronous hypothesis test can throw many short-lived connections at one long-running node.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from anysyncfs.core import bao, crypto, keys
from anysyncfs.core.address import PeerAddress
from anysyncfs.core.reconcile import IdSet, Reconciler
from anysyncfs.errors import IntegrityError, NetworkError
from anysyncfs.net.connection import Connection, Timeouts
from anysyncfs.net.endpoint import Endpoint
from anysyncfs.net.node import Node
from anysyncfs.net.tls import (
    TlsIdentity,
    device_cert_name,
    make_tls_identity,
    open_tls_stream,
    server_stream,
    verify_cert_issuer,
)
from anysyncfs.protocol import messages as m
from anysyncfs.protocol.frames import FrameDecoder, FrameType
from anysyncfs.protocol.session import (
    Closed,
    Established,
    RequestReceived,
    Role,
    Session,
)
from anysyncfs.replica import Replica

LOOPBACK = "127.0.0.1"
RECEIVE_SIZE = 64 * 1024
HANGUP_BOUND_S = 20.0  # "closed promptly": generous, so a loaded machine never fails a test on timing


def random_identity(name: str) -> keys.Identity:
    """A fresh account and device with a valid device certificate: anyone can make one, no phrase needed."""
    account, device = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    cert = keys.issue_device_cert(account, device.public, name, time.time_ns() // 1000)
    return keys.Identity(account, device, cert, name)


def flip(data: bytes, offset: int) -> bytes:
    """``data`` with the byte at ``offset`` (negative: from the end) inverted."""
    i = offset % len(data)
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


# ------------------------------------------------------------------------------------------------ space data
@dataclass
class SpaceCopy:
    """What a provider holds of a space: verbatim bytes, exactly as another replica made them."""

    header: bytes
    acl: dict[bytes, bytes]  # ACL record ID -> raw record
    changes: dict[bytes, bytes]  # change ID -> raw change
    blobs: dict[bytes, bytes]  # blob ID -> bytes
    heads: list[bytes]
    hidden: set[bytes] = field(default_factory=set)  # changes held but left out of reconciliation
    signed_heads: list[bytes] = field(default_factory=list)  # signed heads records it serves (GetHeads)

    @classmethod
    def of(cls, replica: Replica) -> SpaceCopy:
        change_ids = replica.change_ids()
        raws = replica.get_changes(change_ids, 1 << 40)
        assert len(raws) == len(change_ids)
        return cls(
            header=replica.header_raw,
            acl=dict(replica.acl_raws()),
            changes={crypto.blake3(raw): raw for raw in raws},
            blobs={b: replica.get_blob(b) for b in replica.blob_ids()},
            heads=list(replica.heads),
        )

    def id_set(self, kind: int) -> IdSet:
        if kind == m.SetKind.ACL:
            return IdSet(self.acl)
        if kind == m.SetKind.CHANGES:
            return IdSet(c for c in self.changes if c not in self.hidden)
        return IdSet(self.blobs)


# ------------------------------------------------------------------------------------------------ provider
@dataclass(frozen=True)
class RawBytes:
    """A reply that is not a frame the session would make: written to the stream as it is."""

    data: bytes


@dataclass(frozen=True)
class Refuse:
    """Answer with an error frame."""

    code: m.ErrorCode
    message: str


# (request body, the honest reply) -> what to send instead: a response body, RawBytes or Refuse
Tamper = Callable[[Any, Any], Any]
Mode = Literal["session", "garbage-instead-of-tls", "garbage-after-tls"]


@dataclass
class ProviderConnection:
    """What one connection to the hostile provider saw."""

    requests: list[Any] = field(default_factory=list)  # request bodies, in arrival order
    established: bool = False
    close_reason: str | None = None  # the reason in the dialler's Close frame (None: it hung up without one)
    ended: trio.Event = field(default_factory=trio.Event)  # the dialler hung up (or the stream broke)


class HostileProvider:
    """A provider whose replies a test controls (see the module docstring). Serve it in a nursery with
    ``address = await nursery.start(provider.serve)``."""

    def __init__(self, space: SpaceCopy | None = None, *, mode: Mode = "session", garbage: bytes = b"",
                 tls: TlsIdentity | None = None) -> None:
        self.identity = random_identity("hostile provider")
        self.tls = tls or make_tls_identity(self.identity.device)
        self.space = space
        self.mode = mode
        self.garbage = garbage
        self.tamper: dict[type, Tamper] = {}
        self.connections: list[ProviderConnection] = []
        self.address: PeerAddress | None = None

    async def serve(self, *, task_status: trio.TaskStatus[PeerAddress] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        port = listeners[0].socket.getsockname()[1]
        self.address = PeerAddress(self.identity.device_id, LOOPBACK, port)
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started(self.address)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                nursery.start_soon(self._connection, await listener.accept())

    async def _connection(self, tcp: trio.SocketStream) -> None:
        record = ProviderConnection()
        self.connections.append(record)
        stream: trio.abc.Stream = tcp
        try:
            if self.mode == "garbage-instead-of-tls":
                await tcp.send_all(self.garbage)
                await _drain(tcp)
                return
            stream = server_stream(tcp, self.tls)
            await stream.do_handshake()
            if self.mode == "garbage-after-tls":
                await stream.send_all(self.garbage)
                await _drain(stream)
                return
            await self._session(stream, record)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, IntegrityError):
            pass  # the dialler gave up on us: exactly what the tests want to see
        finally:
            record.ended.set()
            await trio.aclose_forcefully(stream)

    async def _session(self, stream: trio.abc.Stream, record: ProviderConnection) -> None:
        ident = self.identity
        session = Session(Role.LISTENER, ident.device, ident.device_cert, self.tls.cert_der, verify_cert_issuer)
        await stream.send_all(session.data_to_send())
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            session.receive_data(bytes(data))
            while (event := session.next_event()) is not None:
                if isinstance(event, Established):
                    record.established = True
                elif isinstance(event, Closed):
                    record.close_reason = event.reason
                elif isinstance(event, RequestReceived):
                    record.requests.append(event.body)
                    await stream.send_all(self._reply(session, event))
            await stream.send_all(session.data_to_send())

    def _reply(self, session: Session, event: RequestReceived) -> bytes:
        honest = self.honest(event.body)
        tamper = self.tamper.get(type(event.body))
        reply = tamper(event.body, honest) if tamper is not None else honest
        if isinstance(reply, RawBytes):
            return reply.data
        if isinstance(reply, Refuse):
            return session.send_error(event.id, reply.code, reply.message)
        return session.send_response(event.id, reply)

    def honest(self, body: Any) -> Any:
        """What a correct provider holding :attr:`space` answers."""
        s = self.space
        if s is None:
            return Refuse(m.ErrorCode.NOT_FOUND, "no such space here")
        if isinstance(body, m.OpenSpace):
            return m.SpaceInfo(s.header, list(s.acl.values()), s.heads)
        if isinstance(body, m.Reconcile):
            reply = Reconciler(s.id_set(body.set), initiator=False).reconcile(body.message)
            return m.ReconcileReply(reply or b"")
        if isinstance(body, m.GetChanges):
            return m.Changes([s.changes[c] for c in body.ids if c in s.changes])
        if isinstance(body, m.GetBlob):
            if body.blob not in s.blobs:
                return Refuse(m.ErrorCode.NOT_FOUND, "blob not held here")
            return m.Blob(s.blobs[body.blob])
        if isinstance(body, m.GetBlobRanges):
            if body.blob not in s.blobs:
                return Refuse(m.ErrorCode.NOT_FOUND, "blob not held here")
            return m.BlobSlice(blob_slice(s.blobs[body.blob], body.ranges))
        if isinstance(body, m.HasBlobs):
            return m.Bits(m.bits_of([b in s.blobs for b in body.ids]))
        if isinstance(body, m.GetHeads):
            return m.HeadsRecords(list(s.signed_heads))
        if isinstance(body, m.PutHeads):
            return m.Accepted(1, 0, [])
        if isinstance(body, (m.PutChanges, m.PutAcl)):
            count = len(body.changes) if isinstance(body, m.PutChanges) else len(body.records)
            return m.Accepted(0, count, [])
        return m.Ok()  # PutBlob, PushSpace

    def only_connection(self) -> ProviderConnection:
        assert len(self.connections) == 1, f"{len(self.connections)} connections"
        return self.connections[0]


def blob_slice(data: bytes, ranges: list[tuple[int, int]]) -> bytes:
    """What an honest peer answers to GetBlobRanges (protocol.md 70.12)."""
    _, nodes = bao.outboard_nodes(data)
    return bao.encode_slice(lambda o, n: data[o : o + n], nodes, len(data), bao.wanted(len(data), ranges))


async def _drain(stream: trio.abc.Stream) -> None:
    """Read and discard until the other side hangs up."""
    while await stream.receive_some(RECEIVE_SIZE):
        pass


@asynccontextmanager
async def serving(provider: HostileProvider) -> AsyncIterator[PeerAddress]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(provider.serve)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------------ client
@dataclass
class Hangup:
    """How a peer ended a connection we were abusing."""

    close_reason: str | None  # the reason of its Close frame (None: it hung up without one)
    frames: list[tuple[FrameType, bytes]]  # every frame it sent after the handshake, Close included


class RawClient:
    """A dialler that authenticates for real, then sends arbitrary bytes."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], session: Session | None) -> None:
        self.stream = stream
        self.session = session
        self._frames = FrameDecoder()

    @classmethod
    async def connect(cls, address: PeerAddress, identity: keys.Identity, tls: TlsIdentity | None = None, *,
                      handshake: bool = True, hello: bytes | None = None) -> RawClient:
        """TLS to ``address`` (pinning its device key); then, with ``handshake``, our Hello and Auth until the
        session is established. ``hello`` replaces our Hello frame (the handshake then is the test's business)."""
        tls = tls or make_tls_identity(identity.device)
        stream, peer_der = await open_tls_stream(address.host, address.port, tls, address.device, timeout=10)
        if not handshake:
            return cls(stream, None)
        session = Session(Role.DIALLER, identity.device, identity.device_cert, tls.cert_der, verify_cert_issuer,
                          pinned_device=address.device, observed_peer_cert=peer_der)
        client = cls(stream, session)
        own_hello = session.data_to_send()
        await stream.send_all(own_hello if hello is None else hello)
        if hello is not None:
            return client
        with trio.fail_after(10):
            while session.peer is None:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise NetworkError("the node hung up during the handshake")
                session.receive_data(bytes(data))
                while session.peer is None and session.next_event() is not None:
                    pass
                await stream.send_all(session.data_to_send())
        return client

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def hangup(self, within: float = HANGUP_BOUND_S) -> Hangup:
        """Read until the peer hangs up (trio.TooSlowError if it does not within ``within`` seconds)."""
        frames: list[tuple[FrameType, bytes]] = []
        reason: str | None = None
        with trio.fail_after(within):
            while True:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                if not data:
                    break
                self._frames.receive_data(bytes(data))
                while (frame := self._frames.next_frame()) is not None:
                    frames.append(frame)
                    if frame[0] is FrameType.CLOSE:
                        reason = m.decode(frame[1], m.Close).reason
        await trio.aclose_forcefully(self.stream)
        return Hangup(reason, frames)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


async def tcp_garbage_hangup(address: PeerAddress, garbage: bytes, within: float = HANGUP_BOUND_S) -> None:
    """Send ``garbage`` on plain TCP (no TLS at all) and wait for the peer to hang up."""
    tcp = await trio.open_tcp_stream(address.host, address.port)
    try:
        with trio.fail_after(within):
            await tcp.send_all(garbage)
            while True:
                try:
                    if not await tcp.receive_some(RECEIVE_SIZE):
                        return
                except (trio.BrokenResourceError, OSError):
                    return
    finally:
        await trio.aclose_forcefully(tcp)


# ------------------------------------------------------------------------------------------------ nodes
@asynccontextmanager
async def running_node(path: Path, *, timeouts: Timeouts | None = None,
                       **options: Any) -> AsyncIterator[tuple[Node, PeerAddress]]:
    """A real node on a fresh loopback port (``timeouts`` replace its endpoint's, e.g. a short frame timeout;
    ``options`` go to :class:`Node`: quotas, connection limits)."""
    node = Node(path, **options)
    if timeouts is not None:
        node.endpoint.timeouts = timeouts
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(node.serve, LOOPBACK, 0)
            yield node, node.address(LOOPBACK, listeners[0].socket.getsockname()[1])
            nursery.cancel_scope.cancel()
    finally:
        node.close()


async def open_space_as(address: PeerAddress, identity: keys.Identity, space_id: bytes) -> m.SpaceInfo:
    """An honest client's OpenSpace over a fresh connection (the node still serves members)."""
    conn = await Endpoint(identity).dial(address)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve)
            info = await conn.request(m.OpenSpace(space_id), timeout=HANGUP_BOUND_S)
            nursery.cancel_scope.cancel()
    finally:
        await conn.abort("done")
    assert isinstance(info, m.SpaceInfo)
    return info


@asynccontextmanager
async def connected(address: PeerAddress, identity: keys.Identity) -> AsyncIterator[Connection]:
    """An authenticated connection whose frames are being read (requests can be made) until the block ends."""
    conn = await Endpoint(identity).dial(address)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_serve_quietly, conn)
            yield conn
            nursery.cancel_scope.cancel()
    finally:
        await conn.abort("done")


async def _serve_quietly(conn: Connection) -> None:
    try:
        await conn.serve()
    except (NetworkError, IntegrityError):
        pass  # the node hung up on the hostile requests; the test checks conn.closed


class NodeThread:
    """A node serving 127.0.0.1 from its own thread and trio loop (for synchronous, hypothesis-driven tests).

    ``with NodeThread(path) as address: ...``; :attr:`failure` holds whatever ended the node's loop early."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failure: BaseException | None = None
        self.node: Node | None = None
        self._ready = threading.Event()
        self._address: PeerAddress | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._main, name="node", daemon=True)

    def __enter__(self) -> PeerAddress:
        self._thread.start()
        if not self._ready.wait(30) or self._address is None:
            raise RuntimeError(f"the node did not start: {self.failure!r}")
        return self._address

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._scope is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(30)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self.failure is None

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as e:  # noqa: BLE001 - recorded for the test to assert on
            self.failure = e
        finally:
            self._ready.set()
            if self.node is not None:
                self.node.close()

    def make_node(self) -> Node:
        """The node to serve (a subclass serves a hostile one)."""
        return Node(self.path)

    async def _serve(self) -> None:
        self.node = self.make_node()
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(self.node.serve, LOOPBACK, 0)
                self._address = self.node.address(LOOPBACK, listeners[0].socket.getsockname()[1])
                self._ready.set()


class RecordLogs(logging.Handler):
    """Collects the records of the anysyncfs loggers (from any thread) while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger("anysyncfs")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Self:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    def at_least(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


# ------------------------------------------------------------------------------------------------ certificates
def duplicate_extension_cert(device: crypto.SigningKey) -> bytes:
    """A TLS certificate "issued" by ``device`` that carries the same extension twice.

    X.509 builders refuse to make one, so two different extensions whose OIDs have the same length (subject key
    identifier 2.5.29.14, key usage 2.5.29.15) are built and the second OID is patched into the first: a peer that
    parses the extensions meets a duplicate (the signature no longer verifies, but parsing comes first)."""
    key = Ed25519PrivateKey.generate()  # the (unused) TLS key the certificate names
    name = device_cert_name(device.public)
    now = _dt.datetime.now(_dt.UTC)
    builder = (
        x509.CertificateBuilder().issuer_name(name).subject_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(hours=1)).not_valid_after(now + _dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier(bytes(20)), critical=False)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=False)
    )
    signer = Ed25519PrivateKey.from_private_bytes(device.seed)
    der = builder.sign(signer, None).public_bytes(serialization.Encoding.DER)
    key_usage_oid = bytes.fromhex("0603551d0f")  # OBJECT IDENTIFIER, 3 bytes, 2.5.29.15
    at = der.index(key_usage_oid)
    return der[:at] + bytes.fromhex("0603551d0e") + der[at + len(key_usage_oid):]

