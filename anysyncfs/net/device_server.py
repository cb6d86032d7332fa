"""A device answering sessions: the provider's request handling (:class:`~.node.Node`) over this device's own
replicas, so two members sync directly, without a provider (issue 13, docs/protocol.md 70.13).

What differs from a provider, and why:

* It holds only its own replicas, and answers a connection only if the peer's account is a member of one of them:
  a stranger is closed right after authentication, before it can ask anything (it learns no space ID, name or
  size). A member asking about a space it is not a member of — or one this device does not hold — gets the same
  FORBIDDEN either way, so it cannot probe which spaces the device holds.
* It takes no new spaces (``PushSpace``), no uploads (``PutBlob``: members fetch blobs from each other with
  ``GetBlob``; uploading is for providers, which must confirm what they hold) and no joiners (invites are
  answered by providers). Signed heads (70.9) judge providers only: a device neither keeps nor serves them.
* Every replica call runs through the device's own :class:`~.runner.Runner` — in a mount, the adapter's lock with
  the open batch set aside for changes received — and changes received here reach ``on_changed`` (the kernel's
  caches of what they touched are invalidated) like changes the device fetched itself.
* Head announcements (``Heads``) go to every subscribed connection whenever this device's heads move, whatever
  moved them (a local commit, a change received here or fetched elsewhere): that is the live push towards
  devices that dialled us.
* It answers ``GetVault`` and ``PutVault`` from its own account only (a device certified by the same account key:
  one being restored from the phrase, found on the LAN, 70.15; or another device of the account syncing a space
  with this one, 70.16), about its own account's discovery ID only: a provider answers anyone because its vault
  is unlinkable to an account, while a device's is by definition its own account's. Anyone else gets the refusal
  of a space not held here. A pushed record is checked as a provider checks one, and kept only when newer than
  the one held and losing none of its entries (:func:`~.vault_sync.keep_from_device`).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from ..core import ids
from ..core.address import PeerAddress
from ..core.address_record import AddressRecord, parse_address_record
from ..core.reconcile import IdSet
from ..core.vault import VaultKeys
from ..errors import NotFound, UsageError
from ..protocol import messages as m
from ..replica import Replica
from ..replica.address_board import AddressBoard
from ..replica.ledger import Usage
from ..replica.quota import QuotaExceeded
from ..replica.vault_board import VaultPolicy
from ..store.db import Store
from .connection import Connection, ServiceError
from .endpoint import Endpoint
from .node import Node
from .runner import Runner
from .vault_sync import keep_from_device

log = logging.getLogger(__name__)

DEFAULT_DEVICE_PORT = 7734  # a provider's default is 7733
ANNOUNCE_POLL_S = 0.05  # how often the heads of the served replicas are looked at (an attribute read)
_REFUSED = "not available to you here"


@dataclass(frozen=True)
class ListenSpec:
    """``-o listen=HOST:PORT``: where a device accepts sessions. ``host`` None: every interface. ``fallback``:
    take a free port when ``port`` is in use (the default port only: an explicit one must be had or fail)."""

    host: str | None
    port: int
    fallback: bool


def parse_listen(value: str | None) -> ListenSpec | None:
    """The value of the ``listen`` option; None for ``off``. UsageError with a one-line reason otherwise."""
    if value is None or value == "":
        return ListenSpec(None, DEFAULT_DEVICE_PORT, True)
    if value == "off":
        return None
    text = value.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        port_text = rest[1:] if close and rest.startswith(":") else ""
    else:
        host, _colon, port_text = text.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"listen must be HOST:PORT or off, not {value!r}")
    return ListenSpec(host or None, int(port_text), False)


class ReplicaLedger:
    """A replica seen as the ledger :class:`Node` serves from. Attribute access goes to the replica itself, so
    the runner sees the replica's own bound methods (the mount's runner sets the open batch aside for them)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def __getattr__(self, name: str) -> object:
        return getattr(self.replica, name)

    def usage(self) -> Usage:
        """Only the ACL bytes matter here: a handler reserves them before an ACL reply."""
        acl_bytes = sum(len(raw) for _rid, raw in self.replica.acl_raws())
        return Usage(changes=0, change_bytes=0, blobs=0, blob_bytes=0, acl_bytes=acl_bytes)


Changed = Callable[[], Awaitable[None]]


