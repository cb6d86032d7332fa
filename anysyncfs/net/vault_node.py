"""A node's answers to ``PutVault`` and ``GetVault`` (docs/protocol.md 25.4). Any authenticated peer may ask:
devices use a throwaway identity for these requests (:mod:`anysyncfs.net.vault_sync`), so the node cannot tie a
vault to the account whose spaces it serves on other connections (beyond the network address and timing)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import messages as m
from ..replica import vault_board
from ..replica.quota import QuotaExceeded
from .connection import Connection, ServiceError

if TYPE_CHECKING:
    from .node import Node


async def handle(node: Node, conn: Connection, body: m.PutVault | m.GetVault) -> object:
    if isinstance(body, m.GetVault):
        raw = await node.run(vault_board.served, node.store, body.discovery_id)
        if raw is None:
            raise ServiceError(m.ErrorCode.NOT_FOUND, "no vault under that discovery ID here")
        return m.VaultRecordReply(raw)
    try:  # a forged record raises IntegrityError: the connection answers INVALID and closes
        outcome = await node.run(vault_board.offer, node.store, bytes(body.record), node.vault_policy)
    except QuotaExceeded as e:
        raise ServiceError(m.ErrorCode.QUOTA, str(e)) from None
    return m.VaultStored(outcome.stored, outcome.version)
