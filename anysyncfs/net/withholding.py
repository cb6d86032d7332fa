"""Catching a provider that keeps changes back (docs/protocol.md 70.9), around each sync round of a device.

Before reconciling with a provider the device asks for the signed heads it holds (``GetHeads``): each is a
member device's signed statement that the changes it names exist, and an honest provider holds a record only once it
holds every change the record names. After the round every change those records name must be here; one that is
not was kept back (reconciliation never offered it, or ``GetChanges`` returned nothing for it). A provider that
serves an older record of a device than it served (or accepted from us) before rolled it back. Either is logged as
a WARNING, kept in the store for ``anysyncfs status`` and in :attr:`HeadsWitness.warnings` for the status file.
After a successful round the device signs its own heads (a new counter only when they moved) and publishes them
(``PutHeads``).

A provider that never stores or serves records is not caught by this alone: detection needs the record to reach
the device through that provider (or a later honest round with it, for a rollback).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..core import signed_heads as sh
from ..errors import IntegrityError, ProtocolError, StoreError
from ..protocol import messages as m
from ..replica import heads_board as board
from ..replica.replica import Replica
from .connection import Connection, RemoteError
from .runner import Runner

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_WARNINGS_SHOWN = 32  # warnings of this session kept for the status file


class HeadsWitness:
    """Signed heads for one space's sync engine: fetched before each round, judged and published after it."""

    def __init__(self, replica: Replica, run: Runner) -> None:
        self.replica = replica
        self.run = run
        self.warnings: list[dict[str, object]] = []  # this session's findings, newest last (status file)
        # connection -> the counter of ours its provider has (sent once per record and connection)
        self._published: weakref.WeakKeyDictionary[Connection, int] = weakref.WeakKeyDictionary()

    async def checked_round(self, conn: Connection, round_: Callable[[], Awaitable[T]]) -> T:
        """Run one change reconciliation round with ``conn``'s provider, judging it by the signed heads the
        provider held before it — also when the round fails (a provider that announced a change and then did not
        deliver it is named before the error ends the session) — then publish ours."""
        served = await self.collect(conn)
        try:
            result = await round_()
        except (ProtocolError, IntegrityError, RemoteError) as e:
            # The provider misbehaved or refused: judge what it delivered. Not after a lost link or a provider
            # that failed (internal error, shutting down): the changes may simply not have arrived yet.
            failed = isinstance(e, RemoteError) and e.code in (m.ErrorCode.INTERNAL, m.ErrorCode.UNAVAILABLE)
            if served and not failed:
                await self.judge(conn, served)
            raise
        if served:
            await self.judge(conn, served)
        await self.publish(conn)
        return result

    async def collect(self, conn: Connection) -> list[sh.SignedHeads]:
        """The verified records ``conn``'s provider serves (empty if it keeps none or does not support them)."""
        try:
            reply = await conn.request(m.GetHeads(self.replica.space_id))
        except RemoteError as e:
            log.debug("%s: no signed heads: %s", conn.label, e)
            return []
        if not isinstance(reply, m.HeadsRecords):
            raise ProtocolError(f"expected HeadsRecords, got {type(reply).__name__}")
        return await self.run(board.examine, self.replica, [bytes(r) for r in reply.records])

    async def judge(self, conn: Connection, served: list[sh.SignedHeads]) -> None:
        assert conn.peer is not None
        provider = conn.peer.peer_device
        me = self.replica.identity.device_id
        try:
            found = await self.run(board.conclude, self.replica, me, provider, conn.label, served)
        except StoreError as e:
            log.warning("%s: cannot record what its signed heads show: %s", conn.label, e)
            return
        for w in found:
            log.warning("%s", w.message)
            self.warnings.append({"provider": conn.label, "kind": w.finding.kind, "counter": w.finding.counter,
                                  "message": w.message})
        del self.warnings[:-MAX_WARNINGS_SHOWN]

    async def publish(self, conn: Connection) -> None:
        """Sign our heads if they moved and offer the record to ``conn``'s provider (once per record and
        connection)."""
        assert conn.peer is not None
        try:
            record = await self.run(board.own_record, self.replica, self.replica.identity, self.replica.heads)
        except StoreError as e:
            log.warning("cannot sign our heads: %s", e)
            return
        if record is None or self._published.get(conn) == record.counter:
            return
        try:
            reply = await conn.request(m.PutHeads(self.replica.space_id, record.raw))
        except RemoteError as e:
            log.info("%s did not take our signed heads: %s", conn.label, e)
            return
        if not isinstance(reply, m.Accepted):
            raise ProtocolError(f"expected Accepted, got {type(reply).__name__}")
        if reply.missing:
            # It refused (e.g. rejected) a change we hold; it keeps our older record, which is no rollback.
            log.info("%s lacks %d changes our heads name: it keeps our older signed heads", conn.label,
                     len(reply.missing))
            return
        self._published[conn] = record.counter
        await self.run(board.note_accepted, self.replica, conn.peer.peer_device, record)