class DeviceServer(Node):
    """Serves this device's replicas to the members of their spaces.

    A subclass of :class:`Node` so that request handling exists once; it sets up only what the handlers use
    (no node identity file, quota book or collector: a device stores what its own sync engine accepts)."""

    def __init__(self, endpoint: Endpoint, run: Runner) -> None:  # noqa: super().__init__ opens a node's data
        self.endpoint = endpoint
        self.identity = endpoint.identity
        self.run = run
        self._ledgers: dict[bytes, ReplicaLedger] = {}  # type: ignore[assignment]
        self._changed: dict[bytes, Changed | None] = {}
        self._generation: dict[bytes, int] = {}
        self._sets = {}
        self._device_sets: dict[tuple[bytes, int], tuple[object, IdSet]] = {}
        self._subscribers: dict[bytes, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.address_board = AddressBoard()
        self.on_address_record: Callable[[AddressRecord, str], None] | None = None
        self.listeners: list[trio.SocketListener] = []
        self.refused_strangers = 0
        self._vault_keys: VaultKeys | None = None  # this device's account's vault keys (derived when first asked)

    def add_replica(self, replica: Replica, on_changed: Changed | None = None) -> None:
        self._ledgers[replica.space_id] = ReplicaLedger(replica)
        self._changed[replica.space_id] = on_changed

    # ------------------------------------------------------------------------------------------ listening
    async def listen(self, spec: ListenSpec, *, task_status: trio.TaskStatus[list[trio.SocketListener]]
                     = trio.TASK_STATUS_IGNORED) -> None:
        """Accept sessions until cancelled (the default port, or a free one when it is taken)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_heads)
            try:
                self.listeners = await nursery.start(self.serve, spec.host, spec.port)
            except OSError as e:
                if not (spec.fallback and e.errno == errno.EADDRINUSE):
                    raise
                log.info("port %d is taken: listening on a free port", spec.port)
                self.listeners = await nursery.start(self.serve, spec.host, 0)
            task_status.started(self.listeners)

    def bound_port(self) -> int | None:
        """The port of the IPv4 listener if there is one (mDNS announces IPv4 addresses), else the first one's."""
        ports = [(":" in ln.socket.getsockname()[0], ln.socket.getsockname()[1]) for ln in self.listeners]
        return min(ports)[1] if ports else None

    def addresses(self) -> list[PeerAddress]:
        """This device's reachable addresses: the bound host, or when listening on all interfaces every
        non-loopback IPv4 address of this host (loopback when it has nothing else), then its global and
        unique-local IPv6 ones when the IPv6 wildcard is bound too (IPv4 first: the address record keeps the
        first few). Each with its own listener's port (a free port is picked per listener)."""
        out: list[PeerAddress] = []
        for ln in self.listeners:
            host, port = ln.socket.getsockname()[:2]
            if host == "0.0.0.0":
                hosts = local_ipv4_addresses()
            elif host == "::":
                hosts = local_ipv6_addresses()
            else:
                hosts = [host]
            out.extend(PeerAddress(self.identity.device_id, h, port) for h in hosts)
        unique = list(dict.fromkeys(out))
        return sorted(unique, key=lambda a: ":" in a.host)  # IPv4 first (stable)

    # ------------------------------------------------------------------------------------------ connections
    async def _connection(self, conn: Connection) -> None:
        assert conn.peer is not None
        account = conn.peer.peer_account
        own = account == self.identity.account.public  # another device of this account (one being restored)
        if not own and not any(ledger.role_of(account) is not None for ledger in self._ledgers.values()):
            self.refused_strangers += 1
            log.info("%s: refused: account %s is a member of no space served here", conn.label,
                     ids.account_text(account)[:16])
            await conn.abort("not a member")
            return
        await super()._connection(conn)

    def _ledger(self, space_id: bytes) -> ReplicaLedger:  # type: ignore[override]
        ledger = self._ledgers.get(space_id)
        if ledger is None:
            raise NotFound(_REFUSED)
        return ledger

    async def handle(self, conn: Connection, body: object) -> object:
        assert conn.peer is not None
        if isinstance(body, (m.PushSpace, m.PutBlob, m.PutHeads, m.GetHeads)):
            raise ServiceError(m.ErrorCode.FORBIDDEN, f"a device does not take {type(body).__name__}")
        if isinstance(body, m.OpenSpace) and body.invite_proof:
            raise ServiceError(m.ErrorCode.FORBIDDEN, "a device does not answer invites")
        if isinstance(body, m.PutVault):
            return await self._keep_own_vault(conn, bytes(body.record))
        if isinstance(body, m.GetVault):
            return await self._own_vault(conn, body.discovery_id)
        space_id = getattr(body, "space", None)
        if isinstance(space_id, bytes):
            ledger = self._ledgers.get(space_id)
            if ledger is None or ledger.role_of(conn.peer.peer_account) is None:
                raise ServiceError(m.ErrorCode.FORBIDDEN, _REFUSED)  # held or not: the same answer
        reply = await super().handle(conn, body)
        if isinstance(body, m.PutAddresses) and self.on_address_record is not None:
            self.on_address_record(parse_address_record(bytes(body.record), body.space), conn.label)
        return reply

    def _own_store(self, conn: Connection, discovery_id: bytes | None) -> Store:
        """The device's store, when ``conn`` is a device of this account asking about this account's vault; the
        same refusal as for a space not held here for anyone else and any other ID (a member of a shared space
        learns nothing of the vault, and cannot write it). ``discovery_id`` None: a record pushed, whose ID
        :func:`~.vault_sync.keep_from_device` checks."""
        assert conn.peer is not None
        if self._vault_keys is None:
            self._vault_keys = VaultKeys.from_account_seed(self.identity.account.seed)
        if conn.peer.peer_account != self.identity.account.public \
                or discovery_id not in (None, self._vault_keys.discovery_id) or not self._ledgers:
            raise ServiceError(m.ErrorCode.FORBIDDEN, _REFUSED)
        return next(iter(self._ledgers.values())).replica.store  # every replica here shares the device's store

    async def _keep_own_vault(self, conn: Connection, raw: bytes) -> m.VaultStored:
        """A vault record pushed by a device of this account (70.16), kept by the rules of
        :func:`~.vault_sync.keep_from_device` (a provider's checks and quota, never an older version). A record
        that does not verify raises ``IntegrityError``: answered INVALID, and the connection closes."""
        store = self._own_store(conn, None)  # another account: refused before the record is even read
        assert self._vault_keys is not None
        try:
            stored, version = await self.run(keep_from_device, store, self._vault_keys, raw, VaultPolicy().per_vault)
        except QuotaExceeded as e:
            raise ServiceError(m.ErrorCode.QUOTA, str(e)) from None
        return m.VaultStored(stored, version)

    async def _own_vault(self, conn: Connection, discovery_id: bytes) -> m.VaultRecordReply:
        """The vault record this device keeps, to a device of its own account asking for its discovery ID."""
        store = self._own_store(conn, discovery_id)
        row = await self.run(store.vault, discovery_id)
        if row is None:
            raise ServiceError(m.ErrorCode.NOT_FOUND, "this device keeps no vault")
        return m.VaultRecordReply(row.record)

    def _id_set(self, ledger: ReplicaLedger, kind: int) -> IdSet:  # type: ignore[override]
        """(blocking) The IDs of one set, cached while the replica's heads and ACL stay the same (a local commit
        moves them without passing through a handler here)."""
        stamp = (ledger.replica.heads, id(ledger.replica.acl))
        key = (ledger.replica.space_id, kind)
        hit = self._device_sets.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        if kind == m.SetKind.CHANGES:
            source = ledger.replica.change_ids()
        elif kind == m.SetKind.ACL:
            source = ledger.replica.acl_ids()
        else:
            source = ledger.replica.blob_ids()
        built = IdSet(source)
        self._device_sets[key] = (stamp, built)
        return built

    async def _announce(self, space_id: bytes, ledger: object, origin: Connection) -> None:
        """After changes or ACL records arrived here: the mount's caches (announcements: :meth:`_announce_heads`)."""
        changed = self._changed.get(space_id)
        if changed is not None:
            await changed()

    async def _announce_heads(self) -> None:
        seen = {sid: ledger.replica.heads for sid, ledger in self._ledgers.items()}
        while True:
            await trio.sleep(ANNOUNCE_POLL_S)
            for sid, ledger in list(self._ledgers.items()):
                heads = ledger.replica.heads  # replaced atomically by the replica: safe to read unlocked
                if heads == seen.get(sid):
                    continue
                seen[sid] = heads
                self._bump(sid)
                for conn in list(self._subscribers.get(sid, ())):
                    if conn.closed.is_set():
                        continue
                    try:
                        await conn.notify(m.Heads(sid, list(heads)[: m.MAX_IDS]))
                    except Exception as e:  # noqa: BLE001 - a dead subscriber must not stop the others
                        log.info("%s: announce failed: %s", conn.label, e)


def local_ipv4_addresses() -> list[str]:
    """Non-loopback IPv4 addresses of this host's interfaces (``127.0.0.1`` when there is none)."""
    import ifaddr  # a dependency of zeroconf

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.") and ip.ip not in out:
                out.append(ip.ip)
    return out or ["127.0.0.1"]



def local_ipv6_addresses() -> list[str]:
    """Global (routable) IPv6 addresses of this host's interfaces. Link-local ones are left out: they need the
    interface's scope, which means nothing on the peer's side."""
    import ipaddress

    import ifaddr  # a dependency of zeroconf

    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, tuple):  # ifaddr gives IPv6 as (address, flowinfo, scope_id)
                continue
            try:
                addr = ipaddress.IPv6Address(ip.ip[0])
            except ValueError:
                continue
            if addr.is_global or (addr.is_private and not addr.is_link_local and not addr.is_loopback):
                text = str(addr)
                if text not in out:
                    out.append(text)
    return out
