"""Direct sync between devices (issue 13): a device's listener, the address records it publishes and reads, and
LAN discovery, around one space's :class:`~.sync.SpaceSync`. Used by a mount and by ``anysyncfs sync --watch``.

How peers are found (``PeerStatus.via``): ``manual`` (the peers table: providers and devices added with
``space add-peer``), ``address record`` (a member's signed, encrypted addresses, read from any peer:
:mod:`anysyncfs.core.address_record`) and ``mdns`` (an announcement on the LAN only members recognise:
:mod:`.lan`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ..core import address_record as ar
from ..core.address import PeerAddress
from ..errors import AuthenticationFailed, DecodeError, PermissionDenied, ProtocolError
from ..protocol import messages as m
from .connection import Connection, RemoteError
from .device_server import DeviceServer, ListenSpec
from .sync import SpaceSync

if TYPE_CHECKING:
    from .lan import LanDiscovery

log = logging.getLogger(__name__)

Changed = Callable[[], Awaitable[None]]
EXCHANGE_EVERY_S = 30.0  # address records are exchanged with a connected peer at most this often


class DevicePeering:
    def __init__(self, sync: SpaceSync, *, listen: ListenSpec | None, discovery: bool,
                 on_changed: Changed | None = None) -> None:
        self.sync = sync
        self.listen_spec = listen
        self.discovery = discovery and listen is not None  # an announcement needs a listener to point at
        self.server: DeviceServer | None = None
        if listen is not None:
            self.server = DeviceServer(sync.endpoint, sync.run)
            self.server.add_replica(sync.replica, on_changed)
            self.server.on_address_record = self.learn  # a device that dialled us is dialled back
        self.lan: LanDiscovery | None = None
        self._exchanged: dict[int, tuple[float, bytes | None]] = {}  # connection -> when, what we published
        self._record: tuple[tuple[object, ...], bytes] | None = None  # (what it says, the signed record)
        sync.exchange_addresses = self.exchange_addresses

    def addresses(self) -> list[str]:
        return [str(a) for a in self.server.addresses()] if self.server is not None else []

    def status(self) -> dict[str, object]:
        return {"listen": self.addresses()}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen (if asked), then run until cancelled. A listener that cannot bind is logged, not fatal: the
        device still syncs by dialling out."""
        async with trio.open_nursery() as nursery:
            if self.server is not None and self.listen_spec is not None:
                try:
                    await nursery.start(self.server.listen, self.listen_spec)
                # The listener's own nursery wraps a failed bind in an exception group (trio's strict groups):
                # an explicit HOST:PORT that is taken, or an address this host does not have, must not end the
                # mount or sync --watch.
                except* OSError as group:
                    e = _first_leaf(group)
                    log.warning("cannot listen on %s:%d: %s", self.listen_spec.host or "*", self.listen_spec.port,
                                getattr(e, "strerror", None) or e)
                    self.server = None
                else:
                    log.info("listening for members' devices at %s", ", ".join(self.addresses()))
            if self.server is not None and self.discovery:
                from .lan import LanDiscovery

                self.lan = LanDiscovery(self.sync, self._hosts_and_port)
                nursery.start_soon(self.lan.run)
            task_status.started()

    def _hosts_and_port(self) -> tuple[list[str], int | None]:
        if self.server is None:
            return [], None
        return [a.host for a in self.server.addresses()], self.server.bound_port()

    # ------------------------------------------------------------------------------------------ address records
    def own_record(self) -> bytes | None:
        """Our signed, sealed address record (signed again only when the addresses or the epoch change)."""
        if self.server is None:
            return None
        pairs = [(a.host, a.port) for a in self.server.addresses()][: ar.MAX_ADDRESSES]
        if not pairs:
            return None
        replica = self.sync.replica
        try:
            epoch, key = replica.current_epoch_key()
        except PermissionDenied:
            return None
        what = (tuple(pairs), epoch)
        if self._record is None or self._record[0] != what:
            raw = ar.sign_addresses(replica.identity, replica.space_id, epoch, key, pairs, time.time_ns() // 1000)
            self._record = (what, raw)
            self.server.address_board.offer(replica.space_id, replica.role_of, raw)  # served to members too
        return self._record[1]

    async def exchange_addresses(self, sync: SpaceSync, conn: Connection) -> None:
        """In every sync round: publish our record to the peer, read the records it holds, dial what they name.
        A peer that does not keep records (refuses) costs nothing; forged records close the connection."""
        space_id = sync.space_id
        own = self.own_record()
        # Once per connection and then every EXCHANGE_EVERY_S (and when our record changed): not in every live
        # push, whose latency is the point.
        last = self._exchanged.get(id(conn))
        if last is not None and last[1] is own and time.monotonic() - last[0] < EXCHANGE_EVERY_S:
            return
        self._exchanged = {k: v for k, v in self._exchanged.items() if time.monotonic() - v[0] < EXCHANGE_EVERY_S}
        self._exchanged[id(conn)] = (time.monotonic(), own)
        try:
            if own is not None:
                await conn.request(m.PutAddresses(space_id, own))
            reply = await conn.request(m.GetAddresses(space_id))
        except RemoteError as e:
            log.debug("%s: no address records: %s", conn.label, e)
            return
        if not isinstance(reply, m.AddressRecords):
            raise ProtocolError(f"expected AddressRecords, got {type(reply).__name__}")
        for raw in reply.records:
            self.learn(ar.parse_address_record(bytes(raw), space_id), conn.label)  # forged: the peer is dropped

    def learn(self, record: ar.AddressRecord, source: str) -> None:
        """A verified record of this space (from a peer we dialled, or offered to our listener): keep it, serve
        it, and dial what it names."""
        replica = self.sync.replica
        if record.space != replica.space_id or record.device == replica.identity.device_id \
                or replica.role_of(record.account) is None:
            return
        try:
            pairs = ar.open_addresses(record, replica.keys)
        except (AuthenticationFailed, DecodeError) as e:  # a member sealed garbage, or an epoch we lack
            log.info("%s: an address record does not open: %s", source, e)
            return
        if self.server is not None:
            self.server.address_board.offer(replica.space_id, replica.role_of, record.raw)
        for host, port in pairs:
            self.sync.add_discovered(PeerAddress(record.device, host, port), "address record")


def _first_leaf(error: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups, for a one-line log message."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
