"""Store queries a provider shares between its processes (``node_spaces``, the write lock, change notices): a
mixin of :class:`~anysyncfs.store.db.Store`. Still the one place with SQL, with db.py and its other mixins."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from . import dialect
from . import schema as S


class NodeQueries:
    """Needs ``_run``, ``_upsert``, ``dialect`` and ``transaction`` from the Store it is mixed into."""

    _upsert: Any
    dialect: str

    def _run(self, stmt: Any, params: Any = None) -> Any:  # provided by Store
        raise NotImplementedError

    def _run_sql(self, sql: str, params: dict[str, Any] | None = None) -> None:  # provided by Store
        raise NotImplementedError

    def lock_writes(self) -> None:
        """Take the provider write lock until the current transaction ends (call inside ``transaction()``).

        On PostgreSQL every write of every node process on the database goes through it, so a write sees every
        write committed before it (quotas are checked against committed figures, the DAG is current) and two
        writes never interleave. SQLite needs none: one process serves a SQLite node, under its own lock."""
        sql = dialect.lock_writes_sql(self.dialect)
        if sql is not None:
            self._run_sql(sql)

    def space_state(self, space_id: bytes) -> tuple[int, int] | None:
        """(generation, used bytes) of a space held, or None when it has no row yet."""
        n = S.node_spaces.c
        r = self._run(select(n.generation, n.used_bytes).where(n.space == space_id)).first()
        return None if r is None else (int(r[0]), int(r[1]))

    def space_generation(self, space_id: bytes) -> int:
        state = self.space_state(space_id)
        return -1 if state is None else state[0]

    def save_space_state(self, space_id: bytes, owner: bytes, used_bytes: int, notice: str | None = None) -> int:
        """Record a write to a space: its usage now, a new generation (returned); and, with ``notice`` (the
        writer's process token), tell the other node processes at commit (call inside the write transaction)."""
        n = S.node_spaces.c
        stmt = self._upsert(S.node_spaces).values(space=space_id, owner=owner, used_bytes=used_bytes, generation=1)
        self._run(stmt.on_conflict_do_update(
            index_elements=[n.space],
            set_={"used_bytes": stmt.excluded.used_bytes, "generation": n.generation + 1}))
        generation = self.space_generation(space_id)
        sql = dialect.notify_sql(self.dialect)
        if notice is not None and sql is not None:
            self._run_sql(sql, {"payload": f"{space_id.hex()}:{notice}"})
        return generation

    def owner_usage(self, owner: bytes) -> tuple[int, int]:
        """(spaces, bytes used) of the spaces an account owns here."""
        n = S.node_spaces.c
        q = select(func.count(), func.coalesce(func.sum(n.used_bytes), 0)).where(n.owner == owner)
        spaces, used = self._run(q).first()
        return int(spaces), int(used)

    def total_usage(self) -> int:
        """Bytes used by every space held."""
        q = select(func.coalesce(func.sum(S.node_spaces.c.used_bytes), 0))
        return int(self._run(q).scalar_one())

    def spaces_without_state(self) -> list[tuple[bytes, bytes]]:
        """(id, header) of the spaces held that have no ``node_spaces`` row (held before the table existed)."""
        sp, n = S.spaces.c, S.node_spaces.c
        q = select(sp.id, sp.header).where(~select(n.space).where(n.space == sp.id).exists())
        return [(r[0], r[1]) for r in self._run(q).fetchall()]


__all__ = ["NodeQueries"]
