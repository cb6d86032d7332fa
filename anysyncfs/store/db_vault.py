"""Store queries of the account vault (docs/protocol.md 25): on a provider the newest record per discovery ID, on a
device its own vault and the highest version seen. A mixin of :class:`~anysyncfs.store.db.Store`; with db.py and
its other mixins, the one place with SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update

from ..clock import now_us
from . import schema as S

# The tables a space's rows live in on a device, children first (``forget_space`` deletes in this order).
_SPACE_TABLES = ("provider_warnings", "heads_served", "signed_heads", "upload_queue", "peers", "peers_seen",
                 "pinned_blobs", "pins", "change_blobs", "space_blobs", "entries", "nodes", "tree_meta", "heads",
                 "changes", "acl_records")


@dataclass(frozen=True, slots=True)
class VaultRow:
    discovery_id: bytes
    version: int
    record: bytes
    highest_seen: int


class VaultQueries:
    """Needs ``_run`` and ``transaction`` from the Store it is mixed into."""

    def _run(self, stmt: Any, params: Any = None) -> Any:  # provided by Store
        raise NotImplementedError

    _upsert: Any  # the dialect's insert-or-update, set by Store

    def transaction(self) -> Any:  # provided by Store
        raise NotImplementedError

    def vault(self, discovery_id: bytes) -> VaultRow | None:
        v = S.vaults.c
        r = self._run(select(S.vaults).where(v.discovery_id == discovery_id)).first()
        return None if r is None else VaultRow(r.discovery_id, r.version, r.record, r.highest_seen)

    def put_vault(self, discovery_id: bytes, version: int, record: bytes, highest_seen: int) -> None:
        """Insert or replace the row of a discovery ID (callers decide whether the version may move)."""
        row = dict(discovery_id=discovery_id, version=version, record=record, highest_seen=highest_seen,
                   stored_us=now_us())
        stmt = self._upsert(S.vaults).values(**row)  # SQLite or PostgreSQL (store/dialect.py)
        self._run(stmt.on_conflict_do_update(index_elements=[S.vaults.c.discovery_id], set_=row))

    def note_vault_seen(self, discovery_id: bytes, version: int) -> None:
        """Raise ``highest_seen`` of a row that exists (never lowers it)."""
        v = S.vaults.c
        self._run(update(S.vaults).where(v.discovery_id == discovery_id, v.highest_seen < version)
                  .values(highest_seen=version))

    def vault_usage(self) -> tuple[int, int]:
        """(number of vaults held, their bytes)."""
        n, size = self._run(select(func.count(), func.coalesce(func.sum(func.length(S.vaults.c.record)), 0))).first()
        return int(n), int(size)

    def rename_space(self, space_id: bytes, name: str) -> None:
        self._run(update(S.spaces).where(S.spaces.c.id == space_id).values(name=name))

    def forget_space(self, space_id: bytes, blobs: list[bytes]) -> None:
        """Delete every row of a space on this device and the index rows of ``blobs`` (the caller deletes their
        files afterwards), in one transaction."""
        with self.transaction():
            for name in _SPACE_TABLES:
                table = S.metadata.tables[name]
                self._run(delete(table).where(table.c.space == space_id))
            self._run(delete(S.spaces).where(S.spaces.c.id == space_id))
            for start in range(0, len(blobs), 500):
                self._run(delete(S.blobs).where(S.blobs.c.id.in_(blobs[start:start + 500])))
