"""Direct sync between devices (issue 13): a device's listener, the address records it publishes and reads, and
LAN discovery, around one space's :class:`~.sync.SpaceSync`. Used by a mount and by ``anysyncfs sync --watch``.

How peers are found (``PeerStatus.via``): ``manual`` (the peers table: providers and devices added with
``space add-peer``), ``address record`` (a member's signed, encrypted addresses, read from any peer:
:mod:`anysyncfs.core.address_record`) and ``mdns`` (an announcement on the LAN only members recognise:
:mod:`.lan`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .device_server import DeviceServer, ListenSpec
from .sync import SpaceSync

log = logging.getLogger(__name__)

Changed = Callable[[], Awaitable[None]]


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
                except OSError as e:
                    log.warning("cannot listen on %s:%d: %s", self.listen_spec.host or "*", self.listen_spec.port,
                                e.strerror or e)
                    self.server = None
                else:
                    log.info("listening for members' devices at %s", ", ".join(self.addresses()))
            task_status.started()
